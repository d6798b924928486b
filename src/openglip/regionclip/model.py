"""The RegionCLIP student: region embeddings and a global image embedding, both unit vectors in the text space.

Two bodies share one interface (:class:`StudentOutput`, ``embed_dim``, ``feat_dim``, ``text_centre``,
:meth:`parts`): :class:`RegionStudent` (the core's EfficientNet-Lite + FPN, RoIAlign, a 2-FC head, a projection
to the text space; trains on CPU) and :class:`CLIPStudent` (initialised from a CLIP ResNet, as the paper's
student: RoIAlign on C4, then ``layer4`` and attention pooling). The model returns raw tensors; :mod:`.losses`
turns them into losses and :mod:`.detector` reuses the whole student as its box head.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import MultiScaleRoIAlign

from .clip import CLIPRegionEncoder, load_clip
from .features import FeatureExtractor


@dataclass
class StudentOutput:
    """What a student returns for a batch.

    Attributes:
        region_emb: ``(K, D)`` unit region embeddings, the images' boxes concatenated in order.
        region_feats: ``(K, feat_dim)`` the head's features (the detector regresses boxes from them).
        image_emb: ``(B, D)`` unit global image embeddings.
        logit_scale: scalar, the learned inverse temperature.
    """

    region_emb: torch.Tensor
    region_feats: torch.Tensor
    image_emb: torch.Tensor
    logit_scale: torch.Tensor


class RegionStudent(nn.Module):
    """EfficientNet-Lite (frozen BatchNorm) + FPN + RoIAlign head, projected into the text space.

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
        self.embed_dim, self.feat_dim = embed_dim, head_dim

    def parts(self) -> dict[str, nn.Module]:
        """The parts ``TrainConfig.freeze`` can name."""
        return {"backbone": self.features.backbone, "head": self.head}

    def image_only(self) -> list[nn.Parameter]:
        """Parameters that only the image-level loss uses (the detector freezes them)."""
        return [*self.image_proj.parameters(), self.logit_scale]

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


class CLIPStudent(nn.Module):
    """A student initialised from a CLIP ResNet (RegionCLIP's choice): regions RoI-aligned on C4, then
    ``layer4`` + attention pooling into CLIP's joint space; the image embedding is CLIP's own.

    Args:
        spec: ``clip:ARCH:PATH`` (see :mod:`openglip.regionclip.clip`); the weights are copied and trained.
    """

    def __init__(self, spec: str):
        super().__init__()

        model = load_clip(spec)
        self.encoder = CLIPRegionEncoder(copy.deepcopy(model.visual).requires_grad_(True))
        self.logit_scale = nn.Parameter(model.logit_scale.detach().clone().reshape(()))
        self.embed_dim = self.feat_dim = self.encoder.embed_dim
        self.register_buffer("text_centre", torch.zeros(self.embed_dim))

    def parts(self) -> dict[str, nn.Module]:
        v = self.encoder.visual
        return {"backbone": nn.ModuleList([v.conv1, v.bn1, v.conv2, v.bn2, v.conv3, v.bn3, v.layer1, v.layer2,
                                           v.layer3]), "head": nn.ModuleList([v.layer4, v.attnpool])}  # fmt: skip

    def image_only(self) -> list[nn.Parameter]:
        return [self.logit_scale]

    def forward(self, images: torch.Tensor, boxes: list[torch.Tensor]) -> StudentOutput:
        if len(boxes) != images.shape[0]:
            raise ValueError(f"got {len(boxes)} box tensors for {images.shape[0]} images")
        regions, image = self.encoder(images, boxes)
        return StudentOutput(
            region_emb=F.normalize(regions, dim=-1),
            region_feats=regions,
            image_emb=F.normalize(image, dim=-1),
            logit_scale=self.logit_scale.exp().clamp(max=100.0),
        )
