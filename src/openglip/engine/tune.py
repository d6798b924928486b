"""Adapting a trained GLIP to a task: prompt tuning, linear probing or full fine-tuning (GLIPv2's comparison).

* ``prompt``: the whole model is frozen; only an offset on the task prompt's token features trains, and the
  result is a small file (``prompt.safetensors``) used with the unchanged model.
* ``linear``: GLIP's linear probe: only the final layers train (box and centerness convs, the text-side
  projection of the alignment logits, its temperature and biases).
* ``full``: everything trains.

All three use the task's fixed prompt (its category names in order, or a :class:`~openglip.prompts.Prompt`
with one phrase per category). :func:`tune` runs one adaptation end to end (``openglip tune`` and the ODinW
benchmark both call it).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np
import torch

from ..config import ModelConfig, TrainConfig, apply_overrides
from ..errors import DataError, UsageError
from ..prompt_tuning import PromptTunedGLIP, fixed_prompt
from ..prompts import Prompt
from .trainer import GLIPTask, Trainer

log = logging.getLogger("openglip.tune")

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
            raise ValueError(f"tuning mode must be one of {', '.join(MODES)}, not {mode!r}")
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

    def config_dict(self) -> dict:
        return {**super().config_dict(), "tune_mode": self.mode, "tune_from": str(self.weights)}

    def export(self, model, path) -> None:
        if self.mode == "prompt":
            core = model.module if hasattr(model, "module") else model
            core.tuned_prompt().save(Path(path).with_name("prompt.safetensors"))
        else:
            super().export(model, path)


def few_shot(records, categories: Sequence[str], shots: int, seed: int = 0):
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


def tune_defaults(mode: str) -> TrainConfig:
    """The tuning recipe before overrides: short, no EMA, no negatives or flips, a higher rate for prompts."""
    return TrainConfig(max_steps=200, lr=1e-3 if mode == "prompt" else 1e-4, warmup_steps=10,
                       checkpoint_every=100, log_every=10, ema_decay=0.0, num_negatives=0, flip_prob=0.0)  # fmt: skip


def tune(
    weights: str | Path,
    records,
    categories: Sequence[str],
    *,
    mode: str,
    out_dir: str | Path,
    overrides: Sequence[str] = (),
    train_cfg: TrainConfig | None = None,
    shots: int = 0,
    seed: int = 0,
    device: str | None = None,
    resume: bool = False,
    prompt: Prompt | None = None,
) -> Path:
    """Adapt the model in ``weights`` to a detection task and write the result into ``out_dir``.

    Args:
        weights: an OpenGLIP checkpoint (``.safetensors`` with its config).
        records: the task's detection records (:class:`~openglip.data.records.ImageRecord`).
        categories: the task's category names (``records[i].labels`` index them).
        mode: ``"prompt"``, ``"linear"`` or ``"full"``.
        out_dir: the run directory (checkpoints, metrics.jsonl, the result).
        overrides: ``key=value`` TrainConfig overrides applied on top of ``train_cfg``.
        train_cfg: the recipe (default :func:`tune_defaults`); ``out_dir`` replaces its ``out_dir``.
        shots: keep only this many images per category (:func:`few_shot`, drawn with ``seed``); 0 keeps all.
        seed: seed of the few-shot draw.
        device: "cpu", "cuda" or None.
        resume: continue from the newest checkpoint in ``out_dir``.
        prompt: the task prompt, one phrase per category in order (default: the names joined by ". ").

    Returns:
        The result: ``out_dir/prompt.safetensors`` (prompt mode) or ``out_dir/model.safetensors``.

    Raises:
        UsageError: ``weights`` carries no config, or ``mode`` is unknown.
        DataError: no usable record is left.
    """
    from ..checkpoints import read_checkpoint
    from ..data.datasets import GroundingDataset
    from ..data.transforms import default_train_transforms, to_model_input

    if mode not in MODES:
        raise UsageError(f"tuning mode must be one of {', '.join(MODES)}, not {mode!r}")
    _, model_cfg = read_checkpoint(weights)
    if model_cfg is None:
        raise UsageError(f"{weights} carries no config; convert it first with openglip convert")
    if shots:
        records = few_shot(records, categories, shots, seed)
    if not records:
        raise DataError("no usable training records for tuning")
    cfg = apply_overrides(train_cfg or tune_defaults(mode), list(overrides))
    cfg = dataclasses.replace(cfg, out_dir=str(out_dir))
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
    trainer = Trainer(task, cfg, dataset, resume=resume, device=device)
    trainer.fit()
    out = Path(out_dir) / ("prompt.safetensors" if mode == "prompt" else "model.safetensors")
    log.info("%s tuning on %d images, %d steps -> %s", mode, len(records), trainer.step, out)
    return out
