"""Region-text teachers for GLIP's self-training: any :class:`~openglip.structures.Predictor`.

GLIP's self-training uses a teacher to ground the noun phrases of web captions into pseudo boxes for a
student. A teacher is a predictor like any other:

* ``"default"``: :class:`~openglip.teachers.zero_shot.ZeroShotTeacher`, built from pretrained parts only
  (EfficientNet-Lite ImageNet classifier, MiniLM text encoder, optional YOLOv3-tiny proposals), with no box
  training on your data.
* a checkpoint path: an OpenGLIP :class:`~openglip.api.Detector`, e.g. official GLIP weights you downloaded.
"""

from __future__ import annotations

from ..api import load_model
from ..structures import Predictor
from .zero_shot import ZeroShotTeacher


def load_teacher(spec: str = "default", *, device: str | None = None) -> Predictor:
    """``"default"`` -> the zero-shot teacher; a checkpoint path -> a :class:`~openglip.api.Detector`."""
    if spec == "default":
        return ZeroShotTeacher(device=device)

    return load_model(spec, device=device)


__all__ = ["load_teacher"]
