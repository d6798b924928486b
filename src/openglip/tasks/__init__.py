"""Task objects: one per kind of model the :class:`~openglip.engine.trainer.Trainer` can train.

A task says how to build the model, load and freeze it, which parameter groups to optimise, how to batch
the data, what the losses are, how to evaluate and how to export. The trainer itself knows nothing of GLIP.

* :class:`GLIPTask` (``openglip train``): GLIP's grounding loss, GLIPv2's inter-image and mask losses.
* :class:`TuneTask` (``openglip tune``): prompt tuning, linear probing or full fine-tuning of a trained GLIP.
* RegionCLIP's stages live in :mod:`openglip.regionclip.tasks`.
"""

from .base import Task
from .glip import GLIPTask, train
from .tune import TuneTask, few_shot, tune

__all__ = ["GLIPTask", "Task", "TuneTask", "few_shot", "train", "tune"]
