"""Feature pyramid: backbone C3..C5 -> P3..P7 (RetinaNet-style extra levels)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FPN(nn.Module):
    """Top-down FPN with nearest-neighbour upsampling and P6/P7 from stride-2 convs on P5.

    Args:
        in_channels: channels of the backbone maps at strides 8, 16, 32.
        out_channels: D, channels of every pyramid level.
        extra_levels: add P6 and P7 (GLIP's RetinaNet-style levels); without them the FPN returns P3..P5 (the
            two-stage detectors of RegionCLIP pool RoIs from those).

    ``forward`` takes the three backbone maps and returns five ``(B, D, H_l, W_l)`` maps at strides 8..128
    (three, at strides 8..32, without ``extra_levels``).
    """

    def __init__(self, *, in_channels: list[int], out_channels: int = 256, extra_levels: bool = True):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.output = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in in_channels)
        self.extra_levels = extra_levels
        if extra_levels:
            self.p6 = nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1)
            self.p7 = nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                nn.init.zeros_(m.bias)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        top = self.lateral[-1](feats[-1])
        outs = [self.output[-1](top)]
        for i in range(len(feats) - 2, -1, -1):
            lateral = self.lateral[i](feats[i])
            top = lateral + F.interpolate(top, size=lateral.shape[-2:], mode="nearest")
            outs.insert(0, self.output[i](top))
        if not self.extra_levels:
            return outs
        p6 = self.p6(outs[-1])
        p7 = self.p7(F.relu(p6))
        return [*outs, p6, p7]
