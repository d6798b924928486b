"""Colour naming shared by the shapes-world tests: a name from hue, saturation and value, independent of any
renderer's palette, so that "the colours are true to their names" is checked the same way for both."""

from __future__ import annotations

import colorsys

import numpy as np

from openglip.shapes.look import dilate

# the hue (degrees) of each chromatic name; a colour takes the nearest one
_HUES = {"red": 0, "orange": 30, "yellow": 53, "green": 130, "blue": 226, "purple": 280}


def colour_name(rgb) -> str:
    """The colour word for an RGB triple (0..255): black / white by value and saturation, else the nearest hue
    ("grey" means none of the eight)."""
    h, s, v = colorsys.rgb_to_hsv(*(np.asarray(rgb, dtype=float) / 255))
    if v < 0.3:
        return "black"
    if s < 0.25:
        return "white" if v > 0.6 else "grey"
    return min(_HUES, key=lambda name: min(abs(h * 360 - _HUES[name]), 360 - abs(h * 360 - _HUES[name])))


def core_colour(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Median colour of an object's pixels away from its edge (edge pixels mix with the background)."""
    core = ~dilate(~mask, 1)
    pixels = image[core] if core.sum() >= 8 else image[mask]
    return np.median(pixels.astype(np.float32), axis=0)
