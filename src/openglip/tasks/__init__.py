"""Task objects: one per kind of model the :class:`~openglip.engine.trainer.Trainer` can train.

A task says how to build the model, load and freeze it, which parameter groups to optimise, how to batch
the data, what the losses are, how to evaluate and how to export. The trainer itself knows nothing of GLIP.

* :class:`GLIPTask` (``openglip train``): GLIP's grounding loss, GLIPv2's inter-image, mask and MLM losses.
* :class:`VQATask` (``openglip train ... task=vqa``), :class:`CaptionTask` (``task=caption``): GLIPv2's
  understanding heads on the same fused model.
* :class:`TuneTask` (``openglip tune``): linear probing or full fine-tuning of a trained GLIP (with WiSE-FT or
  replay); :class:`PromptTuneTask`: prompt tuning.

Each task receives the training loop's :class:`~openglip.config.TrainConfig` and its own config
(:data:`openglip.config.TASK_CONFIGS`).
* RegionCLIP's stages live in :mod:`openglip.regionclip.tasks`.
"""

from ..config import task_config_class
from ..engine.trainer import Trainer
from ..errors import UsageError
from .base import Task, TaskBase
from .caption import CaptionTask
from .glip import GLIPTask
from .tune import PromptTuneTask, TuneTask, few_shot, tune
from .vqa import VQATask

TASKS = {"glip": GLIPTask, "vqa": VQATask, "caption": CaptionTask}  # TrainConfig.task -> task class


def train(
    model_cfg,
    train_cfg,
    task_cfg=None,
    *,
    dataset=None,
    resume: bool = False,
    overwrite: bool = False,
    device=None,
):
    """Train the task ``train_cfg.task`` names (``"glip"``, ``"vqa"`` or ``"caption"``), with its config
    ``task_cfg`` (default: the task's defaults), on ``dataset`` (default:
    the task's dataset of ``train_cfg.data``) and return the finished :class:`~openglip.engine.trainer.Trainer`:
    ``trainer.result`` holds the last logged and evaluated metrics, the weights are in
    ``train_cfg.out_dir/model.safetensors``.

    Raises:
        UsageError: an unknown task name.
    """
    if train_cfg.task not in TASKS:
        raise UsageError(f"unknown task {train_cfg.task!r}; choose one of {', '.join(TASKS)}")

    task_cfg = task_cfg if task_cfg is not None else task_config_class(train_cfg.task)()
    task = TASKS[train_cfg.task](model_cfg, train_cfg, task_cfg)
    trainer = Trainer(task, train_cfg, dataset if dataset is not None else task.build_dataset(), resume=resume,
                      overwrite=overwrite, device=device)  # fmt: skip
    trainer.fit()
    return trainer


__all__ = [
    "TASKS",
    "CaptionTask",
    "GLIPTask",
    "PromptTuneTask",
    "Task",
    "TaskBase",
    "TuneTask",
    "VQATask",
    "few_shot",
    "train",
    "tune",
]
