"""Datasets: the built-in synthetic "shapes" grounding world."""
