"""The shapes world's own renderer: coloured shapes on muted, textured backgrounds (its look is in :mod:`.look`).

Backgrounds are muted tints (never a vivid colour, luminance far from both white and black objects) with
gradients, noise, stripes, checkers, grids, dots, two-tone mixes and grey clutter strokes; shapes are rotated
at random, anti-aliased (4x supersampling), filled, rimmed in a darker shade or hollow (then the mask is the
outline band), shaded with gradients and highlights, and may partially occlude each other (an occluded object
always keeps at least 60% of its pixels, and never touches an object of its own colour; hollow objects are never
overlapped). The camera sometimes blurs and JPEG-compresses and always adds noise. Sizes scale with
``min(H, W) / 128`` and a per-image zoom of 0.88..1.15: a "small" object spans about 14-22 px and a "large" one
about 30-44 px at 128 px. ``vary_canvas=True`` also varies each image's size and aspect ratio.
:mod:`.render_alt` draws the same world with another renderer.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import look
from .placement import find_place, finish_sample
from .world import COLOURS, SHAPES, SIZES, SPLITS, ShapesSample, WorldRenderer, draw_category

COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (40, 165, 60),
    "blue": (35, 75, 215),
    "yellow": (240, 215, 40),
    "purple": (145, 55, 190),
    "orange": (245, 135, 25),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}

_SIZE_RANGE = {"small": (14.0, 22.0), "large": (30.0, 44.0)}  # nominal extent in px at 128 px
# circumradius / (nominal extent / 2): makes the axis-aligned extents of the shapes roughly comparable
_RADIUS_FACTOR = dict(zip(SHAPES, (1.0, 1.13, 1.2, 1.15, 1.05, 1.05)))
_STYLES = ("filled", "rimmed", "hollow")  # hollow: only the outline band is drawn (and is the mask)
_STYLE_P = (0.64, 0.16, 0.2)
_PAD = 3  # patch padding in px (>= the 2 px dilation used to keep objects apart)
_KEEP = 0.6  # an occluded object keeps at least this fraction of its pixels when placed
_TRIES = 30


class ShapesWorld(WorldRenderer):
    """An infinite, deterministic stream of shapes-world samples (the settings: :class:`WorldRenderer`).

    ``sample(index)`` depends only on ``(seed, split, index)``, never on call order. Images are at least 32 px;
    ``vary_canvas=True`` draws each image's height and width independently from 0.8..1.25x ``image_size``
    (varied sizes and aspect ratios); off by default, so that every image has ``image_size``.
    """

    def _draw_label(self, rng: np.random.Generator) -> int:
        return draw_category(rng, self.split)

    def sample(self, index: int) -> ShapesSample:
        """Render sample ``index``.

        Args:
            index: non-negative sample index.

        Returns:
            The rendered :class:`ShapesSample`.
        """
        if index < 0:
            raise ValueError("index must be non-negative")
        rng = np.random.default_rng([self.seed, SPLITS[self.split], int(index)])
        h, w = self.height, self.width
        if self.vary_canvas:
            h, w = (max(32, round(side * rng.uniform(0.8, 1.25))) for side in (h, w))
        scale = min(h, w) / 128.0
        img = look.background(rng, h, w)
        idmap = np.full((h, w), -1, dtype=np.int32)  # visible object per pixel
        reserved = np.zeros((h, w), dtype=bool)  # hollow objects' insides: nothing may be placed there
        objs: list[dict[str, Any]] = []  # z-order: later objects are drawn on top
        seen: set[tuple[int, str]] = set()
        zoom = rng.uniform(0.88, 1.15)
        target = int(rng.integers(self.min_objects, self.max_objects + 1))
        attempts = 0
        while len(objs) < target and attempts < target + 3 * self.max_objects:
            attempts += 1
            label, size = self._draw_label(rng), SIZES[int(rng.integers(2))]
            # (colour, shape, size) is unique in an image, so that captions stay unambiguous
            if (label, size) in seen:
                continue
            colour, shape = COLOURS[label // len(SHAPES)], SHAPES[label % len(SHAPES)]
            extent = rng.uniform(*_SIZE_RANGE[size]) * scale * zoom
            radius = extent / 2 * _RADIUS_FACTOR[shape]
            style = _STYLES[int(rng.choice(len(_STYLES), p=_STYLE_P))]
            ring = max(2.5, extent * rng.uniform(0.1, 0.16)) if style != "filled" else 0.0
            fill, band = look.render_shape(
                shape, radius, rng.uniform(0, 2 * np.pi), tuple(rng.uniform(0, 1, size=2)), _PAD, ring
            )
            hollow = style == "hollow"
            cover = band if hollow else fill
            mask = cover >= 0.5
            halo = look.dilate(fill >= 0.5)
            ph, pw = mask.shape
            if ph > h or pw > w or not mask.any():
                continue
            allow_occlusion = not hollow and rng.random() < 0.3
            placed = find_place(
                rng,
                idmap,
                reserved,
                halo,
                mask,
                objs,
                colour,
                may_cover=allow_occlusion,
                keep=_KEEP,
                tries=_TRIES,
            )
            if placed is None:
                continue
            y0, x0 = placed
            idmap[y0 : y0 + ph, x0 : x0 + pw][mask] = len(objs)
            if hollow:
                reserved[y0 : y0 + ph, x0 : x0 + pw] |= halo
            rim = band if style == "rimmed" else None
            shade = look.paint_object(rng, colour, COLOUR_RGB[colour], (ph, pw), band=rim)
            alpha = cover[:, :, None]
            patch = img[y0 : y0 + ph, x0 : x0 + pw]
            patch *= 1 - alpha
            patch += alpha * shade
            objs.append(
                {"label": label, "size": size, "colour": colour, "hollow": hollow, "area": int(mask.sum())}
            )
            seen.add((label, size))
        return finish_sample(rng, look.camera(rng, img), idmap, objs)

    __getitem__ = sample
