"""Joint image / box / caption transforms for training and evaluation.

Every transform is a callable ``(image, target, rng) -> (image, target)`` on an RGB PIL image and a target
dict with ``"boxes"`` ``(N, 4)`` float32 xyxy pixels, ``"caption"`` (str or None), ``"spans"`` (per box, a list
of ``(start, end)`` character spans), ``"labels"`` ``(N,)`` and optionally ``"masks"`` ``(N, H, W)`` bool.
All randomness comes from ``rng``, so a sample's augmentation is replayed exactly from its seed.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image, ImageEnhance, ImageFilter

from ..errors import UsageError
from ..models.transform import ImageTransform, resized_size
from .records import ImageRecord

Target = dict[str, Any]
Spans = list[list[tuple[int, int]]]

_LEFT_RIGHT = re.compile(r"\b(left|right)\b", re.IGNORECASE)


def record_target(record: ImageRecord, masks: np.ndarray | None = None) -> Target:
    """The transform target of an :class:`ImageRecord` (copies, so transforms never alter the record).

    Args:
        record: the record.
        masks: optional decoded ``(N, H, W)`` bool masks in the record's box order.

    Returns:
        A target dict (``"masks"`` only when ``masks`` is given).
    """
    target: Target = {
        "boxes": np.array(record.boxes, dtype=np.float32).reshape(-1, 4),
        "labels": np.array(record.labels, dtype=np.int64).reshape(-1),
        "caption": record.caption,
        "spans": [[tuple(s) for s in spans] for spans in record.spans],
    }
    if masks is not None:
        target["masks"] = np.asarray(masks, dtype=bool)
    return target


def _swap_word(match: re.Match) -> str:
    word = match.group(0)
    new = "right" if word.lower() == "left" else "left"
    if word.isupper():
        return new.upper()
    return new.capitalize() if word[0].isupper() else new


def swap_left_right(caption: str, spans: Sequence[Sequence[Sequence[int]]]) -> tuple[str, Spans]:
    """Swap the whole words "left" and "right" (case kept) and move the character spans with the text.

    "leftover" or "rightmost" are left alone. Because the two words differ in length, text after a swapped
    word shifts; a span boundary inside a swapped word moves to that word's new start (for a start) or end
    (for an end), so ``new_caption[s:e]`` is always the swapped version of the old phrase.

    Args:
        caption: the text.
        spans: per box, its ``(start, end)`` spans in ``caption``.

    Returns:
        ``(new_caption, new_spans)``.
    """
    parts, edits, pos, shift = [], [], 0, 0  # edits: (old_start, old_end, new_start, new_end)
    for m in _LEFT_RIGHT.finditer(caption):
        new = _swap_word(m)
        parts += [caption[pos : m.start()], new]
        edits.append((m.start(), m.end(), m.start() + shift, m.start() + shift + len(new)))
        shift += len(new) - (m.end() - m.start())
        pos = m.end()
    parts.append(caption[pos:])

    def move(p: int, is_end: bool) -> int:
        delta = 0
        for a, b, na, nb in edits:
            if a < p < b:
                return nb if is_end else na
            if b <= p:
                delta = nb - b
        return p + delta

    new_spans = [[(move(s, False), move(e, True)) for s, e in box] for box in spans]
    return "".join(parts), new_spans


class Compose:
    """Apply transforms in order.

    Args:
        transforms: callables ``(image, target, rng) -> (image, target)``.
    """

    def __init__(self, transforms: Sequence[Any]) -> None:
        self.transforms = list(transforms)

    def __call__(
        self, image: Image.Image, target: Target, rng: np.random.Generator | None = None
    ) -> tuple[Image.Image, Target]:
        for t in self.transforms:
            image, target = t(image, target, rng)
        return image, target

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


class RandomResize:
    """Resize to a shorter side drawn from ``min_sizes``, capped by ``max_size`` (the rule of
    :func:`openglip.models.transform.resized_size`); boxes are scaled, masks resized nearest-neighbour.

    Args:
        min_sizes: candidate shorter-side sizes (one value = a fixed resize that draws nothing from ``rng``,
            which may then be None).
        max_size: longest side allowed.
    """

    def __init__(self, min_sizes: Sequence[int], max_size: int) -> None:
        if not min_sizes:
            raise UsageError("train_min_sizes must list at least one size, e.g. train_min_sizes=(480,560)")
        self.min_sizes, self.max_size = [int(s) for s in min_sizes], int(max_size)

    def __call__(
        self, image: Image.Image, target: Target, rng: np.random.Generator | None = None
    ) -> tuple[Image.Image, Target]:
        sizes = self.min_sizes
        min_size = sizes[0] if len(sizes) == 1 else sizes[int(rng.integers(len(sizes)))]
        h, w = image.height, image.width
        nh, nw = resized_size(h, w, min_size, self.max_size)
        if (nh, nw) == (h, w):
            return image, target
        # the same call as ImageTransform.to_tensor, so eval inputs match the model's own preprocessing
        image = TF.resize(image, [nh, nw], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
        target = dict(target)
        scale = np.array([nw / w, nh / h, nw / w, nh / h], dtype=np.float32)
        target["boxes"] = (np.asarray(target["boxes"], dtype=np.float32).reshape(-1, 4) * scale).astype(
            np.float32
        )
        if target.get("masks") is not None:
            # centre-aligned nearest neighbour: output pixel centre (i + 0.5) maps to (i + 0.5) * old / new
            ys = np.minimum(((np.arange(nh) + 0.5) * (h / nh)).astype(np.int64), h - 1)
            xs = np.minimum(((np.arange(nw) + 0.5) * (w / nw)).astype(np.int64), w - 1)
            target["masks"] = np.asarray(target["masks"], dtype=bool)[:, ys][:, :, xs]
        return image, target

    def __repr__(self) -> str:
        return f"RandomResize(min_sizes={self.min_sizes}, max_size={self.max_size})"


class RandomHorizontalFlip:
    """Mirror the image, boxes and masks with probability ``p``, and swap "left"/"right" in the caption.

    Args:
        p: flip probability.
    """

    def __init__(self, p: float = 0.5) -> None:
        self.p = float(p)

    def __call__(
        self, image: Image.Image, target: Target, rng: np.random.Generator
    ) -> tuple[Image.Image, Target]:
        if not rng.random() < self.p:
            return image, target
        w = image.width
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        target = dict(target)
        boxes = np.asarray(target["boxes"], dtype=np.float32).reshape(-1, 4)
        target["boxes"] = np.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], axis=1)
        if target.get("masks") is not None:
            target["masks"] = np.ascontiguousarray(np.asarray(target["masks"], dtype=bool)[:, :, ::-1])
        if target.get("caption") is not None:
            caption = target["caption"]
            target["caption"], target["spans"] = swap_left_right(caption, target.get("spans", []))
            if target.get("phrase_spans"):
                # every phrase of a detection prompt (the negatives too) moves with the rewrite
                named = target["phrase_spans"]
                _, moved = swap_left_right(caption, [[span] for _, span in named])
                target["phrase_spans"] = [
                    (target["caption"][s:e], (s, e)) for (_, _), [(s, e)] in zip(named, moved)
                ]
        return image, target

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class ColorJitter:
    """Random brightness, contrast and saturation (never hue: colour words in captions must stay true).

    Each factor is drawn from ``[1 - x, 1 + x]`` and the three are applied in a random order.

    Args:
        brightness, contrast, saturation: the jitter strengths ``x`` (0 disables one).
    """

    def __init__(self, brightness: float = 0.2, contrast: float = 0.2, saturation: float = 0.2) -> None:
        self.strengths = (float(brightness), float(contrast), float(saturation))
        self.enhancers = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)

    def __call__(
        self, image: Image.Image, target: Target, rng: np.random.Generator
    ) -> tuple[Image.Image, Target]:
        # always draw the same amount of randomness, whatever the strengths
        factors = [rng.uniform(1 - x, 1 + x) for x in self.strengths]
        for k in rng.permutation(3).tolist():
            if self.strengths[k] > 0:
                image = self.enhancers[k](image).enhance(factors[k])
        return image, target

    def __repr__(self) -> str:
        b, c, s = self.strengths
        return f"ColorJitter(brightness={b}, contrast={c}, saturation={s})"


class RandomCropKeepBoxes:
    """With probability ``p``, crop a random window that still holds every box whole.

    No object is cut, so captions and detection prompts stay true; the crop changes the image's aspect ratio
    and how large the objects are relative to it (a zoom-in once the crop is resized). Each side keeps at
    least ``min_scale`` of its length. Boxes shift with the crop and masks are cut with it.

    Args:
        p: crop probability.
        min_scale: smallest kept fraction of each side.
    """

    def __init__(self, p: float = 0.5, min_scale: float = 0.6) -> None:
        if not 0 < min_scale <= 1:
            raise ValueError(f"min_scale must be in (0, 1], got {min_scale}")
        self.p, self.min_scale = float(p), float(min_scale)

    def __call__(
        self, image: Image.Image, target: Target, rng: np.random.Generator
    ) -> tuple[Image.Image, Target]:
        draw = rng.random(5)  # always the same amount of randomness
        if not draw[0] < self.p:
            return image, target
        w, h = image.width, image.height
        boxes = np.asarray(target["boxes"], dtype=np.float32).reshape(-1, 4)
        if len(boxes):  # the union of the boxes must stay inside the window
            lo = np.floor(boxes[:, :2].min(axis=0)).astype(int)
            hi = np.ceil(boxes[:, 2:].max(axis=0)).astype(int)
        else:
            lo, hi = np.array([w, h]), np.array([0, 0])
        window = []
        for axis, size in ((0, w), (1, h)):
            need = max(int(hi[axis] - lo[axis]), 1)
            length = round(
                max(need, self.min_scale * size) + draw[1 + axis] * (size - max(need, self.min_scale * size))
            )
            first = max(0, int(hi[axis]) - length)
            last = min(int(lo[axis]), size - length) if len(boxes) else size - length
            window.append((first + round(draw[3 + axis] * max(last - first, 0)), length))
        (x0, cw), (y0, ch) = window
        if (cw, ch) == (w, h):
            return image, target
        image = image.crop((x0, y0, x0 + cw, y0 + ch))
        target = dict(target)
        target["boxes"] = (boxes - np.array([x0, y0, x0, y0], dtype=np.float32)).astype(np.float32)
        if target.get("masks") is not None:
            target["masks"] = np.ascontiguousarray(
                np.asarray(target["masks"], dtype=bool)[:, y0 : y0 + ch, x0 : x0 + cw]
            )
        return image, target

    def __repr__(self) -> str:
        return f"RandomCropKeepBoxes(p={self.p}, min_scale={self.min_scale})"


class RandomBlur:
    """With probability ``p``, a Gaussian blur of radius drawn from ``radius`` (geometry unchanged).

    Args:
        p: blur probability.
        radius: ``(low, high)`` Gaussian radius in px.
    """

    def __init__(self, p: float = 0.2, radius: tuple[float, float] = (0.3, 1.0)) -> None:
        self.p, self.radius = float(p), (float(radius[0]), float(radius[1]))

    def __call__(
        self, image: Image.Image, target: Target, rng: np.random.Generator
    ) -> tuple[Image.Image, Target]:
        apply, radius = rng.random() < self.p, rng.uniform(*self.radius)
        if apply:
            image = image.filter(ImageFilter.GaussianBlur(radius))
        return image, target

    def __repr__(self) -> str:
        return f"RandomBlur(p={self.p}, radius={self.radius})"


class RandomJPEG:
    """With probability ``p``, a JPEG round trip at a quality drawn from ``quality`` (compression artefacts).

    Args:
        p: probability.
        quality: ``(low, high)`` JPEG quality, inclusive.
    """

    def __init__(self, p: float = 0.2, quality: tuple[int, int] = (30, 90)) -> None:
        self.p, self.quality = float(p), (int(quality[0]), int(quality[1]))

    def __call__(
        self, image: Image.Image, target: Target, rng: np.random.Generator
    ) -> tuple[Image.Image, Target]:
        apply, quality = rng.random() < self.p, int(rng.integers(self.quality[0], self.quality[1] + 1))
        if apply:
            buf = io.BytesIO()
            image.convert("RGB").save(buf, format="JPEG", quality=quality)
            image = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
        return image, target

    def __repr__(self) -> str:
        return f"RandomJPEG(p={self.p}, quality={self.quality})"


def to_model_input(
    image: Image.Image, mean: Sequence[float], std: Sequence[float], bgr: bool = True
) -> torch.Tensor:
    """Normalise an RGB image exactly like ``ImageTransform.to_tensor``, without resizing it.

    Args:
        image: RGB PIL image (already resized by the transforms).
        mean, std: per-channel statistics in the model's channel order and 0..255 range.
        bgr: feed channels as BGR (GLIP) instead of RGB.

    Returns:
        ``(3, H, W)`` float32 tensor.
    """
    if image.mode != "RGB":
        image = image.convert("RGB")
    short, long = min(image.size), max(image.size)  # makes resized_size a no-op
    return ImageTransform(min_size=short, max_size=long, mean=mean, std=std, bgr=bgr).to_tensor(image)


def default_train_transforms(
    min_sizes: Sequence[int] = (480, 560, 640, 720, 800),
    max_size: int = 1333,
    flip_p: float = 0.5,
    jitter: float = 0.2,
    *,
    crop_p: float = 0.0,
    blur_p: float = 0.0,
    jpeg_p: float = 0.0,
) -> Compose:
    """Training augmentation: horizontal flip (with caption swap), optionally a crop that keeps every box,
    multi-scale resize, colour jitter, optionally blur and JPEG artefacts.

    Args:
        min_sizes: candidate shorter sides.
        max_size: longest side allowed.
        flip_p: flip probability.
        jitter: brightness/contrast/saturation strength.
        crop_p: probability of :class:`RandomCropKeepBoxes` (0: not used).
        blur_p: probability of :class:`RandomBlur` (0: not used).
        jpeg_p: probability of :class:`RandomJPEG` (0: not used).

    Returns:
        The composed transform.
    """
    steps: list[Any] = [RandomHorizontalFlip(flip_p)]
    if crop_p > 0:
        steps.append(RandomCropKeepBoxes(crop_p))
    steps += [RandomResize(min_sizes, max_size), ColorJitter(jitter, jitter, jitter)]
    if blur_p > 0:
        steps.append(RandomBlur(blur_p))
    if jpeg_p > 0:
        steps.append(RandomJPEG(jpeg_p))
    return Compose(steps)


def shapes_train_transforms(min_sizes: Sequence[int], max_size: int, flip_p: float, jitter: float) -> Compose:
    """The shapes world's training augmentation: :func:`default_train_transforms` plus crops that keep every
    box (half the images), blur and JPEG artefacts (a fifth each), so that a model learns colours and shapes
    rather than one renderer's sharpness, framing and object scale.

    Args:
        min_sizes: candidate shorter sides.
        max_size: longest side allowed.
        flip_p: flip probability.
        jitter: brightness/contrast/saturation strength.

    Returns:
        The composed transform.
    """
    return default_train_transforms(min_sizes, max_size, flip_p, jitter, crop_p=0.5, blur_p=0.2, jpeg_p=0.2)


def default_eval_transforms(min_size: int = 800, max_size: int = 1333) -> Compose:
    """Evaluation: a fixed resize (the same size as the model's own ``ImageTransform``).

    Args:
        min_size: shorter side.
        max_size: longest side allowed.

    Returns:
        The composed transform (it uses no randomness).
    """
    return Compose([RandomResize([min_size], max_size)])
