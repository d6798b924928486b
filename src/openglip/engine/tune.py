"""Adapting a trained GLIP to a task: prompt tuning, linear probing or full fine-tuning (GLIPv2's comparison).

* ``prompt``: the whole model is frozen; only an offset on the task prompt's token features trains, and the
  result is a small file (``prompt.safetensors``) used with the unchanged model.
* ``linear``: GLIP's linear probe: only the final layers train (box and centerness convs, the text-side
  projection of the alignment logits, its temperature and biases).
* ``full``: everything trains.

All three use the task's fixed prompt (its category names in order).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..config import ModelConfig, TrainConfig
from ..prompt_tuning import PromptTunedGLIP, fixed_prompt
from .trainer import GLIPTask

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
        self, model_cfg: ModelConfig, cfg: TrainConfig, *, mode: str, weights: str, categories: Sequence[str]
    ):
        if mode not in MODES:
            raise ValueError(f"tuning mode must be one of {', '.join(MODES)}, not {mode!r}")
        super().__init__(model_cfg, cfg)
        self.mode = mode
        self.weights = weights
        self.prompt = fixed_prompt(categories)

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
