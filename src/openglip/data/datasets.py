"""Training/evaluation datasets: detection data become grounding data, grounding data keep their captions.

Every item is ``(image tensor (3, h, w), target dict)`` where the target holds ``boxes`` (M, 4) in the
resized image, the ``caption`` and, per box, its character ``spans`` in the caption. Items are addressed by
``(epoch, index)`` keys (see :class:`openglip.engine.sampler.ResumableSampler`) and all randomness of an item
comes from a generator seeded with ``(seed, epoch, index)``: a resumed run replays every augmentation and
every sampled negative exactly, whatever the number of data-loader workers.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..errors import DataError
from ..images import load_image
from ..prompts import SEPARATOR, Prompt, build_prompt, load_tokenizer, normalize_phrase
from .masks import decode_masks
from .records import ImageRecord


def item_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, index])


@functools.lru_cache(maxsize=65536)
def _token_cost(name: str) -> int:
    """Tokens a category name takes in a prompt, its separator included (cached: the data loader asks for
    ~90 names per item, and tokenizing them was a tenth of a training item's CPU time)."""
    return len(load_tokenizer()(name, add_special_tokens=False)["input_ids"]) + 1


def detection_prompt(
    positives: Sequence[int],
    categories: Sequence[str],
    rng: np.random.Generator,
    *,
    candidates: Sequence[int] | None = None,
    num_negatives: int = 85,
    max_tokens: int = 256,
) -> tuple[str, dict[int, tuple[int, int]]]:
    """GLIP's detection -> grounding conversion.

    The prompt lists the image's classes plus up to ``num_negatives`` other classes sampled from
    ``candidates`` (default: all), in random order, joined by ". ". Negatives are dropped first if the prompt
    would exceed ``max_tokens`` tokens; positives are only dropped if they alone do not fit.

    Returns:
        (caption, {category index: (start, end) character span}) for the classes in the caption.
    """
    pos = list(dict.fromkeys(int(p) for p in positives))
    pool = [c for c in (range(len(categories)) if candidates is None else candidates) if c not in set(pos)]
    k = min(num_negatives, len(pool))
    negs = [int(x) for x in rng.choice(pool, size=k, replace=False)] if k > 0 else []
    cost = {c: _token_cost(categories[c]) for c in pos + negs}
    budget = max_tokens - 2  # [CLS] and [SEP]
    rng.shuffle(pos)
    kept_pos, used = [], 0
    for c in pos:
        if used + cost[c] <= budget:
            kept_pos.append(c)
            used += cost[c]
    kept_neg = []
    for c in negs:
        if used + cost[c] <= budget:
            kept_neg.append(c)
            used += cost[c]
    order = kept_pos + kept_neg
    rng.shuffle(order)
    caption, spans = "", {}
    for i, c in enumerate(order):
        start = len(caption)
        caption += categories[c]
        spans[c] = (start, len(caption))
        if i < len(order) - 1:
            caption += SEPARATOR
    return caption, spans


class GroundingDataset(Dataset):
    """Detection and grounding records as grounding examples.

    Args:
        records: from the readers in :mod:`openglip.data` (detection and/or grounding records).
        categories: category names (for detection records).
        transform: ``(image, target, rng) -> (image, target)`` joint transform (resize/flip/jitter).
        to_tensor: ``PIL image -> (3, h, w)`` normalisation of the model.
        negative_categories: category indices allowed as negatives (e.g. base classes only); default all.
        num_negatives: negatives sampled into a detection prompt (GLIP-T: 85).
        seed: base seed of the per-item generators.
        fixed_prompt: detection records always use every category in order, no sampling or shuffling
            (downstream fine-tuning and prompt tuning, whose offset is tied to one prompt's tokens); a
            :class:`~openglip.prompts.Prompt` with one phrase per category is used as that prompt.
        with_masks: decode the records' segmentations into ``masks`` (for models with a mask head).
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        categories: Sequence[str],
        *,
        transform,
        to_tensor,
        negative_categories: Sequence[int] | None = None,
        num_negatives: int = 85,
        max_tokens: int = 256,
        seed: int = 0,
        fixed_prompt=False,
        with_masks: bool = False,
    ):
        self.records = list(records)
        self.with_masks = with_masks
        if any(not rec.is_grounding for rec in self.records):
            unnamed = [i for i, c in enumerate(categories) if not str(c).strip()]
            if unnamed:
                raise DataError(
                    f"categories {unnamed[:10]} have no name, so detection prompts cannot name them; give every "
                    "category a name (COCO 'categories', an ODVG label map or 'category' fields)"
                )
        self.fixed = None
        if fixed_prompt:
            if isinstance(fixed_prompt, Prompt):  # the task's own wording (one phrase per category, in order)
                self.fixed = (fixed_prompt.caption, {i: sp[0] for i, sp in enumerate(fixed_prompt.spans)})
            else:
                p = build_prompt(list(categories))
                # categories with the same name share that name's one phrase in the prompt
                span_of = {normalize_phrase(ph): sp[0] for ph, sp in zip(p.phrases, p.spans)}
                self.fixed = (p.caption, {i: span_of[normalize_phrase(c)] for i, c in enumerate(categories)})
        self.categories = list(categories)
        self.transform = transform
        self.to_tensor = to_tensor
        self.negative_categories = None if negative_categories is None else list(negative_categories)
        self.num_negatives = num_negatives
        self.max_tokens = max_tokens
        self.seed = seed

    def __len__(self) -> int:
        return len(self.records)

    def record(self, index: int) -> ImageRecord:
        """Record ``index`` (a subclass may read it from elsewhere, e.g. shards)."""
        return self.records[index]

    def image(self, index: int, record: ImageRecord) -> Image.Image:
        """The RGB image of record ``index``."""
        return load_image(record.file_name)[0]

    def example(self, index: int, rng: np.random.Generator) -> tuple[Image.Image, dict]:
        """The untransformed (image, target) of record ``index``."""
        rec = self.record(index)
        image = self.image(index, rec)
        if (image.height, image.width) != (rec.height, rec.width) and rec.height and rec.width:
            # annotations are in the recorded size; keep boxes consistent if the file differs
            sx, sy = image.width / rec.width, image.height / rec.height
            boxes = rec.boxes * np.array([sx, sy, sx, sy], dtype=np.float32)
        else:
            boxes = rec.boxes.copy()
        if rec.is_grounding:
            target = {"boxes": boxes, "caption": rec.caption, "spans": [list(s) for s in rec.spans]}
            target["labels"] = np.full(len(boxes), -1, dtype=np.int64)
        elif self.fixed is not None:
            caption, spans = self.fixed
        else:
            caption, spans = detection_prompt(
                rec.labels.tolist(),
                self.categories,
                rng,
                candidates=self.negative_categories,
                num_negatives=self.num_negatives,
                max_tokens=self.max_tokens,
            )
        masks = None
        if self.with_masks and rec.masks is not None:
            masks = decode_masks(rec.masks, rec.height or image.height, rec.width or image.width)
            if masks.shape[1:] != (image.height, image.width):
                masks = np.stack(
                    [np.asarray(Image.fromarray(m).resize(image.size, Image.NEAREST)) for m in masks]
                )
        if not rec.is_grounding:
            keep = np.array([int(lab) in spans for lab in rec.labels], dtype=bool)
            boxes = boxes[keep]
            masks = None if masks is None else masks[keep]
            labels = rec.labels[keep]
            target = {"boxes": boxes, "caption": caption, "spans": [[spans[int(lab)]] for lab in labels]}
            target["labels"] = labels.copy()
            target["phrase_spans"] = [(self.categories[c], span) for c, span in spans.items()]
        if masks is not None:
            target["masks"] = masks
        target["image_id"] = rec.image_id
        return image, target

    def __getitem__(self, key) -> tuple[torch.Tensor, dict]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        rng = item_rng(self.seed, epoch, index)
        image, target = self.example(index, rng)
        target["orig_size"] = (image.height, image.width)
        if self.transform is not None:
            image, target = self.transform(image, target, rng)
        return self.to_tensor(image), target
