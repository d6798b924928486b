"""Box arithmetic shared by the official RegionCLIP branches: detectron2's ``Box2BoxTransform.apply_deltas``,
``Boxes.clip`` and the per-class soft-NMS of microsoft/RegionCLIP (``layers/soft_nms.py``), each reproducing the
official float32 operation order."""

from __future__ import annotations

import math

import torch

# detectron2's Box2BoxTransform default: a 16 px box may grow to 1000 px at most
SCALE_CLAMP = math.log(1000.0 / 16)


def apply_deltas(
    deltas: torch.Tensor, boxes: torch.Tensor, weights=(10.0, 10.0, 5.0, 5.0), scale_clamp=SCALE_CLAMP
):
    """detectron2's ``Box2BoxTransform.apply_deltas`` (decoded in float32, as the official code forces) for
    ``(N, 4k)`` deltas on ``(N, 4)`` boxes."""
    deltas = deltas.float()
    boxes = boxes.to(deltas.dtype)
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    ctr_x = boxes[:, 0] + 0.5 * widths
    ctr_y = boxes[:, 1] + 0.5 * heights
    wx, wy, ww, wh = weights
    dx, dy = deltas[:, 0::4] / wx, deltas[:, 1::4] / wy
    dw = torch.clamp(deltas[:, 2::4] / ww, max=scale_clamp)
    dh = torch.clamp(deltas[:, 3::4] / wh, max=scale_clamp)
    pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
    pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
    pred_w = torch.exp(dw) * widths[:, None]
    pred_h = torch.exp(dh) * heights[:, None]
    x1, y1 = pred_ctr_x - 0.5 * pred_w, pred_ctr_y - 0.5 * pred_h
    x2, y2 = pred_ctr_x + 0.5 * pred_w, pred_ctr_y + 0.5 * pred_h
    return torch.stack((x1, y1, x2, y2), dim=-1).reshape(deltas.shape)


def clip_boxes(boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``Boxes.clip``: x to ``[0, width]``, y to ``[0, height]`` of ``size = (height, width)``."""
    h, w = size
    x1, y1 = boxes[:, 0].clamp(min=0, max=w), boxes[:, 1].clamp(min=0, max=h)
    x2, y2 = boxes[:, 2].clamp(min=0, max=w), boxes[:, 3].clamp(min=0, max=h)
    return torch.stack((x1, y1, x2, y2), dim=-1)


def _soft_nms_decay(ious: torch.Tensor, method: str, sigma: float, linear_thresh: float) -> torch.Tensor:
    if method == "gaussian":
        return torch.exp(-torch.pow(ious, 2) / sigma)
    if method == "linear":
        return torch.where(ious > linear_thresh, 1 - ious, torch.ones_like(ious))
    if method == "hard":
        return (ious < linear_thresh).float()
    raise ValueError(f"soft-NMS method {method!r} is not one of gaussian, linear, hard")


def batched_soft_nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    classes: torch.Tensor,
    method: str = "gaussian",
    sigma: float = 0.5,
    linear_thresh: float = 0.3,
    prune: float = 0.001,
    topk: int = -1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The official per-class soft-NMS (``layers/soft_nms.py``) over all classes at once.

    As the official code: classes are separated by shifting each class's boxes by ``class * (max coordinate + 1)``
    in float32; each step selects the highest remaining score (the first one on ties), records it, decays every
    remaining score by its IoU with the selected box (on the shifted boxes), and drops the selected box and every
    score not above ``prune``. The official loop runs until nothing is left; its selections come out in order and
    never change afterwards, so stopping after ``topk`` selections (the caller keeps only those) gives the same
    result in a fraction of the steps.

    Returns:
        ``(indices into the inputs, decayed scores at selection)``, in selection order.
    """
    if boxes.numel() == 0:
        return boxes.new_zeros(0, dtype=torch.int64), scores.new_zeros(0)
    offsets = classes.to(boxes) * (boxes.max() + 1)
    boxes = boxes + offsets[:, None]
    scores, idxs = scores.clone(), torch.arange(scores.shape[0], device=scores.device)
    out_idx, out_scores = [], []
    while scores.numel() > 0 and (topk < 0 or len(out_idx) < topk):
        top = torch.argmax(scores)
        out_idx.append(idxs[top])
        out_scores.append(scores[top])
        top_box = boxes[top]
        # detectron2's pairwise_iou, elementwise in the same float32 operation order
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        top_area = (top_box[2] - top_box[0]) * (top_box[3] - top_box[1])
        wh = (torch.min(top_box[2:], boxes[:, 2:]) - torch.max(top_box[:2], boxes[:, :2])).clamp_(min=0)
        inter = wh[:, 0] * wh[:, 1]
        ious = torch.where(inter > 0, inter / (top_area + area - inter), inter.new_zeros(()))
        scores = scores * _soft_nms_decay(ious, method, sigma, linear_thresh)
        keep = scores > prune
        keep[top] = False
        boxes, scores, idxs = boxes[keep], scores[keep], idxs[keep]
    if not out_idx:
        return idxs.new_zeros(0), scores.new_zeros(0)
    return torch.stack(out_idx), torch.stack(out_scores)
