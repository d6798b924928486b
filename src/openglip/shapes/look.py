"""The look of the shapes world's own renderer (:class:`openglip.data.shapes.ShapesWorld`): shape rasteriser,
backgrounds, object paint and camera effects. Everything draws from the ``rng`` it is given, so a sample is
replayed exactly from its seed.

Why so much variety: a model trained on one look learns that look (a grey background, flat fills, sharp edges)
along with the colours and shapes; another renderer of the same world then costs it a quarter of its AP. So
backgrounds are muted tints (never a vivid colour: colour words name objects only) with gradients, noise of
several scales, stripes, checkers, grids, dots, two-tone mixes and grey clutter strokes; objects are filled,
rimmed or hollow, shaded with gradients and highlights; the camera blurs, adds noise and JPEG-compresses.
"""

from __future__ import annotations

import colorsys
import io
import math

import numpy as np
from PIL import Image, ImageDraw

SS = 4  # supersampling factor of the shape rasteriser
# how dark a colour may get and keep its name: dark yellow turns olive, dark orange brown, dark white grey
_FLOOR = {"yellow": 0.88, "orange": 0.85, "white": 0.8}


def unit_polygon(shape: str, theta: float) -> np.ndarray:
    """Vertices ``(K, 2)`` of a shape with circumradius 1, rotated by ``theta``."""
    if shape == "square":
        ang, rad = np.arange(4) * (np.pi / 2) + np.pi / 4, np.ones(4)
    elif shape == "triangle":
        ang, rad = np.arange(3) * (2 * np.pi / 3) - np.pi / 2, np.ones(3)
    elif shape == "hexagon":
        ang, rad = np.arange(6) * (np.pi / 3), np.ones(6)
    elif shape == "star":
        ang, rad = np.arange(10) * (np.pi / 5) - np.pi / 2, np.tile([1.0, 0.48], 5)
    elif shape == "cross":
        a = 0.34
        quarter, turn = np.array([(a, -1), (a, -a), (1, -a)]), np.array([[0, 1], [-1, 0]])  # (x,y) -> (-y,x)
        pts = np.concatenate([quarter @ np.linalg.matrix_power(turn, k) for k in range(4)])
        c, s = math.cos(theta), math.sin(theta)
        return pts @ np.array([[c, s], [-s, c]])
    else:
        raise ValueError(f"no polygon for shape {shape!r}")
    ang = ang + theta
    return np.stack([rad * np.cos(ang), rad * np.sin(ang)], axis=1)


def dilate(mask: np.ndarray, steps: int = 2) -> np.ndarray:
    """Grow a boolean mask by ``steps`` pixels (4-neighbourhood)."""
    out = mask.copy()
    for _ in range(steps):
        grown = out.copy()
        grown[1:] |= out[:-1]
        grown[:-1] |= out[1:]
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        out = grown
    return out


def _downsample(hi: np.ndarray, size: int) -> np.ndarray:
    """Coverage ``(size, size)`` float32 of a supersampled boolean mask."""
    return hi.reshape(size, SS, size, SS).sum(axis=(1, 3), dtype=np.float32) / (SS * SS)


def render_shape(
    shape: str, radius: float, theta: float, frac: tuple[float, float], pad: int, ring: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Anti-aliased coverages of one shape centred in a padded square patch.

    Args:
        shape: a shape name.
        radius: circumradius in px.
        theta: rotation.
        frac: sub-pixel offset of the centre.
        pad: patch padding in px.
        ring: width in px of the band along the outline (0: none).

    Returns:
        ``(fill, band)``: ``(P, P)`` float32 coverages in [0, 1] of the whole shape and of its outline band
        (zeros when ``ring`` is 0).
    """
    size = math.ceil(2 * radius + 2 * pad + 1)
    cx, cy = radius + pad + frac[0], radius + pad + frac[1]
    canvas = Image.new("1", (size * SS, size * SS), 0)
    draw = ImageDraw.Draw(canvas)
    if shape == "circle":
        draw.ellipse(
            [(cx - radius) * SS, (cy - radius) * SS, (cx + radius) * SS - 1, (cy + radius) * SS - 1], fill=1
        )
    else:
        pts = (unit_polygon(shape, theta) * radius + (cx, cy)) * SS
        draw.polygon([tuple(p) for p in pts.tolist()], fill=1)
    hi = np.asarray(canvas, dtype=bool)
    fill = _downsample(hi, size)
    if ring <= 0:
        return fill, np.zeros_like(fill)
    inner = ~dilate(~hi, max(1, round(ring * SS)))  # erosion: the band is what the erosion removes
    return fill, _downsample(hi & ~inner, size)


def ramp(h: int, w: int, phi: float) -> np.ndarray:
    """``x cos(phi) + y sin(phi)`` on an ``(h, w)`` grid."""
    return (
        np.cos(phi) * np.arange(w, dtype=np.float32)[None, :]
        + np.sin(phi) * np.arange(h, dtype=np.float32)[:, None]
    )


def _unit(field: np.ndarray) -> np.ndarray:
    """``field`` shifted and scaled to [-1, 1]."""
    lo, hi = float(field.min()), float(field.max())
    return (field - (lo + hi) / 2) * (2 / max(hi - lo, 1e-6))


def _tone(rng: np.random.Generator) -> np.ndarray:
    """A muted RGB tone: a grey level 85..165 tinted by at most 22% of it, so no background reads as a colour
    name and white (>= 200) and black (<= 60) objects always stand out."""
    grey = rng.uniform(85.0, 165.0)
    direction = rng.standard_normal(3)
    direction -= direction.mean()  # orthogonal to the grey axis: a hue, not a brightness
    direction /= max(float(np.linalg.norm(direction)), 1e-6)
    amount = rng.uniform(0.0, 0.06) if rng.random() < 0.4 else rng.uniform(0.06, 0.22)
    return (grey * (1 + amount * direction)).astype(np.float32)


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A texture field ``(h, w)`` float32 in [-1, 1]: gradient, noise, stripes, checker, grid, dots or weave."""
    kind = int(rng.integers(7))
    if kind == 0:  # linear gradient
        return _unit(ramp(h, w, rng.uniform(0, 2 * np.pi)))
    if kind == 1:  # noise of one to three scales
        field = np.zeros((h, w), dtype=np.float32)
        cells = int(rng.integers(2, 6))
        for octave in range(int(rng.integers(1, 4))):
            low = Image.fromarray(rng.standard_normal((cells, cells)).astype(np.float32))
            field += np.asarray(low.resize((w, h), Image.BILINEAR)) * 0.6**octave
            cells *= 3
        return _unit(field)
    if kind == 2:  # stripes
        t, period = ramp(h, w, rng.uniform(0, np.pi)), rng.uniform(5.0, 22.0)
        return np.sin(t * (2 * np.pi / period)).astype(np.float32)
    if kind == 3:  # checker
        period = int(rng.integers(5, 20))
        checks = (np.arange(h)[:, None] // period + np.arange(w)[None, :] // period) % 2
        return checks.astype(np.float32) * 2 - 1
    if kind == 4:  # grid lines
        period, width = int(rng.integers(7, 22)), int(rng.integers(1, 3))
        on = (np.arange(h)[:, None] % period < width) | (np.arange(w)[None, :] % period < width)
        return on.astype(np.float32) * 2 - 1
    if kind == 5:  # dots
        period = rng.uniform(7.0, 16.0)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        d = np.hypot(xx % period - period / 2, yy % period - period / 2)
        return (d < period * rng.uniform(0.15, 0.32)).astype(np.float32) * 2 - 1
    # weave: crossed sine gratings
    a, b = ramp(h, w, rng.uniform(0, np.pi)), rng.uniform(4.0, 9.0)
    c = ramp(h, w, rng.uniform(0, np.pi))
    return (np.sin(a * 2 * np.pi / b) * np.sin(c * 2 * np.pi / b)).astype(np.float32)


def _scribbles(rng: np.random.Generator, img: np.ndarray) -> None:
    """Grey clutter strokes and arcs (no colour name, no vocabulary shape) painted into ``img`` in place."""
    h, w = img.shape[:2]
    layer = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(layer)
    greys = []
    for k in range(int(rng.integers(1, 5))):
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        if rng.random() < 0.5:
            r = rng.uniform(4, min(h, w) / 2)
            start = rng.uniform(0, 360)
            draw.arc([x - r, y - r, x + r, y + r], start, start + rng.uniform(40, 200), fill=k + 1, width=1)
        else:
            pts = [(x, y)] + [(x + rng.normal(0, w / 4), y + rng.normal(0, h / 4)) for _ in range(2)]
            draw.line(pts, fill=k + 1, width=int(rng.integers(1, 3)))
        greys.append(rng.uniform(60.0, 200.0))
    ids = np.asarray(layer)
    for k, grey in enumerate(greys):
        img[ids == k + 1] = grey


def background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A muted, textured ``(H, W, 3)`` float32 background."""
    img = np.empty((h, w, 3), dtype=np.float32)
    img[:] = _tone(rng)
    style = rng.random()
    if style < 0.15:  # plain
        pass
    elif style < 0.45:  # two muted tones mixed by a texture
        t = (_texture(rng, h, w) * 0.5 + 0.5)[:, :, None]
        img = img * (1 - t) + _tone(rng) * t
    else:  # one or two textures as light and shade
        img += (_texture(rng, h, w) * rng.uniform(3.0, 16.0))[:, :, None]
        if rng.random() < 0.3:
            img += (_texture(rng, h, w) * rng.uniform(2.0, 8.0))[:, :, None]
    if rng.random() < 0.25:
        _scribbles(rng, img)
    return img


def paint_object(
    rng: np.random.Generator, name: str, rgb: tuple[int, int, int], size: tuple[int, int], band=None
) -> np.ndarray:
    """Shaded RGB ``size + (3,)`` float32 of an object of colour ``rgb``.

    The shade varies a little around ``rgb`` (hue +-6 degrees, saturation -0..14%); brightness, a linear
    gradient and sometimes a soft highlight change lightness only.

    Args:
        rng: random generator.
        name: the colour's name (black is lifted instead of scaled; rims depend on it).
        rgb: the colour.
        size: ``(P, P)`` patch size.
        band: optional ``(P, P)`` coverage of a darker rim.
    """
    ph, pw = size
    hue, sat, val = colorsys.rgb_to_hsv(*(c / 255 for c in rgb))
    # a shade of its own per object: hue within +-6 degrees and a little less saturation keep the name true
    hue, sat = (hue + rng.uniform(-6, 6) / 360) % 1.0, sat * rng.uniform(0.86, 1.0)
    colour = np.array(colorsys.hsv_to_rgb(hue, sat, val), dtype=np.float32) * 255
    dark = name == "black"
    bright = rng.uniform(0.86, 1.05)
    phi, grad = rng.uniform(0, 2 * np.pi), rng.uniform(0.0, 0.14)
    light = 1 + grad * _unit(ramp(ph, pw, phi))
    if rng.random() < 0.25:  # a soft highlight
        yy, xx = np.mgrid[0:ph, 0:pw].astype(np.float32)
        cy, cx = rng.uniform(0.2, 0.8) * ph, rng.uniform(0.2, 0.8) * pw
        spot = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (0.1 * ph * pw + 1))
        light = light + rng.uniform(0.05, 0.15) * spot
    if dark:  # scaling black does nothing, so lift it a little instead
        out = colour + (light[:, :, None] - 1) * 60 + rng.uniform(0, 18)
    else:
        out = np.minimum(np.maximum(bright * light, _FLOOR.get(name, 0.7))[:, :, None] * colour, 255)
    if band is not None:
        rim = colour + 30 if dark else colour * _FLOOR.get(name, 0.62)
        out = out * (1 - band[:, :, None]) + rim * band[:, :, None]
    return out.astype(np.float32)


def _gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of an ``(H, W, 3)`` float image (edges replicated)."""
    r = max(1, math.ceil(2.5 * sigma))
    k = np.exp(-(np.arange(-r, r + 1, dtype=np.float32) ** 2) / (2 * sigma * sigma))
    k /= k.sum()
    for axis in (0, 1):
        pad = [(r, r) if a == axis else (0, 0) for a in range(3)]
        padded = np.pad(img, pad, mode="edge")
        n = img.shape[axis]
        img = sum(k[i] * np.take(padded, np.arange(i, i + n), axis=axis) for i in range(2 * r + 1))
    return img


def camera(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Blur (sometimes), sensor noise and JPEG compression (sometimes); float ``(H, W, 3)`` in, uint8 out."""
    if rng.random() < 0.3:
        img = _gaussian_blur(img, rng.uniform(0.35, 0.9))
    img = img + rng.standard_normal(img.shape, dtype=np.float32) * rng.uniform(1.0, 4.5)
    image = np.clip(img + 0.5, 0, 255).astype(np.uint8)
    if rng.random() < 0.3:
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="JPEG", quality=int(rng.integers(40, 91)))
        image = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")).copy()
    return image
