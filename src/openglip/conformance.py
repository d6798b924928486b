"""Checking OpenGLIP against the official GLIP code path.

The official reference (``shared/reference/glip_t``) was made by running microsoft/GLIP with deterministic
weights: norm layers 1/0, every other float parameter ``randn * 0.02`` from a per-key seed, buffers as built.
:func:`official_fill` produces that state dict from the published key/shape table, so OpenGLIP can load it
through the normal official-checkpoint path and be compared stage by stage (:func:`relative_l2`).
"""

from __future__ import annotations

import csv
import hashlib
import math
from pathlib import Path

import torch
from torchvision.ops import box_iou

from .models.anchors import level_anchors
from .models.swin import _relative_position_index


def key_seed(key: str) -> int:
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "little") & ((1 << 63) - 1)


def read_shape_table(path: str | Path) -> list[dict]:
    """Rows of ``state_dict_shapes.tsv``: key, shape (tuple), dtype, kind, fill_rule."""
    rows = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            shape = tuple(int(s) for s in row["shape"].split("x")) if row["shape"] else ()
            rows.append({**row, "shape": shape})
    return rows


def official_fill(rows: list[dict], model=None) -> dict[str, torch.Tensor]:
    """The deterministic official-layout state dict of the reference (README section 2).

    ``keep`` buffers are built as the official code builds them: Swin relative position indices, BERT position
    ids and anchor cells (the latter two are checked, not loaded, by OpenGLIP). ``model`` is used to take the
    relative position indices from (they are identical by construction); without it they are recomputed.
    """

    state: dict[str, torch.Tensor] = {}
    for row in rows:
        key, shape, rule = row["key"], row["shape"], row["fill_rule"]
        if rule == "ones":
            state[key] = torch.ones(shape)
        elif rule == "zeros":
            state[key] = torch.zeros(shape)
        elif rule.startswith("randn"):
            g = torch.Generator(device="cpu").manual_seed(key_seed(key))
            state[key] = torch.randn(shape, generator=g, dtype=torch.float32) * 0.02
        elif key.endswith("relative_position_index"):
            window = round(shape[0] ** 0.5)
            state[key] = _relative_position_index(window)
        elif key.endswith("position_ids"):
            state[key] = torch.arange(shape[-1]).view(shape)
        elif ".cell_anchors." in key:
            level = int(key.rsplit(".", 1)[1])
            state[key] = level_anchors(1, 1, 8 * 2**level, 64 * 2**level)
        else:
            raise ValueError(f"no fill rule for {key} ({rule})")
    return state


def regionclip_fill(rows: list[dict], classifier: torch.Tensor) -> dict[str, torch.Tensor]:
    """The deterministic state dict of the RegionCLIP reference (``shared/reference/regionclip_rn50``, README
    section 2): norms 1/0, conv kernels ``randn / sqrt(fan_in)`` (the offline stem also ``/ 64``), every other
    float ``randn * 0.02``, all from the per-key seed; ``given_embedding`` rows get ``classifier``."""
    state: dict[str, torch.Tensor] = {}
    for row in rows:
        key, shape, rule = row["key"], row["shape"], row["fill_rule"]
        if rule in ("ones", "zeros"):
            state[key] = (torch.ones if rule == "ones" else torch.zeros)(shape)
        elif rule == "given_embedding":
            state[key] = classifier.clone()
        elif rule.startswith("randn"):
            if rule == "randn*0.02":
                factor = 0.02
            else:  # randn/sqrt(F) or randn/sqrt(F)/64, the factor a Python float as the reference computed it
                fan_in = int(rule.split("sqrt(")[1].split(")")[0])
                factor = 1.0 / math.sqrt(fan_in) / (64.0 if rule.endswith("/64") else 1.0)
            g = torch.Generator(device="cpu").manual_seed(key_seed(key))
            state[key] = torch.randn(shape, generator=g, dtype=torch.float32) * factor
        else:
            raise ValueError(f"no fill rule for {key} ({rule})")
    return state


def relative_l2(x: torch.Tensor, summary: dict) -> float:
    """``||x[idx] - values|| / ||values||`` over the reference's sampled indices (float64)."""
    idx = summary["idx"]
    got = x.detach().reshape(-1)[idx].double()
    ref = summary["values"].double()
    return float((got - ref).norm() / ref.norm().clamp_min(1e-30))


def unmatched_detections(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    classes: torch.Tensor,
    ref: dict,
    iou: float = 0.99,
    score: float = 1e-4,
) -> int:
    """Reference detections (``ref``: ``boxes``, ``scores``, ``classes``) without a partner among ours of the same
    class, IoU >= ``iou`` and |dscore| <= ``score``, matched one to one as sets, not by rank (the RegionCLIP
    reference's rule: near-tied scores may swap ranks)."""
    overlap = box_iou(ref["boxes"].double(), boxes.double().cpu())
    close = (
        (overlap >= iou)
        & (ref["classes"][:, None] == classes.cpu()[None, :])
        & ((ref["scores"][:, None].double() - scores.cpu()[None, :].double()).abs() <= score)
    )
    taken = torch.zeros(len(scores), dtype=torch.bool)
    missing = 0
    for row in close:
        free = (row & ~taken).nonzero()
        if len(free):
            taken[free[0, 0]] = True
        else:
            missing += 1
    return missing
