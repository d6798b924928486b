"""Mask head (GLIPv2's instance and referring segmentation): a Mask R-CNN style head on RoI features.

The head is class-agnostic: the grounded box says *which* object (a phrase's detection, or the referent of a
referring caption), and the head segments what is in the box. It reads the pre-fusion FPN levels P3-P5, so a
mask does not depend on which chunk of a long prompt produced its box.

Shapes: K boxes, D channels, R = 2 * roi_size mask resolution.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.roi_heads import paste_masks_in_image
from torchvision.ops import MultiScaleRoIAlign


class MaskHead(nn.Module):
    """RoIAlign (14x14, P3-P5) -> 4 conv3x3 -> 2x deconv -> 1x1 conv: (K, 1, 28, 28) mask logits.

    Args:
        in_channels: FPN channels.
        channels: width of the head.
        roi_size: RoIAlign output size (masks are twice as large).
    """

    def __init__(self, *, in_channels: int, channels: int = 128, roi_size: int = 14):
        super().__init__()
        self.roi_size = roi_size
        self.pool = MultiScaleRoIAlign(
            featmap_names=["p3", "p4", "p5"], output_size=roi_size, sampling_ratio=2
        )
        layers, c = [], in_channels
        for _ in range(4):
            layers += [nn.Conv2d(c, channels, 3, padding=1), nn.ReLU(inplace=True)]
            c = channels
        self.convs = nn.Sequential(*layers)
        self.deconv = nn.ConvTranspose2d(channels, channels, 2, stride=2)
        self.predictor = nn.Conv2d(channels, 1, 1)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(
        self, visual: list[torch.Tensor], boxes: list[torch.Tensor], image_shape: tuple[int, int]
    ) -> torch.Tensor:
        """visual: FPN levels (P3 first) of the batch; boxes: per image (K_i, 4) in input pixels;
        image_shape: (H, W) of the padded input. Returns (sum K_i, 1, R, R) mask logits."""
        feats = OrderedDict(p3=visual[0], p4=visual[1], p5=visual[2])
        x = self.pool(feats, [b.to(visual[0].dtype) for b in boxes], [tuple(image_shape)] * len(boxes))
        x = F.relu(self.deconv(self.convs(x)))
        return self.predictor(x)


def paste_masks(logits: torch.Tensor, boxes: torch.Tensor, height: int, width: int, threshold: float = 0.5):
    """(K, 1, R, R) mask logits of boxes (K, 4) in an image's pixels -> (K, height, width) bool masks."""
    if logits.shape[0] == 0:
        return torch.zeros(0, height, width, dtype=torch.bool, device=logits.device)
    probs = paste_masks_in_image(logits.sigmoid().float(), boxes.float(), (height, width), padding=1)
    return probs[:, 0] >= threshold
