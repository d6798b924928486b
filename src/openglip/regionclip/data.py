"""RegionCLIP's data on the shapes world: image-caption pairs (the "web" corpus; captions name every category,
novel ones included) and box-annotated images (the "train" split: base categories only).

Items are addressed by ``(epoch, index)`` keys; everything random about an item comes from
``item_rng(seed, epoch, index)``, so a resumed run sees the same items (see :mod:`openglip.data.datasets`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset

from ..data.datasets import item_rng
from ..data.shapes import CATEGORIES, ShapesWorld
from ..errors import UsageError
from .features import image_to_tensor
from .proposals import random_crops

CAPTION_KINDS = ("listing", "referring", "random")


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


class _ShapesStream(Dataset):
    """An (effectively endless) shapes stream: item ``(epoch, index)`` renders world sample ``epoch * size + index``
    (or ``index`` when ``fresh_each_epoch`` is off)."""

    def __init__(self, world: ShapesWorld, *, size: int, seed: int, fresh_each_epoch: bool):
        if size < 1:
            raise UsageError(f"dataset size must be at least 1, got {size}")
        self.world, self.size, self.seed, self.fresh_each_epoch = world, size, seed, fresh_each_epoch

    def __len__(self) -> int:
        return self.size

    def _key(self, key) -> tuple[int, int, int]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        return epoch, index, epoch * self.size + index if self.fresh_each_epoch else index


class ShapesCaptions(_ShapesStream):
    """Image-caption pairs of the shapes world (box annotations are not exposed).

    Args:
        size: items per (virtual) epoch.
        split: shapes split (``"all"``: every category, novel ones included).
        image_size: image side.
        min_objects, max_objects: objects per image.
        seed: shapes seed (also seeds the per-item generators).
        caption: ``"listing"`` (``"a red hexagon and a small blue star."``), ``"referring"`` or ``"random"``.
        random_regions: when > 0, every item carries this many :func:`random_crops` as its ``boxes``.
        fresh_each_epoch: render new images every epoch.
    """

    def __init__(
        self,
        *,
        size: int,
        split: str = "all",
        image_size: int = 128,
        min_objects: int = 1,
        max_objects: int = 5,
        seed: int = 0,
        caption: str = "listing",
        random_regions: int = 0,
        fresh_each_epoch: bool = True,
    ):
        if caption not in CAPTION_KINDS:
            raise UsageError(f"caption must be one of {CAPTION_KINDS}, not {caption!r}")
        world = ShapesWorld(
            split=split, image_size=image_size, min_objects=min_objects, max_objects=max_objects, seed=seed
        )
        super().__init__(world, size=size, seed=seed, fresh_each_epoch=fresh_each_epoch)
        self.caption, self.random_regions = caption, random_regions

    def __getitem__(self, key) -> RegionItem:
        epoch, index, world_index = self._key(key)
        rng = item_rng(self.seed + 1, epoch, index)
        sample = self.world.sample(world_index)
        which = {"referring": 0, "listing": 1}.get(self.caption, int(rng.integers(2)))
        caption = sample.captions[which].caption if sample.captions else ""  # an image where no object fit
        item = RegionItem(image_to_tensor(sample.image), caption, image_id=world_index)
        if self.random_regions:
            h, w = sample.image.shape[:2]
            item.boxes = torch.from_numpy(random_crops(h, w, self.random_regions, rng))
        return item


class ShapesBoxes(_ShapesStream):
    """Box-annotated shapes images for the RPN and the detector.

    Args:
        size: items per (virtual) epoch.
        classes: the category names the labels index (default: all 48); boxes of other categories are dropped.
        split: shapes split (``"train"``: base categories only).
        image_size, max_objects, seed, fresh_each_epoch: as in :class:`ShapesCaptions`.
    """

    def __init__(
        self,
        *,
        size: int,
        classes: Sequence[str] | None = None,
        split: str = "train",
        image_size: int = 128,
        max_objects: int = 5,
        seed: int = 0,
        fresh_each_epoch: bool = True,
    ):
        world = ShapesWorld(split=split, image_size=image_size, max_objects=max_objects, seed=seed)
        super().__init__(world, size=size, seed=seed, fresh_each_epoch=fresh_each_epoch)
        classes = list(CATEGORIES if classes is None else classes)
        unknown = sorted(set(classes) - set(CATEGORIES))
        if unknown:
            raise UsageError(f"not shapes categories: {unknown}")
        # category index -> class index (-1: not a class)
        self.to_class = np.array(
            [classes.index(n) if n in classes else -1 for n in CATEGORIES], dtype=np.int64
        )

    def __getitem__(self, key) -> RegionItem:
        _, _, world_index = self._key(key)
        sample = self.world.sample(world_index)
        labels = self.to_class[sample.labels]
        keep = labels >= 0
        return RegionItem(
            image_to_tensor(sample.image),
            sample.captions[1].caption if sample.captions else "",
            torch.from_numpy(sample.boxes[keep].copy()),
            torch.from_numpy(labels[keep]),
            world_index,
        )
