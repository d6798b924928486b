"""``Detections``: what a detector returns for one image."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass
class Detections:
    """Boxes grounded to phrases, for one image.

    Attributes:
        xyxy: (N, 4) float32 boxes, x1 y1 x2 y2 in original image pixels.
        scores: (N,) float32 confidences in [0, 1].
        labels: (N,) int64 index of each box's phrase in ``prompt_phrases``.
        phrases: (N,) the phrase each box grounds (object array of str).
        masks: optional (N, H, W) bool instance masks.
        prompt_phrases: all phrases of the prompt, so that ``labels`` can be read.
        image_size: (height, width) of the original image.

    Supports ``len``, boolean/integer indexing (``dets[dets.scores > 0.5]``), ``to_coco`` and
    ``to_supervision``.
    """

    xyxy: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    phrases: np.ndarray
    masks: np.ndarray | None = None
    prompt_phrases: tuple[str, ...] = field(default=())
    image_size: tuple[int, int] | None = None

    def __post_init__(self):
        self.xyxy = np.asarray(self.xyxy, dtype=np.float32).reshape(-1, 4)
        n = len(self.xyxy)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        phrases = np.empty(len(self.phrases), dtype=object)
        phrases[:] = list(self.phrases)
        self.phrases = phrases
        for name, arr in (("scores", self.scores), ("labels", self.labels), ("phrases", self.phrases)):
            if len(arr) != n:
                raise ValueError(f"Detections: {name} has {len(arr)} entries for {n} boxes")
        if self.masks is not None:
            self.masks = np.asarray(self.masks, dtype=bool)
            if self.masks.ndim != 3 or len(self.masks) != n:
                raise ValueError(f"Detections: masks must be (N, H, W) with N={n}, got {self.masks.shape}")
        self.prompt_phrases = tuple(self.prompt_phrases)

    @classmethod
    def empty(cls, prompt_phrases: Sequence[str] = (), image_size=None) -> Detections:
        return cls(np.zeros((0, 4)), np.zeros(0), np.zeros(0), [], None, tuple(prompt_phrases), image_size)

    def __len__(self) -> int:
        return len(self.xyxy)

    def __getitem__(self, index) -> Detections:
        if isinstance(index, (int, np.integer)):
            index = [int(index)]
        return Detections(
            self.xyxy[index],
            self.scores[index],
            self.labels[index],
            self.phrases[index],
            None if self.masks is None else self.masks[index],
            self.prompt_phrases,
            self.image_size,
        )

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def __repr__(self) -> str:
        rows = [
            f"  {p!r:>24} {s:.3f} [{b[0]:.1f}, {b[1]:.1f}, {b[2]:.1f}, {b[3]:.1f}]"
            for p, s, b in zip(self.phrases[:10], self.scores[:10], self.xyxy[:10])
        ]
        more = f"\n  ... {len(self) - 10} more" if len(self) > 10 else ""
        body = "\n".join(rows)
        return f"Detections({len(self)} boxes{', with masks' if self.masks is not None else ''})" + (
            f"\n{body}{more}" if rows else ""
        )

    def to_coco(self, image_id: int, category_ids: Sequence[int] | None = None) -> list[dict]:
        """COCO results entries (``bbox`` as x, y, w, h) with the grounded ``phrase`` added.

        ``category_ids`` maps a label to a category id; by default ``label + 1``.
        """
        out = []
        for i in range(len(self)):
            x1, y1, x2, y2 = (float(v) for v in self.xyxy[i])
            label = int(self.labels[i])
            entry = {
                "image_id": int(image_id),
                "category_id": int(category_ids[label]) if category_ids is not None else label + 1,
                "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                "score": round(float(self.scores[i]), 5),
                "phrase": str(self.phrases[i]),
            }
            if self.masks is not None:
                entry["segmentation"] = mask_to_rle(self.masks[i])
            out.append(entry)
        return out

    def to_supervision(self):
        """Convert to ``supervision.Detections`` (requires ``pip install supervision``)."""
        try:
            import supervision as sv
        except ImportError:
            raise ImportError(
                "to_supervision needs the 'supervision' package: pip install supervision"
            ) from None
        return sv.Detections(
            xyxy=self.xyxy.copy(),
            mask=None if self.masks is None else self.masks.copy(),
            confidence=self.scores.copy(),
            class_id=self.labels.copy(),
            data={"class_name": self.phrases.astype(str)},
        )


@runtime_checkable
class Predictor(Protocol):
    """Anything that finds a prompt's phrases in images: the trained :class:`~openglip.api.Detector`, the
    zero-shot default teacher, RegionCLIP's detector. ``openglip detect``, ``openglip label`` (the teacher step)
    and evaluation all take a predictor.

    ``prompt`` is shared by every image; ``prompts`` gives one per image. A prompt is a caption
    (``"cat. red car."``), a list of phrases or a :class:`~openglip.prompts.Prompt`. Returns one
    :class:`Detections` for a single image and a list for a list of images; ``labels`` index the phrases of
    that image's prompt.
    """

    def predict(
        self,
        images,
        prompt=None,
        *,
        prompts=None,
        box_threshold: float = 0.3,
        batch_size: int = 4,
    ) -> Detections | list[Detections]: ...


def mask_to_rle(mask: np.ndarray) -> dict:
    """Uncompressed COCO RLE of a (H, W) bool mask: run lengths in column-major order, zeros first."""
    flat = np.asarray(mask, dtype=np.uint8).reshape(-1, order="F")
    if flat.size == 0:
        return {"counts": [], "size": [int(mask.shape[0]), int(mask.shape[1])]}
    starts = np.concatenate([[0], np.flatnonzero(flat[1:] != flat[:-1]) + 1])
    counts = np.diff(np.concatenate([starts, [flat.size]])).tolist()
    if flat[0] == 1:
        counts = [0, *counts]
    return {"counts": [int(c) for c in counts], "size": [int(mask.shape[0]), int(mask.shape[1])]}
