"""What dataset readers produce: one :class:`ImageRecord` per image (detection) or image-caption pair
(grounding), and a :class:`SkipReport` counting what was dropped and why."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger("openglip.data")


@dataclass
class ImageRecord:
    """One training/evaluation example.

    Attributes:
        file_name: image path (absolute, or relative to the dataset's image root).
        height, width: image size as recorded in the annotation file.
        boxes: (N, 4) float32 x1 y1 x2 y2 in pixels of the original image.
        labels: (N,) int64 category index (detection records); -1 for grounding regions.
        caption: the grounding caption, or None for a detection record (its prompt is built from
            category names at sampling time).
        spans: per box, its character spans ``[(start, end), ...]`` in ``caption`` (grounding records only).
        image_id: id of the image in its source file (COCO id, or line number + 1).
        masks: optional per-box segmentation (COCO polygons or RLE dicts), same order as ``boxes``.
    """

    file_name: str
    height: int
    width: int
    boxes: np.ndarray
    labels: np.ndarray
    caption: str | None = None
    spans: list[list[tuple[int, int]]] = field(default_factory=list)
    image_id: int = 0
    masks: list | None = None

    @property
    def is_grounding(self) -> bool:
        return self.caption is not None


@dataclass
class SkipReport:
    """Counts of records and boxes dropped while reading, by reason."""

    source: str = ""
    counts: Counter = field(default_factory=Counter)
    first: dict[str, str] = field(default_factory=dict)  # reason -> where its first case was (e.g. "line 3")

    def add(self, reason: str, n: int = 1, where: str | None = None) -> None:
        if n:
            self.counts[reason] += n
            if where is not None:
                self.first.setdefault(reason, where)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def detail(self) -> str:
        """``"reason: count (first: where), ..."``."""
        return ", ".join(
            f"{k}: {v}" + (f" (first: {self.first[k]})" if k in self.first else "")
            for k, v in sorted(self.counts.items())
        )

    def log(self) -> None:
        if self.counts:
            log.warning("%s: skipped %d bad entries (%s)", self.source, self.total, self.detail())

    def __str__(self) -> str:
        detail = ", ".join(f"{k}={v}" for k, v in sorted(self.counts.items()))
        return f"SkipReport({self.source}: {detail or 'nothing skipped'})"
