"""The teacher that stands in for CLIP: an image encoder projected into the frozen text space, trained with an
image-level contrastive loss on image-caption pairs (see :class:`openglip.regionclip.tasks.TeacherTask`).

Like RegionCLIP's CLIP teacher it embeds *regions* by embedding their crops: square crops around each box with
some context, cut and resized in one batched ``roi_align`` on the normalised image (outside the image the crop
is zero = mid grey), then :meth:`align` scores every region against every concept of the pool.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align

from ..errors import UsageError
from ..models.backbones import TinyCNN
from ..models.efficientnet import EfficientNetLite, load_pretrained

EFFICIENTNETS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


class PooledEncoder(nn.Module):
    """A globally pooled image feature: EfficientNet-Lite up to its 1280-channel head conv (ImageNet weights,
    BatchNorm statistics frozen), or a tiny random CNN. ``forward`` -> ``(B, out_channels)``."""

    def __init__(self, *, backbone: str, pretrained: bool):
        super().__init__()

        if backbone == "tiny_cnn":
            self.body, self.efficientnet = TinyCNN(channels=(16, 32, 64)), False
            self.out_channels = 64
        elif backbone in EFFICIENTNETS:
            self.body = EfficientNetLite(
                variant=backbone.removeprefix("efficientnet_"), out_indices=(4,), with_head=True
            )
            if pretrained:
                load_pretrained(self.body)
            self.body._fc = nn.Identity()  # the ImageNet classifier is not used
            self.efficientnet, self.out_channels = True, 1280
        else:
            raise UsageError(
                f"unknown backbone {backbone!r}; choose from tiny_cnn, {', '.join(EFFICIENTNETS)}"
            )

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()  # keep ImageNet statistics: small, shifting batches cannot estimate them
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.body(images)[-1]  # (B, C5, H/32, W/32)
        if self.efficientnet:
            x = F.relu6(self.body._bn1(self.body._conv_head(x)))  # (B, 1280, h, w)
        return x.mean((2, 3))


def square_context_boxes(boxes: torch.Tensor, context: float) -> torch.Tensor:
    """Squares ``(K, 4)`` centred on ``boxes`` with side ``max(w, h) * (1 + 2 * context)`` (at least 4 px)."""
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    side = (boxes[:, 2:] - boxes[:, :2]).amax(1, keepdim=True).clamp(min=4.0) * (1 + 2 * context)
    return torch.cat([centre - side / 2, centre + side / 2], dim=1)


class ContrastiveTeacher(nn.Module):
    """Image encoder + linear projection to the text space + a learned logit scale.

    Args:
        backbone: ``efficientnet_lite0/1/2`` or ``tiny_cnn``.
        pretrained: ImageNet-initialised EfficientNet.
        embed_dim: D, the text space's dimension.
        init_temperature: initial softmax temperature (the logit scale ``exp(s)`` starts at ``1 / T``).
        crop_size: side of the resized region crops.
        crop_context: context added around a region (fraction of its side, on every side).
        text_centre: ``(D,)`` centre of the concept pool the teacher was trained in (saved with it).
    """

    def __init__(
        self,
        *,
        backbone: str,
        pretrained: bool,
        embed_dim: int,
        init_temperature: float,
        crop_size: int,
        crop_context: float,
        text_centre: torch.Tensor | None = None,
    ):
        super().__init__()
        self.encoder = PooledEncoder(backbone=backbone, pretrained=pretrained)
        self.proj = nn.Linear(self.encoder.out_channels, embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))
        self.register_buffer(
            "text_centre", torch.zeros(embed_dim) if text_centre is None else text_centre.clone()
        )
        self.crop_size, self.crop_context = crop_size, crop_context

    def scale(self) -> torch.Tensor:
        """The logit scale ``exp(s)``, clamped to 100 as in CLIP."""
        return self.logit_scale.exp().clamp(max=100.0)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(unit image embeddings (B, D), logit scale)`` of normalised images ``(B, 3, H, W)``."""
        return self.embed_images(images), self.scale()

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """Unit image embeddings ``(B, D)`` of normalised images ``(B, 3, H, W)``."""
        return F.normalize(self.proj(self.encoder(images)), dim=-1)

    def crops(self, images: torch.Tensor, boxes: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        """Context-padded square crops ``(K, 3, S, S)`` of the boxes (xyxy px); ``images`` is ``(3, H, W)`` with
        ``boxes (K, 4)``, or ``(B, 3, H, W)`` with one ``(K_i, 4)`` tensor per image."""
        if images.dim() == 3:
            images, boxes = images[None], [boxes]
        if len(boxes) != images.shape[0]:
            raise ValueError(f"got {len(boxes)} box tensors for {images.shape[0]} images")
        squares = [square_context_boxes(b.float(), self.crop_context) for b in boxes]
        return roi_align(
            images.float(),
            squares,
            output_size=self.crop_size,
            spatial_scale=1.0,
            sampling_ratio=2,
            aligned=True,
        )

    @torch.no_grad()
    def embed_regions(
        self, images: torch.Tensor, boxes: torch.Tensor | list[torch.Tensor], *, batch: int = 256
    ) -> torch.Tensor:
        """Unit region embeddings ``(K, D)`` from crops (see :meth:`crops` for the argument shapes)."""
        crops = self.crops(images, boxes)
        if len(crops) == 0:
            return crops.new_zeros(0, self.proj.out_features)
        return torch.cat([self.embed_images(c) for c in crops.split(batch)])

    @torch.no_grad()
    def align(self, region_emb: torch.Tensor, concept_emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each region's best concept and the teacher's concept logits.

        Args:
            region_emb: ``(K, D)`` unit region embeddings.
            concept_emb: ``(C, D)`` unit concept embeddings (e.g. ``ConceptPool.embeddings``).

        Returns:
            ``(best (K,) int64, logits (K, C) = cos * logit scale)``.
        """
        logits = self.scale() * region_emb @ concept_emb.to(region_emb).t()  # (K, C)
        return logits.argmax(1), logits
