"""Drawing detections on images (boxes, phrase labels, optional masks)."""

from __future__ import annotations

import colorsys
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .files import atomic_write
from .images import load_image
from .structures import Detections


def label_colour(label: int) -> tuple[int, int, int]:
    """A distinct, stable colour per phrase index (golden-ratio hue steps)."""
    h = (label * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(h, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def render(image: Image.Image, dets: Detections) -> Image.Image:
    """A copy of ``image`` with masks, boxes and "phrase score" labels drawn on it."""
    canvas = image.convert("RGB").copy()
    if dets.masks is not None and len(dets):
        arr = np.asarray(canvas).astype(np.float32)
        for mask, label in zip(dets.masks, dets.labels):
            if mask.shape != arr.shape[:2]:
                continue
            arr[mask] = 0.55 * arr[mask] + 0.45 * np.array(label_colour(int(label)), dtype=np.float32)
        canvas = Image.fromarray(arr.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    width = max(1, round(max(canvas.size) / 400))
    for box, label, phrase, score in zip(dets.xyxy, dets.labels, dets.phrases, dets.scores):
        colour = label_colour(int(label))
        x1, y1, x2, y2 = (float(v) for v in box)
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=width)
        text = f"{phrase} {score:.2f}"
        tx, ty = x1, max(0.0, y1 - 12)
        left, top, right, bottom = draw.textbbox((tx, ty), text, font=font)
        draw.rectangle([left - 1, top - 1, right + 1, bottom + 1], fill=colour)
        draw.text((tx, ty), text, fill=(0, 0, 0), font=font)
    return canvas


def draw_detections(
    source, dets: Detections, out_path: str | os.PathLike, *, format: str | None = None
) -> Path:
    """Draw ``dets`` on the image ``source`` (path, PIL or array) and write it atomically to ``out_path``
    (as PNG for a ``.png`` name, else JPEG, unless ``format`` names a PIL format)."""
    image, original = load_image(source)
    if image.size != (original[1], original[0]):  # a huge image was reduced when read: draw at full size
        image = image.resize((original[1], original[0]))
    out_path = Path(out_path)
    result = render(image, dets)
    fmt = format or ("PNG" if out_path.suffix.lower() == ".png" else "JPEG")
    atomic_write(
        out_path, lambda tmp: result.save(tmp, format=fmt, **({"quality": 92} if fmt == "JPEG" else {}))
    )
    return out_path
