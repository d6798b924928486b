"""Small layers shared by several model parts."""

from __future__ import annotations

import torch
from torch import nn


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch of a sample with probability ``p`` in training."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        return x * x.new_empty(shape).bernoulli_(keep) / keep


class Scale(nn.Module):
    """A learnable scalar multiplier (one per FPN level in the box branch)."""

    def __init__(self, init: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([init], dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def h_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """Hard sigmoid ``relu6(x + 3) / 6``."""
    return torch.nn.functional.relu6(x + 3.0) / 6.0
