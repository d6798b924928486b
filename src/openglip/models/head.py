"""GLIP's grounding head: box regression, centerness and region-word alignment logits."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .layers import Scale

LOGIT_CLAMP = 50000.0


class GroundingHead(nn.Module):
    """Predictors on the fused features.

    Alignment logits (GLIP's dot-product token head)::

        e = normalize(text_hidden)                        # (B, T, Dt)
        K = text_proj(e / 2)                              # (B, T, D)
        S = (O @ K^T) / exp(log_scale) + e @ bias_lang + bias0   # (B, N_l, T), clamped to +-50000

    where O are the fused visual features of a level, flattened row-major.

    Args:
        channels: D, fused visual channels.
        text_dim: Dt, fused text channels.
        num_levels: pyramid levels (one learnable box scale each).
        legacy_classes: channels of the classification conv that official checkpoints carry; it is never used
            for grounding (GLIP freezes it too) and exists so that official weights load strictly.
        prior_prob: initial foreground probability, sets ``bias0``.
    """

    def __init__(
        self,
        *,
        channels: int,
        text_dim: int,
        num_levels: int = 5,
        legacy_classes: int = 80,
        prior_prob: float = 0.01,
    ):
        super().__init__()
        bias_value = -math.log((1 - prior_prob) / prior_prob)
        self.bbox_pred = nn.Conv2d(channels, 4, kernel_size=1)
        self.centerness = nn.Conv2d(channels, 1, kernel_size=1)
        self.cls_logits = nn.Conv2d(channels, legacy_classes, kernel_size=1)
        self.cls_logits.requires_grad_(False)
        self.text_proj = nn.Linear(text_dim, channels)
        self.log_scale = nn.Parameter(torch.zeros(1))
        self.bias_lang = nn.Parameter(torch.zeros(text_dim))
        self.bias0 = nn.Parameter(torch.tensor([bias_value]))
        self.scales = nn.ModuleList(Scale(1.0) for _ in range(num_levels))
        for conv in (self.bbox_pred, self.centerness, self.cls_logits):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
        nn.init.constant_(self.cls_logits.bias, bias_value)

    def text_keys(self, text_hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """text_hidden (B, T, Dt) -> (keys (B, T, D), per-token bias (B, T))."""
        e = F.normalize(text_hidden, p=2, dim=-1)
        return self.text_proj(e / 2.0), e @ self.bias_lang + self.bias0

    def alignment_logits(
        self, feature: torch.Tensor, keys: torch.Tensor, token_bias: torch.Tensor
    ) -> torch.Tensor:
        """feature (B, D, H, W) -> logits (B, H*W, T)."""
        queries = feature.flatten(2).transpose(1, 2)  # (B, H*W, D)
        logits = (queries @ keys.transpose(1, 2)) / self.log_scale.exp() + token_bias.unsqueeze(1)
        return logits.clamp(-LOGIT_CLAMP, LOGIT_CLAMP)

    def forward(self, visual: list[torch.Tensor], text_hidden: torch.Tensor):
        """Returns per-level lists: logits (B, H*W, T), box deltas (B, 4, H, W), centerness (B, 1, H, W)."""
        keys, token_bias = self.text_keys(text_hidden)
        logits, boxes, centers = [], [], []
        for level, f in enumerate(visual):
            boxes.append(self.scales[level](self.bbox_pred(f)))
            centers.append(self.centerness(f))
            logits.append(self.alignment_logits(f, keys, token_bias))
        return logits, boxes, centers
