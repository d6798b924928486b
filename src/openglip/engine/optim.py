"""Optimiser, learning-rate schedule and freezing: the pieces every task's training shares."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import nn

from ..config import TrainConfig
from ..errors import UsageError


def param_groups(
    model: nn.Module, cfg: TrainConfig, *, is_text: Callable[[str], bool] = lambda name: False
) -> list[dict]:
    """AdamW parameter groups: ``is_text(name)`` parameters get ``cfg.text_lr`` (GLIP trains its language
    backbone 10x slower), the others ``cfg.lr``; no weight decay on biases and norms. Frozen parameters are left
    out."""
    groups: dict[tuple[float, float], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        lr = cfg.text_lr if is_text(name) else cfg.lr
        decay = 0.0 if p.ndim <= 1 or name.endswith(".bias") else cfg.weight_decay
        groups.setdefault((lr, decay), []).append(p)
    return [{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()]


def build_optimizer(groups: list[dict], device: torch.device) -> torch.optim.Optimizer:
    """AdamW over ``groups``; the fused CUDA kernel on GPU (one launch per step instead of one per tensor)."""
    if not groups:
        raise UsageError("nothing to train: every parameter is frozen (check freeze=...)")
    return torch.optim.AdamW(groups, fused=device.type == "cuda")


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of the base learning rates at ``step``: linear warm-up, then cosine, step or constant."""
    if step < cfg.warmup_steps:
        alpha = step / max(cfg.warmup_steps, 1)
        return cfg.warmup_factor * (1 - alpha) + alpha
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "step":
        return cfg.gamma ** sum(step >= m * cfg.max_steps for m in cfg.milestones)
    if cfg.schedule == "cosine":
        progress = (step - cfg.warmup_steps) / max(cfg.max_steps - cfg.warmup_steps, 1)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    raise UsageError(f"unknown schedule {cfg.schedule!r}; use cosine, step or constant")


def freeze_parts(
    parts: dict[str, nn.Module | Iterable[nn.Module]], spec: str, *, aliases: dict[str, Iterable[str]] = ()
) -> list[str]:
    """Freeze the comma-separated parts named in ``spec`` (``"none"``: nothing); returns the frozen names.

    Args:
        parts: name -> module (or modules) of the model that can be frozen.
        spec: e.g. ``"backbone,text"``.
        aliases: names that stand for several parts (e.g. ``{"all_but_head": ["backbone", "fpn", ...]}``).

    Raises:
        UsageError: a name that is neither a part nor an alias.
    """
    aliases = dict(aliases)
    names = {p.strip() for p in spec.split(",") if p.strip() and p.strip() != "none"}
    unknown = names - set(parts) - set(aliases)
    if unknown:
        known = sorted(set(parts) | set(aliases))
        raise UsageError(f"unknown freeze option(s) {sorted(unknown)}; choose from {known} or none")
    expanded = set()
    for name in names:
        expanded.update(aliases.get(name, [name]))
    for name in expanded:
        modules = parts[name]
        for m in [modules] if isinstance(modules, nn.Module) else modules:
            m.requires_grad_(False)
    return sorted(expanded)
