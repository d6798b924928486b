"""GLIP's training loss: ATSS assignment, token-level sigmoid focal loss on the alignment logits, GIoU box
loss weighted by centerness, and centerness BCE.

Shapes: B images, A anchors over all levels, M ground-truth boxes of an image, T tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..data.collate import GroundingTarget
from ..distributed import mean_over_ranks
from ..models.anchors import BoxCoder

INF = 1e8


def box_iou_plus_one(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU with maskrcnn-benchmark's "+1" areas: (A, 4) x (M, 4) -> (A, M)."""
    area_a = (a[:, 2] - a[:, 0] + 1) * (a[:, 3] - a[:, 1] + 1)
    area_b = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt + 1).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def atss_assign(anchors: list[torch.Tensor], gt: torch.Tensor, topk: int = 9) -> torch.Tensor:
    """Adaptive training sample selection (Zhang et al., 2020) as GLIP does it.

    Per ground-truth box: the ``topk`` anchors per level whose centres are closest to the box centre are
    candidates; those with IoU >= mean + std of the candidates' IoUs and whose centre lies inside the box
    are positives; an anchor positive for several boxes takes the one with the highest IoU.

    Args:
        anchors: per level (A_l, 4) anchors.
        gt: (M, 4) boxes.

    Returns:
        (A,) index of the matched box per anchor, -1 for background.
    """
    all_anchors = torch.cat(anchors)
    A, M = all_anchors.shape[0], gt.shape[0]
    if M == 0:
        return torch.full((A,), -1, dtype=torch.long, device=all_anchors.device)
    ious = box_iou_plus_one(all_anchors, gt)  # (A, M)
    anchor_centres = (all_anchors[:, :2] + all_anchors[:, 2:]) / 2
    gt_centres = (gt[:, :2] + gt[:, 2:]) / 2
    distances = (anchor_centres[:, None, :] - gt_centres[None, :, :]).pow(2).sum(-1).sqrt()  # (A, M)
    candidates, start = [], 0
    for level in anchors:
        n = level.shape[0]
        k = min(topk, n)
        candidates.append(distances[start : start + n].topk(k, dim=0, largest=False).indices + start)
        start += n
    candidates = torch.cat(candidates)  # (K, M)
    cols = torch.arange(M, device=gt.device)
    cand_ious = ious[candidates, cols]  # (K, M)
    threshold = cand_ious.mean(0) + cand_ious.std(0)
    is_pos = cand_ious >= threshold[None, :]
    cx, cy = anchor_centres[candidates, 0], anchor_centres[candidates, 1]  # (K, M)
    inside = torch.stack([cx - gt[:, 0], cy - gt[:, 1], gt[:, 2] - cx, gt[:, 3] - cy]).amin(0) > 0.01
    is_pos &= inside
    # dense scatter instead of boolean indexing: no host sync (a box's K candidates are distinct anchors)
    scores = torch.full((A, M), -INF, device=gt.device, dtype=ious.dtype)
    scores.scatter_(0, candidates, torch.where(is_pos, cand_ious, -INF))
    best, index = scores.max(dim=1)
    return torch.where(best == -INF, -1, index)


def centerness_target(anchors: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)) of each anchor centre inside its box."""
    cx = (anchors[:, 0] + anchors[:, 2]) / 2
    cy = (anchors[:, 1] + anchors[:, 3]) / 2
    lr = torch.stack([cx - boxes[:, 0], boxes[:, 2] - cx], dim=1)
    tb = torch.stack([cy - boxes[:, 1], boxes[:, 3] - cy], dim=1)
    return torch.sqrt((lr.amin(1) / lr.amax(1)) * (tb.amin(1) / tb.amax(1)))


def giou_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - GIoU per row for (N, 4) xyxy boxes (GLIP's formula: degenerate predictions are made valid)."""
    x1, y1 = pred[:, 0], pred[:, 1]
    x2, y2 = torch.maximum(x1, pred[:, 2]), torch.maximum(y1, pred[:, 3])
    area_p = (x2 - x1) * (y2 - y1)
    area_t = (target[:, 2] - target[:, 0]) * (target[:, 3] - target[:, 1])
    iw = (torch.minimum(x2, target[:, 2]) - torch.maximum(x1, target[:, 0])).clamp(min=0)
    ih = (torch.minimum(y2, target[:, 3]) - torch.maximum(y1, target[:, 1])).clamp(min=0)
    inter = iw * ih
    enclose = (torch.maximum(x2, target[:, 2]) - torch.minimum(x1, target[:, 0])) * (
        torch.maximum(y2, target[:, 3]) - torch.minimum(y1, target[:, 1])
    ) + 1e-7
    union = area_p + area_t - inter + 1e-7
    return 1 - (inter / union - (enclose - union) / enclose)


def token_focal_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    text_mask: torch.Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
) -> torch.Tensor:
    """Sigmoid focal loss summed over real tokens: logits/targets (B, A, T), text_mask (B, T).

    Padding tokens are weighted by 0 rather than selected with a boolean mask (which would sync with the host).
    """
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return (loss * (text_mask > 0)[:, None, :].to(loss.dtype)).sum()


class GroundingLoss(nn.Module):
    """GLIP's loss on :class:`~openglip.models.glip.GLIPOutput`.

    Args:
        box_coder: decodes deltas (weights 10/10/5/5).
        topk: ATSS candidates per level.
        alpha, gamma: focal loss parameters.
        reg_weight: weight of the GIoU loss (ATSS: 2.0).
        normalized_token_targets: GLIP's targets are 1/n on each of a phrase's n tokens; False uses 1.

    ``forward(output, targets)`` returns ``{"loss_align", "loss_box", "loss_centerness"}``.
    """

    def __init__(
        self,
        *,
        box_coder: BoxCoder | None = None,
        topk: int = 9,
        alpha: float = 0.25,
        gamma: float = 2.0,
        reg_weight: float = 2.0,
        normalized_token_targets: bool = True,
    ):
        super().__init__()
        self.box_coder = box_coder or BoxCoder()
        self.topk = topk
        self.alpha = alpha
        self.gamma = gamma
        self.reg_weight = reg_weight
        self.normalized_token_targets = normalized_token_targets

    def assign(self, output, targets: list[GroundingTarget]) -> list[torch.Tensor]:
        """ATSS assignment of every image: per image (A,) matched box index, -1 for background."""
        anchors = output.anchors
        return [atss_assign(anchors, t.boxes.to(anchors[0]), self.topk) for t in targets]

    def forward(
        self, output, targets: list[GroundingTarget], matched: list[torch.Tensor] | None = None
    ) -> dict[str, torch.Tensor]:
        logits = torch.cat(output.logits, dim=1).float()  # (B, A, T)
        B, A, T = logits.shape
        deltas = torch.cat(
            [r.flatten(2).transpose(1, 2) for r in output.box_regression], dim=1
        ).float()  # (B, A, 4)
        ctr = torch.cat([c.flatten(1) for c in output.centerness], dim=1).float()  # (B, A)
        anchors = torch.cat(output.anchors)  # (A, 4)
        matched = matched if matched is not None else self.assign(output, targets)

        # Dense over all anchors, positives weighted by 1 and background by 0: no boolean indexing, no host
        # sync (the box terms of background anchors are computed and multiplied away; A*4 values per image).
        M = max(t.boxes.shape[0] for t in targets)
        gt_boxes = anchors.new_zeros(B, max(M, 1), 4)
        gt_tokens = logits.new_zeros(B, max(M, 1), T)
        for b, target in enumerate(targets):
            m = target.boxes.shape[0]
            if m == 0:
                continue
            gt_boxes[b, :m] = target.boxes.to(anchors)
            tmap = target.token_map.to(logits)[:, :T]
            if self.normalized_token_targets:
                tmap = tmap / tmap.sum(1, keepdim=True).clamp_min(1.0)
            gt_tokens[b, :m, : tmap.shape[1]] = tmap
        index = torch.stack(matched)  # (B, A)
        pos = index >= 0
        weight = pos.to(logits.dtype)  # (B, A)
        rows, safe = torch.arange(B, device=index.device)[:, None], index.clamp_min(0)
        token_targets = gt_tokens[rows, safe] * weight[..., None]  # (B, A, T)
        gt = gt_boxes[rows, safe]  # (B, A, 4) matched box per anchor

        num_pos = weight.sum()
        norm = mean_over_ranks(num_pos).clamp_min(1.0)
        loss_align = token_focal_loss(logits, token_targets, output.text_mask, self.alpha, self.gamma) / norm
        flat_anchors = anchors.expand(B, A, 4).reshape(-1, 4)
        flat_gt = torch.where(pos.reshape(-1, 1), gt.reshape(-1, 4), flat_anchors)  # background: a valid box
        # GLIP encodes the matched boxes and decodes them again; that round trip is the identity, so the
        # centerness and GIoU targets use the boxes directly.
        ctr_target = centerness_target(flat_anchors, flat_gt).nan_to_num(0.0) * weight.reshape(-1)
        pred = self.box_coder.decode(deltas.reshape(-1, 4), flat_anchors)
        ctr_norm = mean_over_ranks(ctr_target.sum()).clamp_min(1e-6)
        flat_pos = pos.reshape(-1)
        loss_box = torch.where(flat_pos, giou_loss(pred, flat_gt) * ctr_target, 0.0).sum() / ctr_norm
        bce = F.binary_cross_entropy_with_logits(ctr.reshape(-1), ctr_target, reduction="none")
        loss_ctr = torch.where(flat_pos, bce, 0.0).sum() / norm
        return {"loss_align": loss_align, "loss_box": loss_box * self.reg_weight, "loss_centerness": loss_ctr}
