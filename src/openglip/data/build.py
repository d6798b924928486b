"""Build training datasets from a :class:`~openglip.config.TrainConfig` (a registered built-in such as
``data="shapes"``, annotation files in COCO, ODVG or MDETR format, or shard folders written by ``openglip data
shard``; names are resolved by :mod:`openglip.data.resolve`)."""

from __future__ import annotations

import dataclasses
import json
from functools import partial
from pathlib import Path

from torch.utils.data import Dataset

from ..config import GLIPTaskConfig
from ..errors import DataError, UsageError
from .coco import read_coco
from .datasets import GroundingDataset
from .mdetr import read_mdetr
from .odvg import read_odvg
from .records import ImageRecord, log
from .resolve import builtin_dataset
from .shards import MANIFEST, ShardDataset, is_shard_dir
from .transforms import default_train_transforms, to_model_input


def read_annotations(path: str | Path, image_root: str | None = None) -> tuple[list[ImageRecord], list[str]]:
    """Read any supported annotation file, recognising the format from its name and content."""

    path = Path(path)
    if not path.exists():
        raise DataError(f"annotation file not found: {path}")
    if path.suffix == ".jsonl":
        records, categories, _ = read_odvg(path, image_root)
        return records, categories
    try:
        head = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None
    anns = head.get("annotations", []) if isinstance(head, dict) else []
    if anns and "tokens_positive" in anns[0]:
        records, categories, _ = read_mdetr(path, image_root)
    else:
        records, categories, _ = read_coco(path, image_root)
    return records, categories


class MultiDataset(Dataset):
    """Concatenation of datasets addressed by ``(epoch, index)`` keys."""

    def __init__(self, datasets: list[Dataset]):
        self.datasets = datasets
        self.offsets = []
        total = 0
        for d in datasets:
            self.offsets.append(total)
            total += len(d)
        self.total = total

    def __len__(self) -> int:
        return self.total

    def __getitem__(self, key):
        epoch, index = key
        for d, start in zip(reversed(self.datasets), reversed(self.offsets)):
            if index >= start:
                return d[(epoch, index - start)]
        raise IndexError(index)


class ReplayMix(MultiDataset):
    """Target data with replay data mixed in (forgetting-aware fine-tuning).

    Keys ``(epoch, index)`` address the target for ``index < target_size`` and replay item
    ``index - target_size`` otherwise. How often each is drawn is not decided here but by the trainer's
    :class:`~openglip.engine.sampler.ReplaySampler`, which reads ``replay_ratio`` (the share of every batch that
    comes from the replay data) from this dataset.
    """

    def __init__(self, target: Dataset, replay: Dataset, ratio: float):
        if not 0.0 < ratio < 1.0:
            raise UsageError(f"replay_ratio must be between 0 and 1 (exclusive), got {ratio}")
        super().__init__([target, replay])
        self.target_size, self.replay_size = len(target), len(replay)
        self.replay_ratio = ratio


def with_replay(dataset: Dataset, model_cfg, cfg, task_cfg) -> Dataset:
    """``dataset`` mixed with ``task_cfg.replay_data`` at ``task_cfg.replay_ratio`` (unchanged when there is
    none)."""
    if not task_cfg.replay_data:
        return dataset
    replay = _build_dataset(model_cfg, dataclasses.replace(cfg, data=task_cfg.replay_data), task_cfg)
    return ReplayMix(dataset, replay, task_cfg.replay_ratio)


def build_train_dataset(model_cfg, cfg, task_cfg=None) -> Dataset:
    """The training dataset of a run (``cfg``: a :class:`~openglip.config.TrainConfig`, ``task_cfg``: a
    :class:`~openglip.config.GLIPTaskConfig`): transforms, detection->grounding conversion with sampled
    negatives, several files merged, and ``task_cfg.replay_data`` mixed in when given (see :class:`ReplayMix`); default: GLIP's."""
    task_cfg = task_cfg if task_cfg is not None else GLIPTaskConfig()
    return with_replay(_build_dataset(model_cfg, cfg, task_cfg), model_cfg, cfg, task_cfg)


def _build_dataset(model_cfg, cfg, task_cfg) -> Dataset:
    """The dataset of ``cfg.data``."""
    builtin = builtin_dataset(cfg.data, cfg.data_options)
    make = builtin.train_transforms if builtin is not None else default_train_transforms
    transform = make(
        min_sizes=cfg.train_min_sizes,
        max_size=cfg.train_max_size,
        flip_p=cfg.flip_prob,
        jitter=cfg.color_jitter,
    )
    to_tensor = partial(to_model_input, mean=model_cfg.pixel_mean, std=model_cfg.pixel_std, bgr=model_cfg.bgr)
    if builtin is not None:
        return builtin.train_dataset("glip", model_cfg, cfg, transform, to_tensor, task_cfg=task_cfg)
    common = {
        "transform": transform,
        "to_tensor": to_tensor,
        "num_negatives": task_cfg.num_negatives,
        "max_tokens": model_cfg.max_text_len,
        "seed": cfg.seed,
        "with_masks": model_cfg.mask_head,
    }
    parts = []
    for path in [p.strip() for p in cfg.data.split(",") if p.strip()]:
        # WebDataset shards (openglip data shard); streamed when they are the only data
        if is_shard_dir(path):
            parts.append(ShardDataset(path, **common))
            continue
        if Path(path).is_dir():
            raise DataError(
                f"--data {path}: a folder without {MANIFEST}; write shards with: openglip data shard"
            )
        records, categories = read_annotations(path, cfg.image_root)
        if not records:
            raise DataError(f"{path}: no usable records (see the skipped-entry counts above)")
        if not any(len(rec.boxes) for rec in records):
            log.warning(
                "%s: none of its %d images has an annotated box: the model learns only what is absent", path,
                len(records),
            )  # fmt: skip
        parts.append(GroundingDataset(records, categories, **common))
    return parts[0] if len(parts) == 1 else MultiDataset(parts)
