"""The shapes world as training sets: detection/grounding items (:class:`ShapesDataset`), questions
(:class:`ShapesVQADataset`) and grounded whole-image captions (:class:`ShapesCaptionDataset`).

Items are addressed by ``(epoch, index)`` keys as in :mod:`openglip.data.datasets`, and every random choice comes
from a generator seeded with ``(seed, epoch, index)``: a resumed run replays the same items exactly.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..data.datasets import detection_prompt, item_rng
from .language import sample_question, shapes_caption
from .render import ShapesWorld
from .world import BASE, CATEGORIES, ShapesSample


class _WorldItems(Dataset):
    """Items drawn from a shapes world: ``(epoch, index)`` keys, the sample of each (a fresh rendering,
    ``epoch * size + index``, unless ``fresh_each_epoch`` is off) and its transform to a tensor."""

    def __init__(
        self, world: ShapesWorld, *, size: int, transform, to_tensor, seed: int, fresh_each_epoch: bool
    ):
        self.world, self.size, self.seed = world, size, seed
        self.transform, self.to_tensor, self.fresh_each_epoch = transform, to_tensor, fresh_each_epoch

    def __len__(self) -> int:
        return self.size

    def _sample(self, key) -> tuple[int, int, int, ShapesSample]:
        """``(epoch, index, world_index, sample)`` of an item key (``(epoch, index)`` or ``index``)."""
        epoch, index = key if isinstance(key, tuple) else (0, key)
        world_index = epoch * self.size + index if self.fresh_each_epoch else index
        return epoch, index, world_index, self.world.sample(world_index)

    def _finish(
        self, image: Image.Image, target: dict, rng: np.random.Generator
    ) -> tuple[torch.Tensor, dict]:
        if self.transform is not None:
            image, target = self.transform(image, target, rng)
        return self.to_tensor(image), target


class ShapesDataset(_WorldItems):
    """The built-in shapes world as an (effectively endless) training set.

    Each item is a fresh rendering (``epoch * size + index``). With probability ``grounding_ratio`` the item
    uses one of the image's captions (referring or listing), otherwise a detection prompt over
    ``negative_categories`` (the base classes for open-vocabulary training).
    """

    def __init__(
        self,
        *,
        size: int,
        transform,
        to_tensor,
        split: str = "train",
        image_size: int = 128,
        grounding_ratio: float = 0.3,
        num_negatives: int = 85,
        seed: int = 0,
        fresh_each_epoch: bool = True,
        max_objects: int = 5,
        with_masks: bool = False,
    ):
        world = ShapesWorld(split=split, image_size=image_size, seed=seed, max_objects=max_objects)
        super().__init__(world, size=size, transform=transform, to_tensor=to_tensor, seed=seed,
                         fresh_each_epoch=fresh_each_epoch)  # fmt: skip
        self.grounding_ratio = grounding_ratio
        self.num_negatives = num_negatives
        self.categories = list(CATEGORIES)
        self.negative_categories = [CATEGORIES.index(n) for n in BASE] if split == "train" else None
        self.with_masks = with_masks

    def __getitem__(self, key) -> tuple[torch.Tensor, dict]:
        epoch, index, world_index, sample = self._sample(key)
        rng = item_rng(self.seed + 1, epoch, index)
        image = Image.fromarray(sample.image)
        if sample.captions and rng.random() < self.grounding_ratio:
            cap = sample.captions[int(rng.integers(len(sample.captions)))]
            idx = [r["box_index"] for r in cap.regions]
            target = {
                "boxes": sample.boxes[idx].copy(),
                "masks": sample.masks[idx].copy() if self.with_masks else None,
                "caption": cap.caption,
                "spans": [[tuple(s) for s in r["tokens_positive"]] for r in cap.regions],
                "labels": sample.labels[idx].copy(),
            }
        else:
            caption, spans = detection_prompt(
                sample.labels.tolist(),
                self.categories,
                rng,
                candidates=self.negative_categories,
                num_negatives=self.num_negatives,
            )
            target = {
                "boxes": sample.boxes.copy(),
                "masks": sample.masks.copy() if self.with_masks else None,
                "caption": caption,
                "spans": [[spans[int(lab)]] for lab in sample.labels],
                "labels": sample.labels.copy(),
                "phrase_spans": [(self.categories[c], span) for c, span in spans.items()],
            }
        target["image_id"] = world_index
        target["orig_size"] = (image.height, image.width)
        return self._finish(image, target, rng)


class ShapesVQADataset(_WorldItems):
    """The shapes world's questions: each item renders a fresh sample and asks one question about it (see
    :mod:`openglip.shapes.language`)."""

    def __init__(self, *, size: int, transform, to_tensor, split: str = "train", image_size: int = 128,
                 seed: int = 0, fresh_each_epoch: bool = True):  # fmt: skip
        world = ShapesWorld(split=split, image_size=image_size, seed=seed)
        super().__init__(world, size=size, transform=transform, to_tensor=to_tensor, seed=seed,
                         fresh_each_epoch=fresh_each_epoch)  # fmt: skip
        self.split = split

    def __getitem__(self, key):
        epoch, index, world_index, sample = self._sample(key)
        rng = item_rng(self.seed + 2, epoch, index)
        question, answer, kind = sample_question(sample, rng, allow_novel=self.split != "train")
        target = {"question": question, "answers": [answer], "question_type": kind, "image_id": world_index,
                  "boxes": np.zeros((0, 4), np.float32), "caption": question, "spans": []}  # fmt: skip
        return self._finish(Image.fromarray(sample.image), target, rng)


class ShapesCaptionDataset(_WorldItems):
    """The shapes world's whole-image captions with the boxes of their phrases (grounded captions: the caption
    task can also train the grounding head on them)."""

    def __init__(self, *, size: int, transform, to_tensor, split: str = "train", image_size: int = 128,
                 seed: int = 0, fresh_each_epoch: bool = True):  # fmt: skip
        world = ShapesWorld(split=split, image_size=image_size, seed=seed)
        super().__init__(world, size=size, transform=transform, to_tensor=to_tensor, seed=seed,
                         fresh_each_epoch=fresh_each_epoch)  # fmt: skip

    def __getitem__(self, key):
        epoch, index, world_index, sample = self._sample(key)
        caption, regions = shapes_caption(sample)
        idx = [r["box_index"] for r in regions]
        target = {"caption": caption, "boxes": sample.boxes[idx].copy(), "labels": sample.labels[idx].copy(),
                  "spans": [[tuple(s) for s in r["tokens_positive"]] for r in regions], "image_id": world_index}  # fmt: skip
        return self._finish(Image.fromarray(sample.image), target, item_rng(self.seed + 3, epoch, index))
