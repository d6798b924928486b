"""What a training checkpoint restores besides the model and optimiser: the EMA of the weights and the state of
every random number generator (for an exact resume)."""

from __future__ import annotations

import random

import numpy as np
import torch


class ModelEMA:
    """Exponential moving average of a model's parameters and buffers.

    The decay ramps up as ``min(decay, (1 + t) / (10 + t))`` over the first updates: without it a short run's
    average would still be mostly the random initialisation (0.999**500 = 0.61).
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.updates = 0
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        floats, shadows = [], []
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                floats.append(v.detach())
                shadows.append(self.shadow[k])
            else:
                self.shadow[k].copy_(v)
        torch._foreach_lerp_(shadows, floats, 1 - d)  # one fused update instead of two kernels per tensor

    def state_dict(self) -> dict:
        return {"updates": self.updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.updates = int(state["updates"])
        for k, v in state["shadow"].items():
            self.shadow[k].copy_(v)


def rng_state() -> dict:
    """Every RNG's state in types ``torch.load(weights_only=True)`` accepts (tensors, ints, floats, tuples)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed torch, NumPy and Python's ``random`` (a run's start; a resume restores :func:`rng_state` instead)."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
