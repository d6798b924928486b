"""Training and evaluation engines (the library in openglip.models/data/losses never imports these)."""
