"""Region-text teachers: images + phrases -> boxes with phrase scores.

GLIP's self-training uses a teacher to ground the noun phrases of web captions into pseudo boxes for a
student. A teacher is anything with ``ground(images, phrases) -> list[Detections]``:

* :class:`ZeroShotTeacher` (``"default"``): built from pretrained parts only (EfficientNet-Lite ImageNet
  classifier, MiniLM text encoder, optional YOLOv3-tiny proposals), with no box training on your data.
* :class:`DetectorTeacher`: any OpenGLIP detector, e.g. official GLIP weights you downloaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from ..structures import Detections


class Teacher(Protocol):
    def ground(self, images: Sequence, phrases: Sequence[Sequence[str]]) -> list[Detections]:
        """For each image, boxes for its phrases (``labels`` index that image's phrase list)."""
        ...


class DetectorTeacher:
    """An OpenGLIP :class:`~openglip.api.Detector` used as a teacher (class-list prompt per image)."""

    def __init__(self, detector, *, batch_size: int = 4):
        self.detector = detector
        self.batch_size = batch_size

    def ground(self, images: Sequence, phrases: Sequence[Sequence[str]]) -> list[Detections]:
        return self.detector.predict(
            list(images), prompts=[list(p) for p in phrases], box_threshold=0.0, batch_size=self.batch_size
        )


def load_teacher(spec: str = "default", *, device: str | None = None) -> Teacher:
    """``"default"`` -> :class:`ZeroShotTeacher`; a checkpoint path -> :class:`DetectorTeacher`."""
    if spec == "default":
        from .zero_shot import ZeroShotTeacher

        return ZeroShotTeacher(device=device)
    from ..api import load_model

    return DetectorTeacher(load_model(spec, device=device))


__all__ = ["DetectorTeacher", "Teacher", "load_teacher"]
