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
* ``configure(overrides)``: a copy with its own ``NAME_key=value`` settings applied.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

BUILTIN_DATASETS: dict[str, Any] = {}  # name -> built-in dataset object (registered by its package)


def register_builtin(name: str, dataset: Any) -> None:
    """Make ``name`` (e.g. ``"shapes"``) a dataset name of every command and config field that takes data."""
    BUILTIN_DATASETS[name] = dataset


def builtin_dataset(name: str | None) -> Any | None:
    """The built-in dataset registered as ``name``, or None when ``name`` is a path (file, shard folder) or unset."""
    return BUILTIN_DATASETS.get(name) if name else None


@contextlib.contextmanager
def configured_builtins(overrides: Iterable[str]) -> Iterator[list[str]]:
    """Apply the ``NAME_key=value`` overrides of registered built-ins (``shapes_image_size=96``) for the duration of
    the block, yielding the other overrides; the registry is restored afterwards, so one run's settings never
    leak into the next one of the same process.

    Raises:
        UsageError: a key the built-in's settings do not have (raised by its ``configure``).
    """
    rest: list[str] = []
    mine: dict[str, list[str]] = {}
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        owner = next((n for n in BUILTIN_DATASETS if key.startswith(f"{n}_")), None)
        if owner is None:
            rest.append(item)
        else:
            mine.setdefault(owner, []).append(item)
    saved = dict(BUILTIN_DATASETS)
    try:
        for name, items in mine.items():
            BUILTIN_DATASETS[name] = BUILTIN_DATASETS[name].configure(items)
        yield rest
    finally:
        BUILTIN_DATASETS.clear()
        BUILTIN_DATASETS.update(saved)
