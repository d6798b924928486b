"""Decoding COCO segmentations (polygons, uncompressed and compressed RLE) into boolean masks."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from ..errors import DataError


def decode_segmentation(segmentation, height: int, width: int) -> np.ndarray:
    """One COCO ``segmentation`` -> (height, width) bool mask.

    Polygons are rasterised with PIL; uncompressed RLE (``counts`` a list) is decoded here; compressed RLE
    (``counts`` a string) needs pycocotools.
    """
    if isinstance(segmentation, list):  # polygons [[x1, y1, x2, y2, ...], ...]
        canvas = Image.new("1", (width, height), 0)
        draw = ImageDraw.Draw(canvas)
        for poly in segmentation:
            if len(poly) >= 6:
                draw.polygon([(float(poly[i]), float(poly[i + 1])) for i in range(0, len(poly), 2)], fill=1)
        return np.asarray(canvas, dtype=bool)
    if isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
        h, w = segmentation.get("size", (height, width))
        flat = np.zeros(h * w, dtype=bool)
        pos, value = 0, False
        for run in segmentation["counts"]:
            if value:
                flat[pos : pos + run] = True
            pos += run
            value = not value
        return flat.reshape((h, w), order="F")
    if isinstance(segmentation, dict):
        try:
            from pycocotools import mask as mask_utils
        except ImportError:
            raise ImportError("compressed RLE masks need pycocotools: pip install pycocotools") from None
        rle = dict(segmentation)
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode("ascii")
        return mask_utils.decode(rle).astype(bool)
    raise DataError(f"unsupported segmentation of type {type(segmentation).__name__}")


def decode_masks(segmentations, height: int, width: int) -> np.ndarray:
    """A list of COCO segmentations -> (N, height, width) bool masks (empty masks for missing ones)."""
    out = np.zeros((len(segmentations), height, width), dtype=bool)
    for i, seg in enumerate(segmentations):
        if seg:
            mask = decode_segmentation(seg, height, width)
            out[i, : mask.shape[0], : mask.shape[1]] = mask[:height, :width]
    return out
