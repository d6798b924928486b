"""Region proposals for RegionCLIP: a class-agnostic RPN (torchvision's) and random crops (the paper's ablation).

The RPN is trained on the boxes of the shapes "train" split, which holds base categories only, ignoring their
labels; it then proposes regions for pretraining, for the transferred detector and for zero-shot evaluation.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead, concat_box_prediction_layers
from torchvision.ops import nms

from ..errors import UsageError
from .features import FeatureExtractor


class ScoredRPN(RegionProposalNetwork):
    """torchvision's RPN whose forward also returns the proposals' objectness probabilities."""

    def forward(self, images: ImageList, features: dict, targets: list[dict] | None = None):
        """``(boxes [(N_i, 4)], scores [(N_i,)] in [0, 1], losses)``; losses only in training (needs ``targets``)."""
        feats = list(features.values())
        objectness, deltas = self.head(feats)
        anchors = self.anchor_generator(images, feats)
        per_level = [o[0].shape[0] * o[0].shape[1] * o[0].shape[2] for o in objectness]
        objectness, deltas = concat_box_prediction_layers(objectness, deltas)
        proposals = self.box_coder.decode(deltas.detach(), anchors).view(len(anchors), -1, 4)
        boxes, scores = self.filter_proposals(proposals, objectness, images.image_sizes, per_level)
        losses = {}
        if self.training:
            if targets is None:
                raise ValueError("the RPN needs target boxes in training mode")
            labels, matched = self.assign_targets_to_anchors(anchors, targets)
            regression_targets = self.box_coder.encode(matched, anchors)
            loss_obj, loss_box = self.compute_loss(objectness, deltas, labels, regression_targets)
            losses = {"rpn_objectness": loss_obj, "rpn_box": loss_box}
        return boxes, scores, losses


class ProposalNetwork(nn.Module):
    """Backbone + small FPN + class-agnostic RPN.

    Args:
        backbone: see :func:`openglip.regionclip.features.build_backbone`.
        pretrained: ImageNet-initialised backbone.
        fpn_channels: FPN width.
        anchor_sizes: anchor sides in px, spread evenly over the 3 levels (strides 8/16/32), smallest first.
        aspect_ratios: anchor aspect ratios (height / width).
        pre_nms_top_n: candidates per level before NMS.
        post_nms_top_n: proposals kept per image.
        nms_thresh: NMS IoU within a level.
    """

    def __init__(
        self,
        *,
        backbone: str,
        pretrained: bool,
        fpn_channels: int,
        anchor_sizes: tuple[int, ...],
        aspect_ratios: tuple[float, ...],
        pre_nms_top_n: int,
        post_nms_top_n: int,
        nms_thresh: float,
    ):
        super().__init__()
        if len(anchor_sizes) % 3:
            raise UsageError(f"anchor_sizes must split evenly over 3 levels, got {anchor_sizes}")
        k = len(anchor_sizes) // 3
        sizes = tuple(tuple(anchor_sizes[i * k : (i + 1) * k]) for i in range(3))
        self.features = FeatureExtractor(backbone=backbone, pretrained=pretrained, channels=fpn_channels)
        generator = AnchorGenerator(sizes=sizes, aspect_ratios=(tuple(aspect_ratios),) * 3)
        self.rpn = ScoredRPN(
            generator,
            RPNHead(fpn_channels, generator.num_anchors_per_location()[0]),
            fg_iou_thresh=0.7,
            bg_iou_thresh=0.3,
            batch_size_per_image=256,
            positive_fraction=0.5,
            pre_nms_top_n={"training": pre_nms_top_n, "testing": pre_nms_top_n},
            post_nms_top_n={"training": post_nms_top_n, "testing": post_nms_top_n},
            nms_thresh=nms_thresh,
        )

    def forward(self, images: torch.Tensor, boxes: list[torch.Tensor] | None = None):
        """Proposals of normalised images ``(B, 3, H, W)``.

        Returns:
            ``(boxes [(N_i, 4) xyxy px], objectness [(N_i,)], losses dict)``; losses (``rpn_objectness``,
            ``rpn_box``) only in training mode, where ``boxes`` (ground truth per image) is required.
        """
        levels, _ = self.features(images)
        sizes = [tuple(images.shape[-2:])] * images.shape[0]
        targets = None if boxes is None else [{"boxes": b} for b in boxes]
        return self.rpn(ImageList(images, sizes), levels, targets)


@torch.no_grad()
def top_regions(
    boxes: list[torch.Tensor], scores: list[torch.Tensor], *, k: int, iou: float
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The ``k`` best proposals per image after a class-agnostic NMS across levels (the RPN's own NMS is per
    level, so one object can come back once per level). Returns ``(boxes [(<=k, 4)], scores [(<=k,)])``."""
    out_boxes, out_scores = [], []
    for b, s in zip(boxes, scores):
        keep = nms(b, s, iou)[:k]
        out_boxes.append(b[keep])
        out_scores.append(s[keep])
    return out_boxes, out_scores


def random_crops(h: int, w: int, n: int, rng: np.random.Generator, *, min_frac: float = 0.1) -> np.ndarray:
    """``n`` random boxes ``(n, 4)`` float32 xyxy inside an ``h x w`` image: log-uniform sides between
    ``min_frac`` and all of the image side, log-uniform aspect ratio in [1/2, 2], uniform position."""
    short = min(h, w)
    side = np.exp(rng.uniform(np.log(min_frac * short), np.log(short), size=n))
    aspect = np.exp(rng.uniform(np.log(0.5), np.log(2.0), size=n))
    bw = np.minimum(side * np.sqrt(aspect), w)
    bh = np.minimum(side / np.sqrt(aspect), h)
    x1 = rng.uniform(0, 1, size=n) * (w - bw)
    y1 = rng.uniform(0, 1, size=n) * (h - bh)
    return np.stack([x1, y1, x1 + bw, y1 + bh], axis=1).astype(np.float32)
