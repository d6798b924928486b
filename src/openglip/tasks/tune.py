"""Adapting a trained GLIP to a task: prompt tuning, linear probing, full fine-tuning (GLIPv2's comparison) and
two forgetting-aware variants of full fine-tuning.

* ``prompt``: the whole model is frozen; only an offset on the task prompt's token features trains, and the
  result is a small file (``prompt.safetensors``) used with the unchanged model.
* ``linear``: GLIP's linear probe: only the final layers train (box and centerness convs, the text-side
  projection of the alignment logits, its temperature and biases).
* ``full``: everything trains.
* ``wise``: full fine-tuning, then WiSE-FT: the weights are mixed with the starting ones,
  ``(1 - alpha) * start + alpha * fine-tuned`` (alpha 0.5 unless given; or chosen on held-out data, see
  :mod:`openglip.engine.wise`).
* ``replay``: full fine-tuning whose batches mix in a fixed share (``replay_ratio``, default 0.25) of
  pre-training-style data (``replay_data``: ``"shapes"`` or annotation files, with class prompts and sampled
  negatives as in pre-training), see :class:`~openglip.engine.sampler.ReplaySampler`.

The task's own data always use its fixed prompt (its category names in order). ``replay_data`` and
``wise_alpha`` / ``wise_retain`` also combine with ``linear`` and ``full`` (and with each other).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import torch

from ..api import Detector
from ..checkpoints import read_checkpoint
from ..config import ModelConfig, TrainConfig, TuneConfig, split_overrides
from ..data.build import with_replay
from ..data.datasets import GroundingDataset
from ..data.records import ImageRecord
from ..data.transforms import default_train_transforms, to_model_input
from ..distributed import unwrap
from ..engine.evaluate import evaluate_records
from ..engine.trainer import Trainer
from ..errors import DataError, UsageError
from ..files import write_text_atomic
from ..hub import resolve_weights
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
MODES = ("prompt", "linear", "full", "wise", "replay")
WISE_DEFAULT_ALPHA = 0.5  # mode "wise" without an alpha


class _FromWeightsTask(GLIPTask):
    """A :class:`GLIPTask` that starts from trained weights and trains on the task's fixed prompt.

    Args:
        weights: the starting weights (a file or a name).
        categories: the task's category names, in label order; the default prompt names them.
        prompt: the task prompt (default: the categories, in order).
        holdout: records of the task kept out of training, on which WiSE-FT's automatic alpha is chosen.
    """

    def __init__(
        self,
        model_cfg: ModelConfig,
        train_cfg: TrainConfig,
        cfg: TuneConfig,
        *,
        weights: str,
        categories: Sequence[str],
        prompt: Prompt | None = None,
        holdout: Sequence[ImageRecord] = (),
    ):
        self.check(cfg)
        self.weights = weights
        self.categories = list(categories)
        self.holdout = list(holdout)
        super().__init__(model_cfg, train_cfg, cfg)
        self.prompt = prompt or fixed_prompt(categories)

    @staticmethod
    def check(cfg: TuneConfig) -> None:
        """Refuse settings the kind of tuning cannot honour (a :class:`UsageError`)."""

    def build_model(self) -> torch.nn.Module:
        model = super().build_model()
        self.load_weights(model, self.weights)
        return model


class TuneTask(_FromWeightsTask):
    """Starts from trained weights and trains what ``cfg.mode`` allows: ``linear`` only the final layers,
    ``full``, ``wise`` and ``replay`` everything (prompt tuning is :class:`PromptTuneTask`)."""

    @staticmethod
    def check(cfg: TuneConfig) -> None:
        if cfg.mode not in MODES:
            raise UsageError(f"tuning mode must be one of {', '.join(MODES)}, not {cfg.mode!r}")
        if cfg.mode == "replay" and not cfg.replay_data:
            raise UsageError(
                'mode replay needs pre-training-style data to replay: replay_data="shapes" or files'
            )

    def start_weights(self) -> str:
        return self.weights

    def has_holdout(self) -> bool:
        return bool(self.holdout) or bool(self.train_cfg.val_data)

    def holdout_ap(self, model, step: int) -> float:
        if not self.holdout:
            return super().holdout_ap(model, step)

        det = Detector(model, device=next(model.parameters()).device)
        return evaluate_records(det, self.holdout, self.categories)[0].get("AP50", 0.0)

    def build_model(self) -> torch.nn.Module:
        model = super().build_model()
        if self.cfg.mode == "linear":
            for name, p in model.named_parameters():
                p.requires_grad_(name.startswith(LINEAR_PROBE))
        return model

    def freeze(self, model, spec: str) -> list[str]:
        if self.cfg.mode == "linear":
            return []  # already decided by the mode
        return super().freeze(model, spec)

    def export(self, model, path) -> None:
        """``RUN/model.safetensors`` and ``RUN/tune.json`` saying how the result was made."""
        super().export(model, path)
        info = tune_info(self, path)
        wise = Path(path).with_name("wise.json")
        if wise.exists() and (self.cfg.wise_alpha != 1.0 or self.cfg.wise_retain):
            info["wise"] = json.loads(wise.read_text())
        write_text_atomic(Path(path).with_name("tune.json"), json.dumps(info, indent=1))


class PromptTuneTask(_FromWeightsTask):
    """Prompt tuning: the whole model is frozen; only an offset on the task prompt's token features trains, and
    the result is a small file (``RUN/prompt.safetensors``) used with the unchanged model."""

    @staticmethod
    def check(cfg: TuneConfig) -> None:
        if cfg.replay_data or cfg.wise_alpha != 1.0 or cfg.wise_retain:
            raise UsageError(
                "prompt tuning leaves the model unchanged: replay and WiSE-FT do not apply to it"
            )

    def build_model(self) -> torch.nn.Module:
        return PromptTunedGLIP(super().build_model(), self.prompt)

    def freeze(self, model, spec: str) -> list[str]:
        return []  # everything but the prompt offset is frozen already

    def losses(self, model, batch) -> dict[str, torch.Tensor]:
        out = model(
            batch.pixel_values,
            batch.image_sizes,
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
        )
        return self.criterion(out, batch.targets)

    def evaluate(self, model, step: int) -> dict[str, float]:
        return {}

    def finalize(self, model, step: int):
        return model

    def export(self, model, path) -> None:
        """``RUN/prompt.safetensors`` and ``RUN/tune.json`` saying how the result was made."""
        unwrap(model).tuned_prompt().save(Path(path).with_name("prompt.safetensors"))
        write_text_atomic(Path(path).with_name("tune.json"), json.dumps(tune_info(self, path), indent=1))


def tune_info(task, path) -> dict:
    """What ``RUN/tune.json`` says of every mode: the mode, the starting weights, the phrases, the replay."""
    info = {"mode": task.cfg.mode, "from": str(task.weights), "phrases": list(task.prompt.phrases)}
    if task.cfg.replay_data:
        info["replay"] = {"data": task.cfg.replay_data, "ratio": task.cfg.replay_ratio}
    return info


def tune_task(model_cfg, train_cfg, cfg: TuneConfig, *, weights, categories, prompt=None, holdout=()):
    """The task of ``cfg.mode``: :class:`PromptTuneTask` for ``prompt``, :class:`TuneTask` otherwise."""
    if cfg.mode == "prompt":
        return PromptTuneTask(
            model_cfg, train_cfg, cfg, weights=weights, categories=categories, prompt=prompt
        )
    return TuneTask(model_cfg, train_cfg, cfg, weights=weights, categories=categories, prompt=prompt,
                    holdout=holdout)  # fmt: skip


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


def tune_config(mode: str, overrides: Iterable[str] = (), **changes) -> tuple[TrainConfig, TuneConfig]:
    """``(TrainConfig, TuneConfig)`` of a tuning run: short, no EMA, the task's fixed prompt (no flips), lr 1e-3 for
    prompt tuning and 1e-4 otherwise, alpha 0.5 for mode ``wise``; then ``key=value`` overrides and ``changes``
    (each to the config that holds it).

    Sampled negatives (``num_negatives``) only shape the prompts of replayed data: the task's own data always
    use their fixed prompt."""
    train = TrainConfig(
        max_steps=200, lr=1e-3 if mode == "prompt" else 1e-4, warmup_steps=10, checkpoint_every=100,
        log_every=10, ema_decay=0.0, flip_prob=0.0,
    )  # fmt: skip
    task = TuneConfig(mode=mode, wise_alpha=WISE_DEFAULT_ALPHA if mode == "wise" else 1.0)
    train, task = split_overrides(overrides, train, task)
    train_names = {f.name for f in dataclasses.fields(TrainConfig)}
    return (
        dataclasses.replace(train, **{k: v for k, v in changes.items() if k in train_names}),
        dataclasses.replace(task, **{k: v for k, v in changes.items() if k not in train_names}),
    )


def split_holdout(records: Sequence[ImageRecord], fraction: float, seed: int = 0):
    """``(train, held out)``: a random ``fraction`` of the records (at least one, and never all) held out."""
    if not 0.0 < fraction < 1.0:
        raise UsageError(f"the held-out fraction must be between 0 and 1, got {fraction}")
    if len(records) < 2:
        raise DataError("need at least 2 images to hold some out for choosing the WiSE-FT alpha")
    order = np.random.default_rng([seed, 1]).permutation(len(records))
    n = min(max(1, round(fraction * len(records))), len(records) - 1)
    held = set(order[:n].tolist())
    return [r for i, r in enumerate(records) if i not in held], [records[i] for i in sorted(held)]


def tune(
    weights: str,
    records: Sequence[ImageRecord],
    categories: Sequence[str],
    *,
    cfg: TrainConfig,
    tune_cfg: TuneConfig,
    holdout: Sequence[ImageRecord] = (),
    resume: bool = False,
    overwrite: bool = False,
    device: str | None = None,
    prompt: Prompt | None = None,
) -> Path:
    """Adapt the model in ``weights`` to a task's detection records with its fixed prompt: ``categories`` in
    order joined by ". ", or ``prompt`` (one phrase per category, in order; e.g. GLIP's ODinW caption prompts).
    Returns the result file: ``cfg.out_dir/prompt.safetensors`` (prompt mode) or ``model.safetensors``.

    Args:
        cfg: the training loop; ``tune_cfg``: the mode, replay and WiSE-FT (see :func:`tune_config`).
        holdout: task records not trained on, for WiSE-FT's automatic alpha (``tune_cfg.wise_retain``).

    Raises:
        UsageError: weights without an embedded config, an unknown mode, replay or WiSE-FT settings that cannot
            work (see :class:`TuneTask`).
        DataError: no records.
    """

    weights = resolve_weights(weights)
    _, model_cfg = read_checkpoint(weights)
    if model_cfg is None:
        raise UsageError(f"{weights} carries no config; convert it first with openglip convert")
    if not records:
        raise DataError("no usable records to tune on")
    task = tune_task(model_cfg, cfg, tune_cfg, weights=str(weights), categories=categories, prompt=prompt,
                     holdout=holdout)  # fmt: skip
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
    dataset = with_replay(dataset, model_cfg, cfg, tune_cfg)
    Trainer(task, cfg, dataset, resume=resume, overwrite=overwrite, device=device).fit()
    return Path(cfg.out_dir) / ("prompt.safetensors" if tune_cfg.mode == "prompt" else "model.safetensors")
