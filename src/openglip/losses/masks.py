"""The mask loss of GLIPv2's segmentation head: per-box binary cross-entropy on RoI-aligned targets."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from ..models.masks import MaskHead


def mask_targets(masks: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Crop-and-resize (M, H, W) binary masks to their boxes: (M, size, size) float targets in {0, 1}."""
    if masks.shape[0] == 0:
        return masks.new_zeros(0, size, size, dtype=torch.float32)
    rois = torch.cat(
        [torch.arange(len(boxes), device=boxes.device, dtype=boxes.dtype)[:, None], boxes], dim=1
    )
    out = roi_align(
        masks[:, None].float(), rois, (size, size), spatial_scale=1.0, sampling_ratio=2, aligned=True
    )
    return (out[:, 0] >= 0.5).float()


def mask_loss(head: MaskHead, visual, targets, image_shape, max_per_image: int = 32) -> torch.Tensor:
    """Binary cross-entropy of the head on the ground-truth boxes of every image that has masks."""
    boxes, masks = [], []
    for t in targets:
        if t.masks is None or t.boxes.shape[0] == 0:
            boxes.append(t.boxes.new_zeros(0, 4))
            continue
        keep = torch.arange(min(len(t.boxes), max_per_image), device=t.boxes.device)
        boxes.append(t.boxes[keep])
        masks.append(mask_targets(t.masks[keep], t.boxes[keep], 2 * head.roi_size))
    if not masks:
        return sum(p.sum() for p in head.parameters()) * 0.0
    logits = head(visual, boxes, image_shape)[:, 0]
    return F.binary_cross_entropy_with_logits(logits.float(), torch.cat(masks))
