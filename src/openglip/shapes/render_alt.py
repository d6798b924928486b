"""A second, independent renderer of the shapes world: the same vocabulary, splits and annotations, another look.

:class:`AltShapesWorld` draws the world of :mod:`openglip.shapes.world` (8 colours x 6 shapes, the same 8 novel
combinations held out of ``"train"``, small / large, the same caption grammar) with code of its own: its own
shape geometry (a pointier star, thinner cross arms, pointy-top hexagons, rounded squares, slightly stretched
shapes), its own palette of several shades per colour name, fill styles (solid, two-tone gradient, a darker
rim, hollow outline, hatched), photo-like backgrounds (fractal noise, wood grain, marble veins, tiles, weave,
dots, two-tone "horizon" gradients, grey clutter strokes, vignetting), a per-image camera (Gaussian blur,
sensor noise, JPEG compression) and canvases of varied size and aspect ratio with a per-image object zoom.

It exists to test that a model trained on one renderer learned colours and shapes rather than that renderer's
style (``benchmarks/shapes.py`` reports both), and as "a new rendering style" for forgetting studies. Nothing
here shares pixels code with :mod:`.render`; only the world's definition (vocabulary, split rule, caption
builder: :mod:`.world`) and the placement rule and annotation step (:mod:`.placement`) are shared.

Colour words stay true: every shade keeps the hue of its name (see :data:`ALT_SHADES`); backgrounds are muted
(HSV saturation <= 0.28, value 0.33..0.72), so they read as no colour name and stay apart from white and black.
"""

from __future__ import annotations

import colorsys
import io
import math
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .placement import find_place, finish_sample
from .world import CATEGORIES, SIZES, SPLITS, ShapesSample, WorldRenderer, draw_category

# several shades per colour name, all of its hue family (checked by the test suite)
ALT_SHADES: dict[str, tuple[tuple[int, int, int], ...]] = {
    "red": ((205, 25, 35), (228, 48, 30), (178, 18, 40), (240, 62, 52)),
    "green": ((30, 150, 52), (62, 182, 76), (22, 124, 62), (92, 172, 42)),
    "blue": ((30, 70, 200), (52, 112, 232), (22, 48, 168), (66, 96, 222)),
    "yellow": ((246, 222, 32), (252, 236, 74), (232, 200, 22), (255, 212, 52)),
    "purple": ((132, 40, 172), (160, 72, 202), (108, 30, 142), (150, 52, 182)),
    "orange": ((250, 130, 12), (236, 112, 24), (252, 156, 44), (222, 100, 18)),
    "white": ((250, 250, 250), (236, 238, 241), (246, 243, 236), (240, 240, 246)),
    "black": ((14, 14, 14), (36, 36, 41), (26, 20, 25), (44, 42, 40)),
}
_STYLES = ("solid", "gradient", "rim", "hollow", "hatched")
_STYLE_P = (0.34, 0.2, 0.16, 0.18, 0.12)
_EXTENT = {"small": (0.10, 0.16), "large": (0.22, 0.33)}  # object extent / min(H, W), before the zoom
_SS = 3  # supersampling of the object rasteriser
_GAP = 2  # px kept free around an object that may not be overlapped
_VISIBLE = 0.55  # an occluded object keeps at least this share of its pixels
_SALT = 0xA17  # keeps this renderer's random stream apart from render.py's for the same seed


def _geometry(shape: str, rng: np.random.Generator) -> np.ndarray:
    """Vertices ``(K, 2)`` of a shape about one unit in half-extent (a circle is a 64-gon)."""
    if shape == "circle":
        t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        return np.stack([np.cos(t), np.sin(t)], axis=1)
    if shape == "square":  # rounded corners: four arcs of radius r joined by straight edges
        r, pts = 0.18, []
        for cx, cy, start in ((1, 1, 0), (-1, 1, 90), (-1, -1, 180), (1, -1, 270)):
            for a in np.deg2rad(np.linspace(start, start + 90, 6)):
                pts.append(((1 - r) * cx + r * math.cos(a), (1 - r) * cy + r * math.sin(a)))
        return np.array(pts) * 0.72
    if shape == "triangle":
        a = np.deg2rad([90, 210, 330])
        return np.stack([np.cos(a), -np.sin(a)], axis=1) * 1.18
    if shape == "hexagon":  # pointy-top
        a = np.deg2rad(np.arange(6) * 60 + 90)
        return np.stack([np.cos(a), np.sin(a)], axis=1) * 1.05
    if shape == "star":
        inner = rng.uniform(0.38, 0.45)
        a = np.deg2rad(np.arange(10) * 36 - 90)
        r = np.where(np.arange(10) % 2 == 0, 1.0, inner)
        return np.stack([r * np.cos(a), r * np.sin(a)], axis=1) * 1.12
    if shape == "cross":
        w = rng.uniform(0.26, 0.32)
        arm = [(w, 1), (w, w), (1, w), (1, -w), (w, -w), (w, -1)]
        pts = arm + [(-x, -y) for x, y in arm]
        return np.array(pts, dtype=float) * 0.98
    raise ValueError(f"unknown shape {shape!r}")


def _transform(points: np.ndarray, half: float, angle: float, stretch: float) -> np.ndarray:
    """Scale unit points to half-extent ``half``, stretch along x, rotate by ``angle``."""
    p = points * [half * stretch, half / stretch]
    c, s = math.cos(angle), math.sin(angle)
    return p @ np.array([[c, -s], [s, c]])


def _raster(poly: np.ndarray, size: int, offset: float, width: float = 0.0) -> np.ndarray:
    """Coverage ``(size, size)`` float32 of a polygon (``width > 0``: only its outline of that width)."""
    big = Image.new("L", (size * _SS, size * _SS), 0)
    draw = ImageDraw.Draw(big)
    pts = [tuple(p) for p in ((poly + offset) * _SS).tolist()]
    if width > 0:
        draw.polygon(pts, outline=255, width=max(1, round(width * _SS)))
    else:
        draw.polygon(pts, fill=255)
    return np.asarray(big.reduce(_SS), dtype=np.float32) / 255.0


def _value_noise(rng: np.random.Generator, h: int, w: int, octaves: int) -> np.ndarray:
    """Fractal value noise ``(h, w)`` in about [-1, 1]: bicubically upsampled random grids, halved per octave."""
    out = np.zeros((h, w), dtype=np.float32)
    amp, cells = 1.0, int(rng.integers(2, 5))
    for _ in range(octaves):
        grid = rng.uniform(-1, 1, size=(cells + 1, cells + 1)).astype(np.float32)
        out += amp * np.asarray(Image.fromarray(grid).resize((w, h), Image.BICUBIC))
        amp, cells = amp * 0.5, cells * 2
    return out / 1.9


def _muted(rng: np.random.Generator) -> np.ndarray:
    """A muted RGB tone (HSV saturation <= 0.28, value 0.33..0.72) in 0..255."""
    h, s, v = rng.uniform(0, 1), rng.uniform(0.0, 0.28), rng.uniform(0.33, 0.72)
    return np.array(colorsys.hsv_to_rgb(h, s, v), dtype=np.float32) * 255


def _backdrop(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A photo-like muted background ``(h, w, 3)`` float32."""
    a, b = _muted(rng), _muted(rng)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    kind = int(rng.integers(7))
    if kind == 0:  # fractal noise between two tones
        t = np.clip(_value_noise(rng, h, w, 4) * 0.5 + 0.5, 0, 1)
    elif kind == 1:  # wood grain: rings distorted by noise
        cx, cy = rng.uniform(-w, 2 * w), rng.uniform(-h, 2 * h)
        rings = np.hypot(xx - cx, (yy - cy) * 0.25) / rng.uniform(3, 7) + 3 * _value_noise(rng, h, w, 2)
        t = 0.5 + 0.5 * np.sin(rings)
    elif kind == 2:  # marble veins
        ang = rng.uniform(0, np.pi)
        u = (xx * math.cos(ang) + yy * math.sin(ang)) / rng.uniform(8, 16)
        t = np.abs(np.sin(u + 4 * _value_noise(rng, h, w, 4))) ** 0.5
    elif kind == 3:  # tiles with grout lines, each tile its own shade
        tile = int(rng.integers(10, 28))
        ids = (yy // tile) * 97 + ((xx + (yy // tile % 2) * tile // 2) // tile)
        t = (np.sin(ids * 12.9898) * 43758.5453) % 1.0 * 0.6 + 0.2
        grout = ((yy % tile) < 1.5) | (((xx + (yy // tile % 2) * tile // 2) % tile) < 1.5)
        t = np.where(grout, 0.0, t)
    elif kind == 4:  # woven fabric
        p = rng.uniform(3, 6)
        t = (
            0.5
            + 0.25 * np.sin(xx * 2 * np.pi / p) * np.sign(np.sin(yy * np.pi / p))
            + 0.15 * _value_noise(rng, h, w, 3)
        )
    elif kind == 5:  # dots on a plain ground
        p = rng.uniform(8, 16)
        d = np.hypot((xx % p) - p / 2, (yy % p) - p / 2)
        t = (d < p * rng.uniform(0.15, 0.3)).astype(np.float32)
    else:  # two-tone "horizon" gradient with soft noise
        horizon = rng.uniform(0.3, 0.7) * h + 6 * _value_noise(rng, h, w, 2)
        t = 1 / (1 + np.exp(-(yy - horizon) / rng.uniform(3, 12)))
    t = np.clip(t, 0, 1)[:, :, None]
    img = a * (1 - t) + b * t
    if rng.random() < 0.4:  # vignette, as from a cheap lens
        r = np.hypot((xx - w / 2) / w, (yy - h / 2) / h)
        img *= (1 - rng.uniform(0.1, 0.3) * r**2 * 2)[:, :, None]
    return np.clip(img, 60, 194).astype(np.float32)  # apart from black (<= 72) and white (>= 200) objects


def _clutter(rng: np.random.Generator, img: np.ndarray) -> None:
    """Draw a few grey strokes and blobs (no colour name, no vocabulary shape) onto ``img`` in place."""
    h, w = img.shape[:2]
    layer = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(layer)
    for _ in range(int(rng.integers(1, 6))):
        grey = int(rng.uniform(70, 190))
        pts = np.cumsum(rng.normal(0, min(h, w) / 6, size=(int(rng.integers(3, 7)), 2)), axis=0)
        pts += [rng.uniform(0, w), rng.uniform(0, h)]
        draw.line([tuple(p) for p in pts.tolist()], fill=(grey,) * 3, width=int(rng.integers(1, 3)))
    img[:] = np.asarray(layer, dtype=np.float32)


def _paint(
    rng: np.random.Generator, colour: str, cover: np.ndarray, rim: np.ndarray | None, style: str
) -> np.ndarray:
    """RGB ``(P, P, 3)`` of an object in ``style`` (``rim``: coverage of its outline band)."""
    shade = np.array(ALT_SHADES[colour][int(rng.integers(len(ALT_SHADES[colour])))], dtype=np.float32)
    p = cover.shape[0]
    # how far a colour may darken and stay itself: dark yellow turns olive, dark orange brown, dark white grey
    low = {"yellow": 0.9, "orange": 0.88, "white": 0.86}.get(colour, 0.66)
    dark = shade + 28 if colour == "black" else shade * low
    light = np.minimum(shade * 1.12 + 10, 255) if colour != "white" else shade
    yy, xx = np.mgrid[0:p, 0:p].astype(np.float32) / max(p - 1, 1)
    if style == "gradient":
        ang = rng.uniform(0, 2 * np.pi)
        t = np.clip(0.5 + (xx - 0.5) * math.cos(ang) + (yy - 0.5) * math.sin(ang), 0, 1)[:, :, None]
        lo = shade if colour == "black" else shade * max(low, 0.8)
        return light * (1 - t) + lo * t
    if style == "hatched":
        period = rng.uniform(3, 5) / p
        t = (np.sin((xx + yy) / period * np.pi) > 0)[:, :, None]
        return np.where(t, shade, dark * 0.25 + shade * 0.75)
    out = np.broadcast_to(shade, (p, p, 3)).copy()
    if style == "rim" and rim is not None:
        out = out * (1 - rim[:, :, None]) + dark * rim[:, :, None]
    return out


class AltShapesWorld(WorldRenderer):
    """The shapes world drawn by another renderer; the same interface as :class:`~openglip.shapes.render.ShapesWorld`
    (the settings: :class:`~openglip.shapes.world.WorldRenderer`).

    ``sample(index)`` depends only on ``(seed, split, index)``. Images are at least 48 px. Unlike
    ``ShapesWorld``, each canvas has its own size and aspect ratio around ``image_size`` unless
    ``vary_canvas=False``: 0.8-1.4x the nominal area with an aspect ratio (w/h) of 0.65-1.55.
    """

    min_side = 48
    varies_canvas = True

    def _canvas(self, rng: np.random.Generator) -> tuple[int, int]:
        if not self.vary_canvas:
            return self.height, self.width
        area = self.height * self.width * rng.uniform(0.8, 1.4)
        aspect = math.exp(rng.uniform(math.log(0.65), math.log(1.55)))
        return max(48, round(math.sqrt(area / aspect))), max(48, round(math.sqrt(area * aspect)))

    def sample(self, index: int) -> ShapesSample:
        """Render sample ``index``.

        Args:
            index: non-negative sample index.

        Returns:
            A :class:`~openglip.shapes.world.ShapesSample` (boxes tight around the visible masks).
        """
        if index < 0:
            raise ValueError("index must be non-negative")
        split_id = SPLITS[self.split]
        rng = np.random.default_rng([_SALT, self.seed, split_id, int(index)])
        h, w = self._canvas(rng)
        img = _backdrop(rng, h, w)
        if rng.random() < 0.5:
            _clutter(rng, img)
        owner = np.full((h, w), -1, dtype=np.int32)  # visible object per pixel
        solid = np.zeros((h, w), dtype=bool)  # pixels nothing may overlap (hollow interiors, gaps)
        objs: list[dict[str, Any]] = []
        zoom = rng.uniform(0.85, 1.2)
        want = int(rng.integers(self.min_objects, self.max_objects + 1))
        for _ in range(want * 4):
            if len(objs) == want:
                break
            label, size = draw_category(rng, self.split), SIZES[int(rng.integers(2))]
            if any(o["label"] == label and o["size"] == size for o in objs):
                continue  # (category, size) stays unique so that captions can name every object
            colour, shape = CATEGORIES[label].split()
            extent = rng.uniform(*_EXTENT[size]) * min(h, w) * zoom
            poly = _transform(
                _geometry(shape, rng), extent / 2, rng.uniform(0, 2 * np.pi), rng.uniform(0.9, 1.1)
            )
            p = math.ceil(np.abs(poly).max() * 2 + 2 * _GAP + 2)
            if p >= min(h, w):
                continue
            off = p / 2 + rng.uniform(-0.5, 0.5)
            style = _STYLES[int(rng.choice(len(_STYLES), p=_STYLE_P))]
            fill = _raster(poly, p, off)
            band = max(2.2, extent * rng.uniform(0.1, 0.16))
            rim = _raster(poly, p, off, width=band) * fill if style in ("rim", "hollow") else None
            cover = rim if style == "hollow" else fill
            mask, foot = cover >= 0.5, fill >= 0.5
            guard = np.asarray(Image.fromarray(foot).filter(ImageFilter.MaxFilter(2 * _GAP + 1)), dtype=bool)
            may_cover = style != "hollow" and rng.random() < 0.35
            placed = find_place(
                rng, owner, solid, guard, mask, objs, colour, may_cover=may_cover, keep=_VISIBLE, tries=25
            )
            if placed is None:
                continue
            y0, x0 = placed
            win = (slice(y0, y0 + p), slice(x0, x0 + p))
            owner[win][mask] = len(objs)
            if style == "hollow":
                solid[win] |= guard
            alpha = cover[:, :, None]
            img[win] = img[win] * (1 - alpha) + _paint(rng, colour, fill, rim, style) * alpha
            objs.append({"label": label, "size": size, "colour": colour, "hollow": style == "hollow"})
            objs[-1]["area"] = int(mask.sum())
        return finish_sample(rng, self._camera(rng, img), owner, objs)

    __getitem__ = sample

    @staticmethod
    def _camera(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
        """Blur, sensor noise and JPEG compression of the rendered ``(H, W, 3)`` float image."""
        pil = Image.fromarray(np.clip(img + 0.5, 0, 255).astype(np.uint8))
        if rng.random() < 0.5:
            pil = pil.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.1)))
        arr = np.asarray(pil, dtype=np.float32)
        arr = arr + rng.normal(0, rng.uniform(0.5, 5.0), size=arr.shape[:2])[:, :, None]  # luminance noise
        pil = Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8))
        if rng.random() < 0.6:
            buf = io.BytesIO()
            pil.save(buf, format="JPEG", quality=int(rng.integers(30, 86)))
            buf.seek(0)
            pil = Image.open(buf).convert("RGB")
        return np.array(pil, dtype=np.uint8)
