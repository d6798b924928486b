"""The built-in synthetic grounding world "shapes": coloured shapes on muted, textured backgrounds.

A deterministic, seedable generator that needs no input files. Every image holds 1..5 objects named
``"{colour} {shape}"`` (48 categories); 8 colour/shape combinations (:data:`NOVEL`) never appear in the
``"train"`` split, so a model trained on it can be tested zero-shot on them. Each sample carries detection
annotations (tight boxes of the visible masks) and grounding captions with character spans.

Rendering (:mod:`openglip.data.shapes_look`): backgrounds are muted tints (never a vivid colour, luminance far
from both white and black objects) with gradients, noise, stripes, checkers, grids, dots, two-tone mixes and
grey clutter strokes; shapes are rotated at random, anti-aliased (4x supersampling), filled, rimmed in a darker
shade or hollow (then the mask is the outline band), shaded with gradients and highlights, and may partially
occlude each other (an occluded object always keeps at least 60% of its pixels, and never touches an object of
its own colour; hollow objects are never overlapped). The camera sometimes blurs and JPEG-compresses and always
adds noise. Sizes scale with ``min(H, W) / 128`` and a per-image zoom of 0.88..1.15: a "small" object spans
about 14-22 px and a "large" one about 30-44 px at 128 px. ``vary_canvas=True`` also varies each image's size
and aspect ratio. :mod:`openglip.data.shapes_alt` draws the same world with another renderer.
"""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import UsageError
from ..files import write_text_atomic
from ..structures import mask_to_rle
from . import shapes_look as look

COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black")
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "hexagon", "cross")
SIZES: tuple[str, ...] = ("small", "large")
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
CATEGORIES: list[str] = [f"{c} {s}" for c in COLOURS for s in SHAPES]
NOVEL: tuple[str, ...] = (
    "red hexagon",
    "green star",
    "blue triangle",
    "yellow cross",
    "purple circle",
    "orange square",
    "white triangle",
    "black star",
)
BASE: list[str] = [name for name in CATEGORIES if name not in NOVEL]
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

_SPLITS = {"train": 0, "val": 1, "test": 2, "all": 3}
_NOVEL_FRACTION = {"val": 0.4, "test": 0.4}  # "all" draws the 48 categories uniformly
_BASE_IDS = np.array([CATEGORIES.index(n) for n in BASE], dtype=np.int64)
_NOVEL_IDS = np.array([CATEGORIES.index(n) for n in NOVEL], dtype=np.int64)
_SIZE_RANGE = {"small": (14.0, 22.0), "large": (30.0, 44.0)}  # nominal extent in px at 128 px
# circumradius / (nominal extent / 2): makes the axis-aligned extents of the shapes roughly comparable
_RADIUS_FACTOR = dict(zip(SHAPES, (1.0, 1.13, 1.2, 1.15, 1.05, 1.05)))
_STYLES = ("filled", "rimmed", "hollow")  # hollow: only the outline band is drawn (and is the mask)
_STYLE_P = (0.64, 0.16, 0.2)
_PAD = 3  # patch padding in px (>= the 2 px dilation used to keep objects apart)
_KEEP = 0.6  # an occluded object keeps at least this fraction of its pixels when placed
_DROP = 0.5  # objects with less visible than this are dropped from the annotations
_TRIES = 30


@dataclass
class GroundingCaption:
    """A caption and the objects it mentions.

    Attributes:
        caption: the text.
        regions: one dict per mentioned object: ``{"box_index": int, "phrase": str,
            "tokens_positive": [[start, end], ...]}`` with ``caption[start:end] == phrase``.
    """

    caption: str
    regions: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class ShapesSample:
    """One rendered image with its annotations.

    Attributes:
        image: ``(H, W, 3)`` uint8 RGB.
        boxes: ``(N, 4)`` float32 ``x1, y1, x2, y2`` in pixels, tight around the visible mask (``x2 = max_x + 1``).
        labels: ``(N,)`` int64 category indices into :data:`CATEGORIES`.
        masks: ``(N, H, W)`` bool visible pixels; no pixel belongs to two objects.
        sizes: ``"small"`` or ``"large"`` per object.
        captions: ``[referring caption, listing caption]``.
    """

    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    masks: np.ndarray
    sizes: list[str]
    captions: list[GroundingCaption]

    @property
    def names(self) -> list[str]:
        """Category names of the objects."""
        return [CATEGORIES[int(i)] for i in self.labels]


def _article(phrase: str) -> str:
    return "an" if phrase[0] in "aeiou" else "a"


def draw_category(rng: np.random.Generator, split: str) -> int:
    """One category index drawn by the split rule: ``"train"`` only :data:`BASE`, ``"val"``/``"test"`` about 40%
    :data:`NOVEL`, ``"all"`` uniform over the 48.

    Args:
        rng: random generator.
        split: ``"train"``, ``"val"``, ``"test"`` or ``"all"``.

    Returns:
        An index into :data:`CATEGORIES`.
    """
    if split == "train":
        return int(rng.choice(_BASE_IDS))
    if split == "all":
        return int(rng.integers(len(CATEGORIES)))
    pool = _NOVEL_IDS if rng.random() < _NOVEL_FRACTION[split] else _BASE_IDS
    return int(rng.choice(pool))


def check_world_args(
    split: str, image_size, min_objects: int, max_objects: int, seed: int, *, min_side: int
) -> tuple[int, int]:
    """``(height, width)`` of a shapes renderer's settings, each checked (one :class:`UsageError` per problem)."""
    if split not in _SPLITS:
        raise UsageError(f"shapes: split must be one of {sorted(_SPLITS)}, not {split!r}")
    h, w = (int(image_size),) * 2 if np.ndim(image_size) == 0 else map(int, image_size)
    if min(h, w) < min_side:
        raise UsageError(f"shapes: the image size must be at least {min_side} px, got {(h, w)}")
    if not 1 <= min_objects <= max_objects:
        raise UsageError(f"shapes: need 1 <= min_objects <= max_objects, got {min_objects}, {max_objects}")
    if seed < 0:
        raise UsageError(f"shapes: the seed must be 0 or more, got {seed}")
    return h, w


class ShapesWorld:
    """An infinite, deterministic stream of shapes-world samples.

    ``sample(index)`` depends only on ``(seed, split, index)``, never on call order.

    Args:
        split: ``"train"`` (only :data:`BASE` categories), ``"val"`` / ``"test"`` (all 48, about 40% of the
            objects novel) or ``"all"`` (all 48 drawn uniformly).
        image_size: side length, or ``(height, width)``; at least 32 px.
        min_objects: fewest objects per image (best effort: an object that finds no free place is skipped).
        max_objects: most objects per image.
        seed: non-negative random seed.
        vary_canvas: draw each image's height and width independently from 0.8..1.25x ``image_size`` (varied
            sizes and aspect ratios); off by default, so that every image has ``image_size``.
    """

    def __init__(
        self,
        *,
        split: str = "train",
        image_size: int | tuple[int, int] = 128,
        min_objects: int = 1,
        max_objects: int = 5,
        seed: int = 0,
        vary_canvas: bool = False,
    ) -> None:
        h, w = check_world_args(split, image_size, min_objects, max_objects, seed, min_side=32)
        self.split, self.height, self.width = split, h, w
        self.min_objects, self.max_objects, self.seed = min_objects, max_objects, seed
        self.vary_canvas = vary_canvas
        self.scale = min(h, w) / 128.0

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
        rng = np.random.default_rng([self.seed, _SPLITS[self.split], int(index)])
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
            full = np.array([o["area"] for o in objs], dtype=np.int64)
            visible = np.bincount(idmap[idmap >= 0], minlength=len(objs))
            for _ in range(_TRIES):
                y0, x0 = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
                region = idmap[y0 : y0 + ph, x0 : x0 + pw]
                if reserved[y0 : y0 + ph, x0 : x0 + pw][halo].any():
                    continue
                near = region[halo]
                near = near[near >= 0]
                if near.size == 0:
                    break
                others = [objs[j] for j in np.unique(near)]
                if not allow_occlusion or any(o["colour"] == colour or o["hollow"] for o in others):
                    continue
                hits = region[mask]
                lost = np.bincount(hits[hits >= 0], minlength=len(objs))
                if np.all(visible - lost >= _KEEP * full):
                    break
            else:
                continue
            region[mask] = len(objs)
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
        image = look.camera(rng, img)

        masks = idmap[None] == np.arange(len(objs), dtype=np.int32)[:, None, None]
        keep = [i for i, o in enumerate(objs) if masks[i].sum() >= _DROP * o["area"] and masks[i].any()]
        masks = masks[keep]
        objs = [objs[i] for i in keep]
        boxes = np.zeros((len(objs), 4), dtype=np.float32)
        for i, m in enumerate(masks):
            ys, xs = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
            boxes[i] = (xs[0], ys[0], xs[-1] + 1, ys[-1] + 1)
        labels = np.array([o["label"] for o in objs], dtype=np.int64)
        sizes = [o["size"] for o in objs]
        captions = make_captions(rng, boxes, labels, sizes, scale)
        return ShapesSample(image, boxes, labels, masks, sizes, captions)

    __getitem__ = sample


def _phrases(rng: np.random.Generator, labels: np.ndarray, sizes: list[str], p_size: float) -> list[str]:
    """Per object ``"[size] colour shape"``; the size word is used when the category repeats, else at random."""
    out = []
    for i, label in enumerate(labels):
        repeated = int((labels == label).sum()) > 1
        name = CATEGORIES[int(label)]
        out.append(f"{sizes[i]} {name}" if repeated or rng.random() < p_size else name)
    return out


def _relation_holds(rel: str, ref: np.ndarray, anchor: np.ndarray, margin: float) -> bool:
    """Whether box centre ``ref`` is ``rel`` box centre ``anchor`` (image y grows downwards)."""
    dx, dy = ref[0] - anchor[0], ref[1] - anchor[1]
    return {"left of": -dx, "right of": dx, "above": -dy, "below": dy}[rel] > margin


def _append(text: str, phrase: str, box_index: int, regions: list[dict[str, Any]]) -> str:
    """``text + phrase``, recording the phrase's region (character span) in ``regions``."""
    regions.append(
        {"box_index": box_index, "phrase": phrase, "tokens_positive": [[len(text), len(text) + len(phrase)]]}
    )
    return text + phrase


def make_captions(
    rng: np.random.Generator, boxes: np.ndarray, labels: np.ndarray, sizes: list[str], scale: float
) -> list[GroundingCaption]:
    """A referring caption (``"the small green triangle left of the red circle"``) and a listing caption.

    The caption grammar of the world, shared by every renderer of it.

    Args:
        rng: random generator.
        boxes: ``(N, 4)`` xyxy boxes (relations compare their centres).
        labels: ``(N,)`` category indices.
        sizes: ``"small"`` / ``"large"`` per object.
        scale: ``min(H, W) / 128``; a relation needs centres more than ``4 * scale`` px apart.

    Returns:
        ``[referring, listing]``, or ``[]`` for an image without objects.
    """
    n = len(labels)
    if n == 0:
        return []
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    margin = 4.0 * scale
    pairs = itertools.permutations(range(n), 2)
    triples = [
        (i, j, r) for i, j in pairs for r in RELATIONS if _relation_holds(r, centres[i], centres[j], margin)
    ]
    ref_phr, regions = _phrases(rng, labels, sizes, 0.3), []
    if triples:
        i, j, rel = triples[int(rng.integers(len(triples)))]
        text = _append("the ", ref_phr[i], i, regions)
        text = _append(f"{text} {rel} the ", ref_phr[j], j, regions)
    else:  # a single object (or no clear relation)
        i = int(rng.integers(n))
        text = _append("the ", ref_phr[i], i, regions)
    referring = GroundingCaption(text, regions)

    list_phr, text, regions = _phrases(rng, labels, sizes, 0.5), "", []
    for k, obj in enumerate(rng.permutation(n).tolist()):
        sep = "" if k == 0 else " and " if k == n - 1 else ", "
        text = _append(f"{text}{sep}{_article(list_phr[obj])} ", list_phr[obj], obj, regions)
    listing = GroundingCaption(text + ".", regions)
    return [referring, listing]


def _coco_entries(
    sample: ShapesSample, image_id: int, file_name: str, first_ann_id: int
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    h, w = sample.image.shape[:2]
    image = {"id": image_id, "file_name": file_name, "height": h, "width": w}
    image["caption"] = sample.captions[0].caption if sample.captions else ""
    anns = []
    for k, (box, label, mask) in enumerate(zip(sample.boxes.tolist(), sample.labels.tolist(), sample.masks)):
        x1, y1, x2, y2 = box
        ann = {"id": first_ann_id + k, "image_id": image_id, "category_id": int(label) + 1, "iscrowd": 0}
        ann.update(bbox=[x1, y1, x2 - x1, y2 - y1], area=int(mask.sum()), segmentation=mask_to_rle(mask))
        anns.append(ann)
    return image, anns


def _coco_categories() -> list[dict[str, Any]]:
    split = ["novel" if n in NOVEL else "base" for n in CATEGORIES]
    return [
        {"id": i + 1, "name": n, "supercategory": n.split()[1], "split": split[i]}
        for i, n in enumerate(CATEGORIES)
    ]


def to_coco(samples: list[ShapesSample], file_names: list[str]) -> dict[str, Any]:
    """COCO detection dictionary (boxes, RLE masks, the 48 categories with ``"split"``).

    Args:
        samples: the samples.
        file_names: one image file name per sample.

    Returns:
        ``{"images", "annotations", "categories"}``; image ids start at 1 and carry the referring caption,
        ``category_id`` is the label + 1.
    """
    if len(samples) != len(file_names):
        raise ValueError("need one file name per sample")
    images, anns = [], []
    for k, (sample, name) in enumerate(zip(samples, file_names)):
        image, entries = _coco_entries(sample, k + 1, name, len(anns) + 1)
        images.append(image)
        anns.extend(entries)
    return {"images": images, "annotations": anns, "categories": _coco_categories()}


def _odvg_records(sample: ShapesSample, file_name: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    h, w = sample.image.shape[:2]
    head = {"filename": file_name, "height": h, "width": w}
    boxes = sample.boxes.tolist()
    instances = [
        {"bbox": box, "label": int(label), "category": CATEGORIES[int(label)]}
        for box, label in zip(boxes, sample.labels.tolist())
    ]
    detection = {**head, "detection": {"instances": instances}}
    grounding = []
    for cap in sample.captions:
        regions = [
            {
                "bbox": boxes[r["box_index"]],
                "phrase": r["phrase"],
                "tokens_positive": [list(t) for t in r["tokens_positive"]],
            }
            for r in cap.regions
        ]
        grounding.append({**head, "grounding": {"caption": cap.caption, "regions": regions}})
    return detection, grounding


def to_odvg(
    samples: list[ShapesSample], file_names: list[str]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """ODVG records: one detection record per image and one grounding record per caption.

    Args:
        samples: the samples.
        file_names: one image file name per sample.

    Returns:
        ``(detection_records, grounding_records)``; boxes are ``[x1, y1, x2, y2]``, ``label`` is the category index.
    """
    if len(samples) != len(file_names):
        raise ValueError("need one file name per sample")
    detection, grounding = [], []
    for sample, name in zip(samples, file_names):
        det, grd = _odvg_records(sample, name)
        detection.append(det)
        grounding.extend(grd)
    return detection, grounding


def write_dataset(
    out_dir: str | os.PathLike,
    *,
    num_images: int,
    split: str = "train",
    image_size: int | tuple[int, int] = 128,
    seed: int = 0,
    min_objects: int = 1,
    max_objects: int = 5,
    renderer: str = "shapes",
) -> dict[str, Path]:
    """Render a dataset to disk: PNG images, a COCO json and ODVG detection / grounding jsonl files.

    Args:
        out_dir: output folder (created if missing).
        num_images: number of images (samples ``0 .. num_images - 1``).
        split: see :class:`ShapesWorld`.
        image_size: side length, or ``(height, width)``.
        seed: random seed.
        min_objects: fewest objects per image.
        max_objects: most objects per image.
        renderer: ``"shapes"`` (:class:`ShapesWorld`) or ``"alt"`` (the second renderer,
            :class:`~openglip.data.shapes_alt.AltShapesWorld`, whose canvases vary in size).

    Returns:
        Paths under keys ``"images"`` (folder), ``"coco"``, ``"detection"``, ``"label_map"`` (the detection
        file's 48 categories, also those no image shows) and ``"grounding"``; file names in the records are
        relative to ``out_dir`` (``"images/000000.png"``).
    """
    from tqdm import tqdm

    from .odvg import write_label_map

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} is a file; give a directory for the dataset")
    (out / "images").mkdir(parents=True, exist_ok=True)
    if renderer not in ("shapes", "alt"):
        raise UsageError(f"renderer must be 'shapes' or 'alt', not {renderer!r}")
    from .shapes_alt import AltShapesWorld  # imported here: shapes_alt builds on this module

    world = (AltShapesWorld if renderer == "alt" else ShapesWorld)(
        split=split, image_size=image_size, min_objects=min_objects, max_objects=max_objects, seed=seed
    )
    images, anns, det_lines, grd_lines = [], [], [], []
    for index in tqdm(range(num_images), desc=f"{renderer}/{split}", disable=num_images <= 200):
        sample = world.sample(index)
        name = f"images/{index:06d}.png"
        Image.fromarray(sample.image).save(out / name, compress_level=1)
        image, entries = _coco_entries(sample, index + 1, name, len(anns) + 1)
        images.append(image)
        anns.extend(entries)
        det, grd = _odvg_records(sample, name)
        det_lines.append(json.dumps(det))
        grd_lines.extend(json.dumps(g) for g in grd)
    names = {
        "coco": "annotations.coco.json",
        "detection": "detection.odvg.jsonl",
        "grounding": "grounding.odvg.jsonl",
    }
    paths = {"images": out / "images", **{k: out / v for k, v in names.items()}}
    paths["label_map"] = write_label_map(paths["detection"], CATEGORIES)
    info = {"description": "OpenGLIP shapes world", "split": split, "seed": seed, "renderer": renderer}
    coco = {"info": info, "images": images, "annotations": anns, "categories": _coco_categories()}
    write_text_atomic(paths["coco"], json.dumps(coco))
    write_text_atomic(paths["detection"], "".join(line + "\n" for line in det_lines))
    write_text_atomic(paths["grounding"], "".join(line + "\n" for line in grd_lines))
    return paths
