"""The RegionCLIP student: region embeddings (RoIAlign on an FPN, a 2-FC head, a projection to the text space)
and a global image embedding, both unit vectors. The model returns raw tensors; :mod:`.losses` turns them into
losses and :mod:`.detector` reuses the whole student as its box head."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import MultiScaleRoIAlign

from .features import FeatureExtractor


@dataclass
class StudentOutput:
    """What :class:`RegionStudent` returns for a batch.

    Attributes:
        region_emb: ``(K, D)`` unit region embeddings, the images' boxes concatenated in order.
        region_feats: ``(K, head_dim)`` the head's features (the detector regresses boxes from them).
        image_emb: ``(B, D)`` unit global image embeddings.
        logit_scale: scalar, the learned inverse temperature.
    """

    region_emb: torch.Tensor
    region_feats: torch.Tensor
    image_emb: torch.Tensor
    logit_scale: torch.Tensor


class RegionStudent(nn.Module):
    """EfficientNet-Lite (frozen BatchNorm) + small FPN + RoIAlign head, projected into the text space.

    Args:
        backbone: ``efficientnet_lite0/1/2`` or ``tiny_cnn``.
        pretrained: ImageNet-initialised backbone.
        fpn_channels: FPN width.
        roi_size: RoIAlign output side.
        head_dim: width of the 2-FC head.
        embed_dim: D, the text space's dimension.
        init_temperature: the logit scale starts at ``1 / init_temperature`` (clamped to 100 when used).
    """

    def __init__(
        self,
        *,
        backbone: str,
        pretrained: bool,
        fpn_channels: int,
        roi_size: int,
        head_dim: int,
        embed_dim: int,
        init_temperature: float,
    ):
        super().__init__()
        self.features = FeatureExtractor(backbone=backbone, pretrained=pretrained, channels=fpn_channels)
        self.roi_align = MultiScaleRoIAlign(["0", "1", "2"], roi_size, sampling_ratio=2)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(fpn_channels * roi_size * roi_size, head_dim),
            nn.ReLU(inplace=True),
            nn.Linear(head_dim, head_dim),
            nn.ReLU(inplace=True),
        )
        self.region_proj = nn.Linear(head_dim, embed_dim)
        self.image_proj = nn.Linear(self.features.c5_channels, embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))
        self.register_buffer("text_centre", torch.zeros(embed_dim))

    def forward(self, images: torch.Tensor, boxes: list[torch.Tensor]) -> StudentOutput:
        """Embed the regions ``boxes`` (one ``(K_i, 4)`` xyxy px tensor per image) of normalised ``images (B, 3, H, W)``."""
        if len(boxes) != images.shape[0]:
            raise ValueError(f"got {len(boxes)} box tensors for {images.shape[0]} images")
        levels, c5 = self.features(images)
        sizes = [tuple(images.shape[-2:])] * images.shape[0]
        pooled = self.roi_align(levels, [b.to(images.dtype) for b in boxes], sizes)  # (K, C, r, r)
        feats = self.head(pooled)  # (K, head_dim)
        return StudentOutput(
            region_emb=F.normalize(self.region_proj(feats), dim=-1),
            region_feats=feats,
            image_emb=F.normalize(self.image_proj(c5.mean((2, 3))), dim=-1),
            logit_scale=self.logit_scale.exp().clamp(max=100.0),
        )
