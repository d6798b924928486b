"""WiSE-FT weight mixing (Wortsman et al., "Robust fine-tuning of zero-shot models", CVPR 2022): after
fine-tuning, mix the weights with the starting ones,

    theta(alpha) = (1 - alpha) * theta_start + alpha * theta_fine_tuned,

which keeps much of what the starting (zero-shot) model could detect, the categories the fine-tuning data never
named, while keeping most of the gain on the fine-tuning task. ``alpha = 1`` is plain fine-tuning, ``alpha = 0``
the starting model; both endpoints are returned bitwise.

This module is the weight arithmetic only: mixing two state dicts (:func:`interpolate`), choosing alpha from two
metrics (:func:`choose_alpha`) and mixing a trained model in place (:func:`mix_with_start`). The GLIP tasks call
it from ``finalize`` (see :mod:`openglip.tasks.glip`), with ``alpha`` given (``wise_alpha``,
``openglip tune --mode wise --alpha 0.5``) or chosen automatically on two held-out sets: target data the
fine-tuning did not train on and a "retain" set of what the starting model must keep detecting. The criterion:
among alpha = 0, 0.1, ..., 1, the one with the highest target AP50 whose retain AP50 is at least ``keep``
(default 0.95) times the starting model's (alpha = 0 always qualifies); ties go to the smaller alpha. The table
of every alpha is written to ``RUN/wise.json``, the un-mixed weights to ``RUN/finetuned.safetensors``.
"""

from __future__ import annotations

import copy
import json
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from ..errors import UsageError
from ..files import write_text_atomic

ALPHAS: tuple[float, ...] = tuple(i / 10 for i in range(11))  # the grid of the automatic choice


def interpolate(
    start: Mapping[str, torch.Tensor], tuned: Mapping[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """``(1 - alpha) * start + alpha * tuned`` for every floating-point tensor of ``tuned``.

    Tensors that are not floating point (counters, indices) and tensors ``start`` lacks (heads added for the
    fine-tuning, with no starting value) are taken from ``tuned``. ``alpha = 0`` returns ``start``'s tensors and
    ``alpha = 1`` ``tuned``'s, bitwise (copies).

    Raises:
        UsageError: ``alpha`` outside [0, 1], or a tensor whose shapes differ between the two.
    """
    if not 0.0 <= alpha <= 1.0 or math.isnan(alpha):
        raise UsageError(f"WiSE-FT alpha must be between 0 and 1, got {alpha}")
    out = {}
    for key, t in tuned.items():
        s = start.get(key)
        if s is None or not t.dtype.is_floating_point:
            out[key] = t.clone()
            continue
        if s.shape != t.shape:
            raise UsageError(
                f"cannot mix {key}: starting weights {tuple(s.shape)} vs fine-tuned {tuple(t.shape)}"
            )
        if alpha == 0.0:
            out[key] = s.to(t.dtype).clone()
        elif alpha == 1.0:
            out[key] = t.clone()
        else:
            out[key] = torch.lerp(s.to(t.dtype), t, alpha)
    return out


@dataclass
class AlphaChoice:
    """The automatic choice: ``alpha`` and, per alpha tried, ``{"alpha", "target_AP50", "retain_AP50", "ok"}``."""

    alpha: float
    rows: list[dict] = field(default_factory=list)


def choose_alpha(
    target_ap: Callable[[float], float],
    retain_ap: Callable[[float], float],
    *,
    keep: float = 0.95,
    alphas: Sequence[float] = ALPHAS,
) -> AlphaChoice:
    """The alpha with the highest ``target_ap(alpha)`` among those with ``retain_ap(alpha) >= keep *
    retain_ap(0)``; ties go to the smaller alpha. Alpha 0 is always tried (it is the reference)."""

    grid = sorted({0.0, *(float(a) for a in alphas)})
    base_retain = _finite(retain_ap(0.0))
    rows, best = [], None
    for a in tqdm(grid, desc="WiSE-FT alpha", unit="alpha", file=sys.stderr, disable=len(grid) < 3):
        retain = base_retain if a == 0.0 else _finite(retain_ap(a))
        target = _finite(target_ap(a))
        ok = retain >= keep * base_retain
        rows.append({"alpha": a, "target_AP50": target, "retain_AP50": retain, "ok": ok})
        if ok and (best is None or target > best["target_AP50"]):
            best = rows[-1]
    return AlphaChoice(best["alpha"], rows)


def _finite(x: float) -> float:
    x = float(x)
    return x if math.isfinite(x) and x >= 0 else 0.0  # COCO's -1 (no ground truth) counts as nothing kept


def mix_with_start(
    model: torch.nn.Module,
    load_start: Callable[[torch.nn.Module], None],
    out_dir: str | Path,
    *,
    alpha: float = 1.0,
    retain: str | None = None,
    keep: float = 0.95,
    target_ap: Callable[[torch.nn.Module], float] | None = None,
    retain_ap: Callable[[torch.nn.Module], float] | None = None,
    save: Callable[[torch.nn.Module, Path], None] | None = None,
) -> torch.nn.Module:
    """Mix ``model`` (the fine-tuned weights) with the starting weights in place and return it.

    Args:
        model: the fine-tuned model.
        load_start: loads the starting weights into a model (with the task's strict rules).
        out_dir: receives ``wise.json`` (how alpha was chosen) and ``finetuned.safetensors``.
        alpha: the fixed mix (used when ``retain`` is None).
        retain: the file of what must be kept; when given, alpha is chosen with ``target_ap`` and ``retain_ap``
            (AP50 of a model on the held-out target data and on the retain file), keeping ``keep`` of the
            starting model's retain AP50.
        save: writes a model's weights (the un-mixed fine-tuned weights are kept with it).
    """
    tuned = {k: v.detach().clone() for k, v in model.state_dict().items()}
    start_model = copy.deepcopy(model)  # heads the starting weights lack keep their fine-tuned values
    load_start(start_model)
    start = start_model.state_dict()
    del start_model
    out = Path(out_dir)
    if save is not None:
        save(model, out / "finetuned.safetensors")
    info: dict = {"alpha": alpha, "choice": "fixed"}
    if retain is not None:
        if target_ap is None or retain_ap is None:
            raise UsageError("WiSE-FT with an automatic alpha needs held-out target data")

        def at(a: float, metric: Callable[[torch.nn.Module], float]) -> float:
            model.load_state_dict(interpolate(start, tuned, a))
            return metric(model)

        choice = choose_alpha(lambda a: at(a, target_ap), lambda a: at(a, retain_ap), keep=keep)
        info = {"alpha": choice.alpha, "choice": "auto", "keep": keep, "retain": retain, "rows": choice.rows}
    model.load_state_dict(interpolate(start, tuned, info["alpha"]))
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "wise.json", json.dumps(info, indent=1))
    return model
