"""Projections of GLIPv2's inter-image region-word loss (part of the model; the loss is
:func:`openglip.losses.contrastive.region_word_loss`)."""

from __future__ import annotations

import torch
from torch import nn


class InterImageContrastive(nn.Module):
    """Projections and temperature of the inter-image loss (they live in the model, next to the head).

    Args:
        visual_dim: D, channels of the pre-fusion visual features.
        text_dim: Dt, channels of the pre-fusion text features.
        dim: d, joint space (GLIP: 64).
    """

    def __init__(self, *, visual_dim: int, text_dim: int, dim: int = 64):
        super().__init__()
        self.image_proj = nn.Linear(visual_dim, dim)
        self.text_proj = nn.Linear(text_dim, dim)
        self.log_scale = nn.Parameter(torch.zeros(1))
        for lin in (self.image_proj, self.text_proj):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)
