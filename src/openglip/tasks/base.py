"""The contract between the generic trainer and what it trains."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from ..config import TrainConfig
from ..errors import UsageError


@runtime_checkable
class Task(Protocol):
    """What :class:`~openglip.engine.trainer.Trainer` needs to know about a model family.

    ``losses`` only *calls* the trained model (it may be wrapped in DDP); frozen helpers a task needs (a teacher,
    a frozen text encoder) live on the task. Batches returned by ``collate_fn()`` have ``.to(device)`` and
    ``len()``.

    :class:`TaskBase` gives the hooks most tasks leave as they are (``finalize``, ``task_config_dict``,
    ``build_dataset``).
    """

    def build_dataset(self) -> Any:
        """The training dataset of ``TrainConfig.data`` (items addressed by ``(epoch, index)`` keys)."""
        ...

    def build_model(self) -> nn.Module:
        """A freshly initialised model (pretrained parts named in the config are loaded)."""
        ...

    def load_weights(self, model: nn.Module, path: str) -> None:
        """Load starting weights (``TrainConfig.init_weights``) with strict semantics."""
        ...

    def freeze(self, model: nn.Module, spec: str) -> list[str]:
        """Freeze the parts named in ``spec`` (``TrainConfig.freeze``); returns the frozen part names."""
        ...

    def param_groups(self, model: nn.Module, cfg: TrainConfig) -> list[dict]:
        """Optimiser parameter groups (learning rates, weight decay) of the trainable parameters."""
        ...

    def collate_fn(self) -> Callable[[list], Any]:
        """Turns a list of dataset items into a batch."""
        ...

    def losses(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        """Named scalar losses of a batch (summed by the trainer)."""
        ...

    def evaluate(self, model: nn.Module, step: int) -> dict[str, float]:
        """Validation metrics of ``model`` (the EMA weights when EMA is on); ``{}`` when there is nothing to
        evaluate."""
        ...

    def config_dict(self) -> dict:
        """The model config, saved as ``"model_config"`` in checkpoints and ``"model"`` in ``config.json``."""
        ...

    def task_config_dict(self) -> dict:
        """The task's own config, saved as ``"task_config"`` in checkpoints and ``"task"`` in ``config.json``
        (compared on resume like the training config); ``{}`` when it has none."""
        ...

    def finalize(self, model: nn.Module, step: int) -> nn.Module:
        """Turn the trained (EMA) weights into the run's result, before ``export`` and the final evaluation
        (GLIP tasks mix them with the starting weights for WiSE-FT, :mod:`openglip.engine.wise`)."""
        ...

    def export(self, model: nn.Module, path) -> None:
        """Write the final weights (``RUN/model.safetensors``) so that the project's loaders read them back."""
        ...


class TaskBase:
    """Default hooks of :class:`Task`: no dataset of its own, no task config, the trained model is the result."""

    def build_dataset(self) -> Any:
        raise UsageError(f"{type(self).__name__} builds no dataset of its own: give the trainer one")

    def task_config_dict(self) -> dict:
        return {}

    def finalize(self, model: nn.Module, step: int) -> nn.Module:
        return model
