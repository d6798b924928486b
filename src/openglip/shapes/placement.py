"""What every renderer of the shapes world shares: where an object may go (the placement rule) and how the
drawn canvas becomes a :class:`~openglip.shapes.world.ShapesSample` (visible masks, tight boxes, captions).

The rule: an object never touches an object of its own colour nor a hollow one, and it may overlap others only
when the renderer allows it for this object and every object it covers keeps ``keep`` of its pixels. A renderer
only decides the look (the object's coverage, its keep-out ``guard`` and the paint); the annotations then follow
from the same code for all of them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .world import ShapesSample, make_captions

DROP = 0.5  # objects with less of their pixels visible than this are left out of the annotations


def find_place(
    rng: np.random.Generator,
    owner: np.ndarray,
    blocked: np.ndarray,
    guard: np.ndarray,
    mask: np.ndarray,
    objs: list[dict[str, Any]],
    colour: str,
    *,
    may_cover: bool,
    keep: float,
    tries: int,
) -> tuple[int, int] | None:
    """The top-left corner of a free place for an object, or None when ``tries`` random corners all fail.

    Args:
        rng: random generator (two draws per try: row, then column).
        owner: ``(H, W)`` int32 visible object per pixel (-1: background).
        blocked: ``(H, W)`` bool pixels nothing may cover (hollow objects' insides).
        guard: ``(P, Q)`` bool footprint of the object grown by its gap: no other object may be there unless
            it may be covered.
        mask: ``(P, Q)`` bool the pixels the object will own (inside ``guard``).
        objs: the objects placed so far, each with ``"colour"``, ``"hollow"`` and ``"area"`` (pixels when
            placed).
        colour: the new object's colour name.
        may_cover: whether the new object may overlap others.
        keep: share of its pixels every covered object must keep.
        tries: random corners to try.
    """
    h, w = owner.shape
    ph, pw = mask.shape
    full = np.array([o["area"] for o in objs], dtype=np.int64)
    visible = np.bincount(owner[owner >= 0], minlength=len(objs))
    for _ in range(tries):
        y0, x0 = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
        win = (slice(y0, y0 + ph), slice(x0, x0 + pw))
        if blocked[win][guard].any():
            continue
        near = owner[win][guard]
        near = near[near >= 0]
        if near.size == 0:
            return y0, x0
        if not may_cover or any(objs[k]["colour"] == colour or objs[k]["hollow"] for k in np.unique(near)):
            continue
        hits = owner[win][mask]
        lost = np.bincount(hits[hits >= 0], minlength=len(objs))
        if np.all(visible - lost >= keep * full):
            return y0, x0
    return None


def finish_sample(
    rng: np.random.Generator, image: np.ndarray, owner: np.ndarray, objs: list[dict[str, Any]]
) -> ShapesSample:
    """The sample of a drawn canvas: visible masks, boxes tight around them, labels, sizes and captions.

    Args:
        rng: random generator (the captions draw from it).
        image: ``(H, W, 3)`` uint8 the finished picture.
        owner: ``(H, W)`` int32 visible object per pixel (-1: background).
        objs: the placed objects in drawing order, each with ``"label"``, ``"size"`` and ``"area"``.
    """
    h, w = owner.shape
    masks = owner[None] == np.arange(len(objs), dtype=np.int32)[:, None, None]
    keep = [k for k, o in enumerate(objs) if masks[k].any() and masks[k].sum() >= DROP * o["area"]]
    masks, objs = masks[keep], [objs[k] for k in keep]
    boxes = np.zeros((len(objs), 4), dtype=np.float32)
    for k, m in enumerate(masks):
        ys, xs = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
        boxes[k] = (xs[0], ys[0], xs[-1] + 1, ys[-1] + 1)
    labels = np.array([o["label"] for o in objs], dtype=np.int64)
    sizes = [o["size"] for o in objs]
    captions = make_captions(rng, boxes, labels, sizes, min(h, w) / 128.0)
    return ShapesSample(image, boxes, labels, masks, sizes, captions)
