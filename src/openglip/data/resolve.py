"""The one place that turns a dataset name into data: a file path, a shard folder, or a registered built-in.

Built-in worlds (the synthetic ``"shapes"`` world of :mod:`openglip.shapes`) register themselves here when their
package is imported (``openglip`` imports it); the core never imports them and never compares a dataset name
against a string: it asks :func:`builtin_dataset`. A registered object provides what a run needs from it
(duck-typed, see :class:`openglip.shapes.builtin.ShapesData` for the full set):

* ``train_transforms``: the training transform factory (same keywords as
  :func:`~openglip.data.transforms.default_train_transforms`);
* ``train_dataset(task, model_cfg, cfg, transform, to_tensor, task_cfg=None)``: the training set of a task
  (``"glip"``, ``"vqa"``, ``"caption"``);
* ``evaluate(task, detector, cfg)`` and the task-specific pieces the tasks ask for;
* ``configure(overrides)``: a copy with its own ``NAME_key=value`` settings applied (a run's
  ``TrainConfig.data_options``, saved with the run like every other setting).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

BUILTIN_DATASETS: dict[str, Any] = {}  # name -> built-in dataset object (registered by its package)


def register_builtin(name: str, dataset: Any) -> None:
    """Make ``name`` (e.g. ``"shapes"``) a dataset name of every command and config field that takes data."""
    BUILTIN_DATASETS[name] = dataset


def builtin_dataset(name: str | None, options: Iterable[str] = ()) -> Any | None:
    """The built-in dataset registered as ``name`` with its ``NAME_key=value`` settings among ``options`` applied
    (``TrainConfig.data_options``), or None when ``name`` is a path (file, shard folder) or unset.

    Raises:
        UsageError: an option the built-in's settings do not have (raised by its ``configure``).
    """
    builtin = BUILTIN_DATASETS.get(name) if name else None
    mine = [item for item in options if item.startswith(f"{name}_")]
    return builtin.configure(mine) if builtin is not None and mine else builtin


def builtin_option_owner(key: str) -> str | None:
    """The registered built-in whose setting ``key`` names (``shapes_image_size`` -> ``"shapes"``), or None."""
    return next((name for name in BUILTIN_DATASETS if key.startswith(f"{name}_")), None)
