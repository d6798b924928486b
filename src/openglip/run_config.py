"""A training run's configs: a preset or a saved run's ``config.json`` (also in the layouts older versions wrote),
then ``key=value`` overrides, each routed to the config that holds it (model, loop, the task's own, or a built-in
dataset's settings in ``TrainConfig.data_options``)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from .config import (
    TASK_CONFIGS,
    ModelConfig,
    TrainConfig,
    TuneConfig,
    config_from_dict,
    field_names,
    get_preset,
    split_item,
    split_overrides,
    task_config_class,
)
from .errors import UsageError

_OLD_SHAPES_FIELDS = {
    "shapes_image_size": 128,
    "shapes_epoch_size": 2000,
}  # TrainConfig's, with their defaults


def run_configs_from_dict(train: dict, task: dict | None = None, *, where: str = "") -> tuple:
    """``(TrainConfig, task config)`` of a saved run: ``config.json``'s ``"train"`` and ``"task"`` entries (or a
    checkpoint's ``train_config`` and ``task_config``).

    Runs written before the task configs were split off hold one flat ``"train"`` dict: each of its keys goes to
    the config that holds it now, and the settings of other tasks (defaults the run never read) are dropped.
    """
    cls = task_config_class(train.get("task", "glip"))
    if any(k in train for k in _OLD_SHAPES_FIELDS):  # written before the shapes settings left TrainConfig
        moved = [
            f"{k}={train[k]}" for k, default in _OLD_SHAPES_FIELDS.items() if train.get(k, default) != default
        ]
        train = {k: v for k, v in train.items() if k not in _OLD_SHAPES_FIELDS}
        train["data_options"] = [*train.get("data_options", []), *moved]
    if task is None:
        loop = field_names(TrainConfig)
        other = set().union(*(field_names(c) for c in (*TASK_CONFIGS.values(), TuneConfig))) - loop
        task = {k: v for k, v in train.items() if k in field_names(cls) and k not in loop}
        train = {k: v for k, v in train.items() if k not in other}  # unknown keys stay, and raise
    return config_from_dict(train, TrainConfig, where=where), config_from_dict(task, cls, where=where)


def _task_of(overrides: list[str], default: str) -> str:
    """The ``task=`` override's value (the last one), else ``default``."""
    names = [raw for key, raw in map(split_item, overrides) if key == "task"]
    return names[-1] if names else default


def load_run_config(config: str | os.PathLike, overrides: Iterable[str] = ()) -> tuple:
    """``(ModelConfig, TrainConfig, task config)`` of a training run: a preset name or a run's ``config.json``,
    then ``key=value`` overrides (each key goes to whichever config has it; ``task=`` picks the task config).

    Raises:
        UsageError: a missing or malformed config file, an unknown preset, task or key (a key of another task's
            config is named as such).
    """
    overrides = list(overrides)
    path = Path(config)
    if path.suffix == ".json" or path.exists():
        if not path.is_file():
            raise UsageError(f"config file not found: {path}")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise UsageError(f"{path}: not valid JSON ({err})") from None
        if not isinstance(data, dict):
            raise UsageError(f"{path}: expected a JSON object with 'model' and 'train' entries")
        model_cfg = (
            config_from_dict(data["model"], ModelConfig, where=str(path))
            if "model" in data
            else get_preset(data.get("preset", "glip_t"))
        )
        train_cfg, task_cfg = run_configs_from_dict(data.get("train", {}), data.get("task"), where=str(path))
    else:
        model_cfg, train_cfg = get_preset(str(config)), TrainConfig()
        task_cfg = task_config_class(train_cfg.task)()
    task = _task_of(overrides, train_cfg.task)
    if task != train_cfg.task:
        task_cfg = task_config_class(task)()
    held = field_names(ModelConfig) | field_names(TrainConfig) | field_names(type(task_cfg))
    for key, _ in map(split_item, overrides):
        owner = next((n for n, c in TASK_CONFIGS.items() if key not in held and key in field_names(c)), None)
        if owner is not None:
            raise UsageError(f"{key} is a setting of task={owner}, not of task={task}")
    return tuple(split_overrides(overrides, model_cfg, train_cfg, task_cfg))
