"""Adapting a trained GLIP to a task: prompt tuning, linear probing or full fine-tuning (GLIPv2's comparison).

* ``prompt``: the whole model is frozen; only an offset on the task prompt's token features trains, and the
  result is a small file (``prompt.safetensors``) used with the unchanged model.
* ``linear``: GLIP's linear probe: only the final layers train (box and centerness convs, the text-side
  projection of the alignment logits, its temperature and biases).
* ``full``: everything trains.

All three use the task's fixed prompt (its category names in order).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import torch

from ..checkpoints import read_checkpoint
from ..config import ModelConfig, TrainConfig, apply_overrides
from ..data.records import ImageRecord
from ..distributed import unwrap
from ..errors import DataError, UsageError
from ..files import write_text_atomic
from ..prompt_tuning import PromptTunedGLIP, fixed_prompt
from ..prompts import Prompt
from .glip import GLIPTask

LINEAR_PROBE = (
    "head.bbox_pred.",
    "head.centerness.",
    "head.text_proj.",
    "head.log_scale",
    "head.bias_lang",
    "head.bias0",
)
MODES = ("prompt", "linear", "full")


class TuneTask(GLIPTask):
    """A :class:`GLIPTask` that starts from trained weights and trains only what ``mode`` allows."""

    def __init__(
        self,
        model_cfg: ModelConfig,
        cfg: TrainConfig,
        *,
        mode: str,
        weights: str,
        categories: Sequence[str],
        prompt: Prompt | None = None,
    ):
        if mode not in MODES:
            raise UsageError(f"tuning mode must be one of {', '.join(MODES)}, not {mode!r}")
        super().__init__(model_cfg, cfg)
        self.mode = mode
        self.weights = weights
        self.prompt = prompt or fixed_prompt(categories)

    def build_model(self) -> torch.nn.Module:
        model = super().build_model()
        self.load_weights(model, self.weights)
        if self.mode == "prompt":
            return PromptTunedGLIP(model, self.prompt)
        if self.mode == "linear":
            for name, p in model.named_parameters():
                p.requires_grad_(name.startswith(LINEAR_PROBE))
        return model

    def freeze(self, model, spec: str) -> list[str]:
        if self.mode == "full":
            return super().freeze(model, spec)
        return []  # already decided by the mode

    def losses(self, model, batch) -> dict[str, torch.Tensor]:
        if self.mode != "prompt":
            return super().losses(model, batch)
        out = model(
            batch.pixel_values,
            batch.image_sizes,
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
        )
        return self.criterion(out, batch.targets)

    def evaluate(self, model, step: int) -> dict[str, float]:
        return {} if self.mode == "prompt" else super().evaluate(model, step)

    def export(self, model, path) -> None:
        """``RUN/prompt.safetensors`` (prompt mode) or ``RUN/model.safetensors``, and ``RUN/tune.json`` saying how
        the result was made."""
        if self.mode == "prompt":
            unwrap(model).tuned_prompt().save(Path(path).with_name("prompt.safetensors"))
        else:
            super().export(model, path)
        info = {"mode": self.mode, "from": str(self.weights), "phrases": list(self.prompt.phrases)}
        write_text_atomic(Path(path).with_name("tune.json"), json.dumps(info, indent=1))


def few_shot(records: Sequence[ImageRecord], categories: Sequence[str], shots: int, seed: int = 0):
    """``shots`` images per category (an image counts for every category it contains), chosen at random."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(records))
    chosen, have = [], {c: 0 for c in range(len(categories))}
    for i in order:
        labels = set(int(x) for x in records[i].labels)
        if any(have[c] < shots for c in labels):
            chosen.append(records[i])
            for c in labels:
                have[c] += 1
        if all(v >= shots for v in have.values()):
            break
    return chosen


def tune_config(mode: str, overrides: Iterable[str] = (), **changes) -> TrainConfig:
    """The training config of a tuning run: short, no EMA, the task's fixed prompt (no sampled negatives, no
    flips), lr 1e-3 for prompt tuning and 1e-4 otherwise; then ``key=value`` overrides and ``changes``."""
    defaults = TrainConfig(
        max_steps=200, lr=1e-3 if mode == "prompt" else 1e-4, warmup_steps=10, checkpoint_every=100,
        log_every=10, ema_decay=0.0, num_negatives=0, flip_prob=0.0,
    )  # fmt: skip
    return dataclasses.replace(apply_overrides(defaults, overrides), **changes)


def tune(
    weights: str,
    records: Sequence[ImageRecord],
    categories: Sequence[str],
    *,
    mode: str,
    cfg: TrainConfig,
    resume: bool = False,
    overwrite: bool = False,
    device: str | None = None,
    prompt: Prompt | None = None,
) -> Path:
    """Adapt the model in ``weights`` to a task's detection records with its fixed prompt: ``categories`` in
    order joined by ". ", or ``prompt`` (one phrase per category, in order; e.g. GLIP's ODinW caption prompts).
    Returns the result file: ``cfg.out_dir/prompt.safetensors`` (prompt mode) or ``model.safetensors``.

    Raises:
        UsageError: weights without an embedded config, an unknown mode.
        DataError: no records.
    """
    from ..data.datasets import GroundingDataset
    from ..data.transforms import default_train_transforms, to_model_input
    from ..engine.trainer import Trainer

    _, model_cfg = read_checkpoint(weights)
    if model_cfg is None:
        raise UsageError(f"{weights} carries no config; convert it first with openglip convert")
    if not records:
        raise DataError("no usable records to tune on")
    dataset = GroundingDataset(
        records,
        categories,
        transform=default_train_transforms(
            min_sizes=cfg.train_min_sizes,
            max_size=cfg.train_max_size,
            flip_p=cfg.flip_prob,
            jitter=cfg.color_jitter,
        ),
        to_tensor=partial(
            to_model_input, mean=model_cfg.pixel_mean, std=model_cfg.pixel_std, bgr=model_cfg.bgr
        ),
        fixed_prompt=prompt or True,
        seed=cfg.seed,
    )
    task = TuneTask(model_cfg, cfg, mode=mode, weights=str(weights), categories=categories, prompt=prompt)
    Trainer(task, cfg, dataset, resume=resume, overwrite=overwrite, device=device).fit()
    return Path(cfg.out_dir) / ("prompt.safetensors" if mode == "prompt" else "model.safetensors")
