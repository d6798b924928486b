"""Datasets and batching for GLIPv2's understanding tasks (VQA and captioning), from files or the shapes world.

Items are addressed by ``(epoch, index)`` keys and every random choice comes from a generator seeded with
``(seed, epoch, index)``, as in :mod:`openglip.data.datasets`: a resumed run replays the same items exactly.
No horizontal flip is applied: it would falsify "left of" questions and left-to-right captions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from ..images import load_image
from ..prompts import load_tokenizer
from ..vl_metrics import answer_scores
from .datasets import item_rng


class _RecordDataset(Dataset):
    """Items made from a list of records, with a training transform and the model-input conversion."""

    def __init__(self, records: Sequence, *, transform, to_tensor, seed: int = 0):
        self.records = list(records)
        self.transform, self.to_tensor, self.seed = transform, to_tensor, seed

    def __len__(self) -> int:
        return len(self.records)


class VQADataset(_RecordDataset):
    """VQA records (:class:`VQARecord`) as ``(image tensor, {"question", "answers", "question_type",
    "image_id"})`` items."""

    def __getitem__(self, key):
        epoch, index = key if isinstance(key, tuple) else (0, key)
        rec = self.records[index]
        image, _ = load_image(rec.file_name)
        target = {"question": rec.question, "answers": list(rec.answers), "question_type": rec.question_type,
                  "image_id": rec.image_id, "boxes": np.zeros((0, 4), np.float32), "caption": rec.question,
                  "spans": []}  # fmt: skip
        if self.transform is not None:
            image, target = self.transform(image, target, item_rng(self.seed, epoch, index))
        return self.to_tensor(image), target


class CaptionDataset(_RecordDataset):
    """Caption records (:class:`CaptionRecord`) as ``(image tensor, {"caption", "boxes" (0, 4), "spans": []})``
    items; each item uses one of the image's reference captions, drawn at random."""

    def __getitem__(self, key):
        epoch, index = key if isinstance(key, tuple) else (0, key)
        rec = self.records[index]
        rng = item_rng(self.seed, epoch, index)
        image, _ = load_image(rec.file_name)
        caption = rec.captions[int(rng.integers(len(rec.captions)))]
        target = {
            "caption": caption,
            "boxes": np.zeros((0, 4), np.float32),
            "spans": [],
            "image_id": rec.image_id,
        }
        if self.transform is not None:
            image, target = self.transform(image, target, rng)
        return self.to_tensor(image), target


@dataclass
class VQABatch:
    """A VQA training batch.

    Attributes:
        pixel_values: (B, 3, H, W) normalised, zero-padded.
        image_sizes: (h, w) of each image before padding.
        input_ids, attention_mask: (B, T) tokenized questions.
        scores: (B, A) soft answer scores over the answer vocabulary.
        question_types: the question kinds.
    """

    pixel_values: torch.Tensor
    image_sizes: list[tuple[int, int]]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    scores: torch.Tensor
    question_types: list[str]

    def __len__(self) -> int:
        return len(self.image_sizes)

    def to(self, device) -> VQABatch:
        return VQABatch(self.pixel_values.to(device, non_blocking=True), self.image_sizes,
                        self.input_ids.to(device), self.attention_mask.to(device), self.scores.to(device),
                        self.question_types)  # fmt: skip


def pad_images(
    images: Sequence[torch.Tensor], divisibility: int
) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """(3, h, w) tensors -> zero-padded (B, 3, H, W) with H, W multiples of ``divisibility``, and the sizes."""
    sizes = [(int(im.shape[1]), int(im.shape[2])) for im in images]
    H = -(-max(h for h, _ in sizes) // divisibility) * divisibility
    W = -(-max(w for _, w in sizes) // divisibility) * divisibility
    out = images[0].new_zeros(len(images), 3, H, W)
    for b, im in enumerate(images):
        out[b, :, : im.shape[1], : im.shape[2]] = im
    return out, sizes


class VQACollate:
    """Pads images, tokenizes questions, turns each question's human answers into soft scores over ``vocab``
    (answers outside the vocabulary get no target, as in VQAv2 training)."""

    def __init__(self, vocab: Sequence[str], *, size_divisibility: int = 32, max_text_len: int = 256):
        self.index = {a: i for i, a in enumerate(vocab)}
        self.size_divisibility, self.max_text_len = size_divisibility, max_text_len

    def __call__(self, items) -> VQABatch:
        pixel_values, sizes = pad_images([im for im, _ in items], self.size_divisibility)
        enc = load_tokenizer()([t["question"] for _, t in items], padding="longest", truncation=True,
                               max_length=self.max_text_len, return_tensors="pt")  # fmt: skip
        scores = torch.zeros(len(items), len(self.index))
        for b, (_, t) in enumerate(items):
            for answer, score in answer_scores(t["answers"]).items():
                if answer in self.index:
                    scores[b, self.index[answer]] = score
        types = [t.get("question_type", "") for _, t in items]
        return VQABatch(pixel_values, sizes, enc["input_ids"], enc["attention_mask"], scores, types)
