"""The built-in synthetic grounding world "shapes": its vocabulary, split rule, samples and caption grammar.

Every image holds 1..5 objects named ``"{colour} {shape}"`` (48 categories); 8 colour/shape combinations
(:data:`NOVEL`) never appear in the ``"train"`` split, so a model trained on it can be tested zero-shot on them.
Each sample carries detection annotations (tight boxes of the visible masks) and grounding captions with
character spans. This module is the world's definition, shared by every renderer of it
(:data:`openglip.shapes.renderers.RENDERERS`: :class:`~openglip.shapes.render.ShapesWorld` and
:class:`~openglip.shapes.render_alt.AltShapesWorld`); how it looks is theirs.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import UsageError

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

SPLITS = {"train": 0, "val": 1, "test": 2, "all": 3}
_NOVEL_FRACTION = {"val": 0.4, "test": 0.4}  # "all" draws the 48 categories uniformly
_BASE_IDS = np.array([CATEGORIES.index(n) for n in BASE], dtype=np.int64)
_NOVEL_IDS = np.array([CATEGORIES.index(n) for n in NOVEL], dtype=np.int64)


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


class WorldRenderer:
    """What every renderer of the world takes: its settings, checked (one :class:`UsageError` per problem).
    A renderer subclasses it and draws ``sample(index) -> ShapesSample``.

    Args:
        split: ``"train"`` (only :data:`BASE` categories), ``"val"`` / ``"test"`` (all 48, about 40% of the
            objects novel) or ``"all"`` (all 48 drawn uniformly).
        image_size: side length, or ``(height, width)``; at least :attr:`min_side` px.
        min_objects: fewest objects per image (best effort: an object that finds no free place is skipped).
        max_objects: most objects per image.
        seed: non-negative random seed.
        vary_canvas: whether each image draws its own canvas size around ``image_size``; None: the renderer's
            default (:attr:`varies_canvas`).
    """

    min_side = 32  # the smallest image side the renderer draws
    varies_canvas = False  # the default of vary_canvas

    def __init__(
        self,
        *,
        split: str = "train",
        image_size: int | tuple[int, int] = 128,
        min_objects: int = 1,
        max_objects: int = 5,
        seed: int = 0,
        vary_canvas: bool | None = None,
    ) -> None:
        if split not in SPLITS:
            raise UsageError(f"shapes: split must be one of {sorted(SPLITS)}, not {split!r}")
        h, w = (int(image_size),) * 2 if np.ndim(image_size) == 0 else map(int, image_size)
        if min(h, w) < self.min_side:
            raise UsageError(f"shapes: the image size must be at least {self.min_side} px, got {(h, w)}")
        if not 1 <= min_objects <= max_objects:
            raise UsageError(
                f"shapes: need 1 <= min_objects <= max_objects, got {min_objects}, {max_objects}"
            )
        if seed < 0:
            raise UsageError(f"shapes: the seed must be 0 or more, got {seed}")
        self.split, self.height, self.width = split, h, w
        self.min_objects, self.max_objects, self.seed = min_objects, max_objects, seed
        self.vary_canvas = self.varies_canvas if vary_canvas is None else vary_canvas


def _phrases(rng: np.random.Generator, labels: np.ndarray, sizes: list[str], p_size: float) -> list[str]:
    """Per object ``"[size] colour shape"``; the size word is used when the category repeats, else at random."""
    out = []
    for i, label in enumerate(labels):
        repeated = int((labels == label).sum()) > 1
        name = CATEGORIES[int(label)]
        out.append(f"{sizes[i]} {name}" if repeated or rng.random() < p_size else name)
    return out


def relation_holds(rel: str, ref: np.ndarray, anchor: np.ndarray, margin: float) -> bool:
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
        (i, j, r) for i, j in pairs for r in RELATIONS if relation_holds(r, centres[i], centres[j], margin)
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
