"""RegionCLIP's data: image-caption pairs (concept pool, teacher, pretraining) and box-annotated images with a
base/novel category split (RPN, transfer, evaluation).

One data path: the readers return records (:class:`CaptionPair`, :class:`BoxRecord`) whose ``image`` is a file
path or an array, and the datasets load either. User files go through the core readers
(:func:`openglip.data.captions.read_caption_pairs`, :func:`openglip.data.coco.read_coco`,
:mod:`openglip.data.splits`); without a file, the built-in shapes world yields the same records (rendered when
an item is read), so the shapes demo and a user's data take the same code.

Dataset items are addressed by ``(epoch, index)`` keys; everything random about an item comes from
``item_rng(seed, epoch, index)``, so a resumed run sees the same items (see :mod:`openglip.data.datasets`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..data.captions import read_caption_pairs
from ..data.coco import coco_category_info, coco_ground_truth, read_coco
from ..data.datasets import item_rng
from ..data.splits import apply_category_split, check_category_split, read_category_split
from ..errors import DataError, UsageError
from ..images import load_image
from ..shapes import ShapesWorld, to_coco
from .features import image_to_tensor
from .proposals import random_crops

CAPTION_KINDS = ("listing", "referring", "random")


# -- records --------------------------------------------------------------------------------------------------


@dataclass
class CaptionPair:
    """An image (path or ``(H, W, 3)`` uint8 array) and one caption of it: RegionCLIP trains on pairs, where the
    core's :class:`openglip.data.captions.CaptionRecord` is an image file with all its reference captions."""

    image: object
    caption: str
    image_id: int = 0


@dataclass
class BoxRecord:
    """An image with its boxes ``(K, 4)`` xyxy px of the original image and ``labels (K,)`` indexing the
    categories of its :class:`DetectionData`."""

    image: object
    boxes: np.ndarray
    labels: np.ndarray
    image_id: int = 0
    size: tuple[int, int] | None = None  # (height, width) when known without opening the image


class LazyRecords(Sequence):
    """``n`` records made on access by ``make(i)`` (the shapes world renders an image only when it is read)."""

    def __init__(self, n: int, make: Callable[[int], object]):
        self.n, self.make = n, make

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self.make(k) for k in range(*i.indices(self.n))]
        if not -self.n <= i < self.n:
            raise IndexError(i)
        return self.make(i % self.n)


@dataclass
class DetectionData:
    """Box-annotated images and their categories.

    Attributes:
        records: one :class:`BoxRecord` per image.
        categories: COCO category dicts sorted by id (``id``, ``name`` and, when known, ``"split"``
            base/novel and ``"frequency"`` r/c/f); labels index this list.
        source: where the data came from (a file, or ``"shapes/<split>"``).
    """

    records: Sequence[BoxRecord]
    categories: list[dict]
    source: str = ""
    skipped: dict = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [c["name"] for c in self.categories]

    def split_names(self, split: str) -> list[str]:
        """Names of the categories in ``split``; for ``"base"`` every category when the data carry no split."""
        if split == "base" and not any("split" in c for c in self.categories):
            return self.names
        return [c["name"] for c in self.categories if c.get("split") == split]

    def coco(self, num_images: int | None = None) -> tuple[dict, list]:
        """``(COCO ground-truth dict, images)`` of the first ``num_images`` records (image ids 1..n, the
        categories with their splits), for :func:`openglip.engine.evaluate.evaluate_detection`."""

        n = len(self.records) if num_images is None else min(num_images, len(self.records))
        images, sources = [], []
        for i in range(n):
            rec = self.records[i]
            h, w = rec.size or load_image(rec.image)[1]
            name = str(rec.image) if isinstance(rec.image, (str, os.PathLike)) else f"{i:06d}.png"
            cat_ids = [self.categories[label]["id"] for label in rec.labels.tolist()]
            images.append(
                {"id": i + 1, "file_name": name, "height": h, "width": w, "boxes": rec.boxes.tolist(),
                 "category_ids": cat_ids}
            )  # fmt: skip
            sources.append(rec.image)
        return coco_ground_truth(images, self.categories), sources


# -- readers --------------------------------------------------------------------------------------------------


def read_caption_data(
    path: str | os.PathLike, image_root: str | os.PathLike | None = None
) -> list[CaptionPair]:
    """Image-caption pairs from a caption JSONL or a COCO Captions JSON file (bad records skipped and logged).

    Raises:
        DataError: the file is missing or malformed, or holds no usable pair.
    """

    pairs, _ = read_caption_pairs(path, image_root or None)
    return [CaptionPair(p, c, k + 1) for k, (p, c) in enumerate(pairs)]


def read_detection_data(
    path: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    *,
    split_file: str | os.PathLike = "",
) -> DetectionData:
    """COCO detection JSON with its category split (from the categories' ``"split"`` or from ``split_file``).

    Raises:
        DataError: the file or split file is missing or malformed, the split names an unknown category, no
            category is base, or no image is usable.
    """

    categories = coco_category_info(path)
    if split_file:
        categories = apply_category_split(categories, read_category_split(split_file), where=str(split_file))
    check_category_split(categories, where=str(split_file or path))
    records, _, report = read_coco(path, image_root or None)
    if not records:
        raise DataError(f"{path}: no usable image ({report.detail() or 'the file lists no image'})")
    boxes = [
        BoxRecord(r.file_name, r.boxes, r.labels, k + 1, (r.height, r.width)) for k, r in enumerate(records)
    ]
    return DetectionData(boxes, categories, str(path), dict(report.counts))


def shapes_caption_data(
    num_images: int,
    *,
    image_size: int = 128,
    min_objects: int = 1,
    max_objects: int = 5,
    seed: int = 0,
    caption: str = "listing",
) -> Sequence[CaptionPair]:
    """The built-in caption corpus: shapes images of split "all" (novel combinations included) with a listing
    (``"a red hexagon and a small blue star."``), a referring, or a random one of the two captions."""

    if caption not in CAPTION_KINDS:
        raise UsageError(f"caption must be one of {CAPTION_KINDS}, not {caption!r}")
    world = ShapesWorld(
        split="all", image_size=image_size, min_objects=min_objects, max_objects=max_objects, seed=seed
    )

    def make(i: int) -> CaptionPair:
        sample = world.sample(i)
        which = {"referring": 0, "listing": 1}.get(caption, int(item_rng(seed + 1, 0, i).integers(2)))
        text = sample.captions[which].caption if sample.captions else ""  # an image where no object fit
        return CaptionPair(sample.image, text, i + 1)

    return LazyRecords(num_images, make)


def shapes_detection_data(
    num_images: int, *, split: str = "train", image_size: int = 128, max_objects: int = 5, seed: int = 0
) -> DetectionData:
    """The built-in detection data: shapes images with the 48 categories and their base/novel split (the "train"
    split holds base objects only; "val" 40% novel ones)."""

    world = ShapesWorld(split=split, image_size=image_size, max_objects=max_objects, seed=seed)

    def make(i: int) -> BoxRecord:
        s = world.sample(i)
        return BoxRecord(s.image, s.boxes, s.labels, i + 1, s.image.shape[:2])

    return DetectionData(LazyRecords(num_images, make), to_coco([], [])["categories"], f"shapes/{split}")


# -- datasets -------------------------------------------------------------------------------------------------


@dataclass
class RegionItem:
    """One image: normalised ``image (3, H, W)``, its ``caption``, ``boxes (K, 4)`` xyxy px, ``labels (K,)``."""

    image: torch.Tensor
    caption: str = ""
    boxes: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 4))
    labels: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))
    image_id: int = 0


@dataclass
class RegionBatch:
    """A batch of :class:`RegionItem`.

    Attributes:
        images: ``(B, 3, H, W)`` normalised, zero (grey) padded at the bottom/right.
        captions: ``B`` captions.
        boxes: ``B`` tensors ``(K_i, 4)`` (ground truth or random regions; empty when unused).
        labels: ``B`` tensors ``(K_i,)``.
        image_ids: ``B`` ids.
    """

    images: torch.Tensor
    captions: list[str]
    boxes: list[torch.Tensor]
    labels: list[torch.Tensor]
    image_ids: list[int]

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device) -> RegionBatch:
        return RegionBatch(
            self.images.to(device),
            self.captions,
            [b.to(device) for b in self.boxes],
            [t.to(device) for t in self.labels],
            self.image_ids,
        )


def collate_regions(items: Sequence[RegionItem]) -> RegionBatch:
    """Stack items into a :class:`RegionBatch` (images of different sizes are padded)."""
    h = max(it.image.shape[1] for it in items)
    w = max(it.image.shape[2] for it in items)
    images = torch.zeros(len(items), 3, h, w)
    for i, it in enumerate(items):
        images[i, :, : it.image.shape[1], : it.image.shape[2]] = it.image
    return RegionBatch(
        images,
        [it.caption for it in items],
        [it.boxes for it in items],
        [it.labels for it in items],
        [it.image_id for it in items],
    )


def load_resized(source, image_size: int) -> tuple[torch.Tensor, float]:
    """``(normalised (3, h, w) tensor, scale)``: the image resized so that its longer side is ``image_size``."""
    image, _ = load_image(source)
    scale = image_size / max(image.width, image.height)
    if scale != 1.0:
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.BILINEAR)
    return image_to_tensor(np.array(image)), scale


def _key(key) -> tuple[int, int]:
    return key if isinstance(key, tuple) else (0, key)


class RegionCaptionDataset(Dataset):
    """Image-caption pairs for the teacher and pretraining, as :class:`RegionItem` s (resized image, caption and,
    for the crops ablation, random regions); the core's :class:`openglip.data.vl_datasets.CaptionDataset` feeds
    the GLIP caption task instead.

    Args:
        records: :class:`CaptionPair` s (from :func:`read_caption_data` or :func:`shapes_caption_data`).
        image_size: longer image side.
        random_regions: when > 0, every item carries this many :func:`random_crops` as its ``boxes``.
        seed: seeds the per-item random regions.
    """

    def __init__(
        self, records: Sequence[CaptionPair], *, image_size: int, random_regions: int = 0, seed: int = 0
    ):
        if len(records) == 0:
            raise DataError("no image-caption pairs to train on")
        self.records, self.image_size, self.random_regions, self.seed = (
            records,
            image_size,
            random_regions,
            seed,
        )

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key) -> RegionItem:
        epoch, index = _key(key)
        rec = self.records[index]
        image, _ = load_resized(rec.image, self.image_size)
        item = RegionItem(image, rec.caption, image_id=rec.image_id)
        if self.random_regions:
            h, w = image.shape[1:]
            rng = item_rng(self.seed + 1, epoch, index)
            item.boxes = torch.from_numpy(random_crops(h, w, self.random_regions, rng))
        return item


class BoxDataset(Dataset):
    """Box-annotated images for the RPN and the detector.

    Args:
        data: the images and categories.
        classes: the category names the labels index (default: the base categories); boxes of other categories
            are dropped, so their objects count as background, as unannotated novel objects do in OV-COCO.
        image_size: longer image side.
    """

    def __init__(self, data: DetectionData, *, classes: Sequence[str] | None = None, image_size: int):
        classes = list(data.split_names("base") if classes is None else classes)
        unknown = sorted(set(classes) - set(data.names))
        if unknown:
            raise UsageError(f"not categories of {data.source}: {unknown[:5]}")
        if not classes:
            raise DataError(f"{data.source}: no base category to train on")
        self.data, self.classes, self.image_size = data, classes, image_size
        # category index -> class index (-1: not a class)
        self.to_class = np.array(
            [classes.index(n) if n in classes else -1 for n in data.names], dtype=np.int64
        )

    def __len__(self) -> int:
        return len(self.data.records)

    def __getitem__(self, key) -> RegionItem:
        _, index = _key(key)
        rec = self.data.records[index]
        image, scale = load_resized(rec.image, self.image_size)
        labels = self.to_class[np.asarray(rec.labels, dtype=np.int64)]
        keep = labels >= 0
        boxes = torch.from_numpy(np.asarray(rec.boxes, dtype=np.float32)[keep] * scale).reshape(-1, 4)
        return RegionItem(image, "", boxes, torch.from_numpy(labels[keep]), rec.image_id)
