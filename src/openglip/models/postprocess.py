"""GLIP post-processing: token scores -> phrase scores -> candidates -> per-phrase NMS -> detections.

Follows GLIP's ATSS post-processor: a location is a candidate for phrase p if the mean sigmoid of p's token
logits exceeds ``pre_nms_thresh``; candidates are ranked by that score times sigmoid(centerness), the top
``pre_nms_top_n`` per level are decoded, boxes are clipped to the image ("+1" pixel convention), suppressed per
phrase (IoU > ``nms_thresh``) and the best ``detections_per_image`` kept. The final score is
``sqrt(alignment * centerness)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.ops import batched_nms

from .anchors import BoxCoder


@dataclass
class Candidates:
    """Pre-NMS candidates of one image. boxes (K, 4) xyxy in input pixels, scores (K,), labels (K,)."""

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor

    @staticmethod
    def cat(items: list[Candidates]) -> Candidates:
        return Candidates(
            torch.cat([c.boxes for c in items]),
            torch.cat([c.scores for c in items]),
            torch.cat([c.labels for c in items]),
        )


def phrase_scores(token_probs: torch.Tensor, pmap: torch.Tensor) -> torch.Tensor:
    """Mean token probability of each phrase: (N, T) x (P, T) binary map -> (N, P)."""
    T = token_probs.shape[-1]
    pmap = pmap[:, :T].to(token_probs.dtype)
    if pmap.shape[1] < T:  # the caption is shorter than the batch's longest one
        pmap = torch.nn.functional.pad(pmap, (0, T - pmap.shape[1]))
    counts = pmap.sum(dim=1)
    weights = pmap / counts.clamp_min(1.0)[:, None]
    return token_probs @ weights.t()


class PostProcessor:
    """Turns :class:`GLIPOutput` into per-image detections.

    Args:
        pre_nms_thresh: candidate threshold on the mean token probability (GLIP: 0.05).
        pre_nms_top_n: candidates kept per level (GLIP: 1000).
        nms_thresh: per-phrase NMS IoU threshold (GLIP: 0.6).
        detections_per_image: final detections (GLIP: 100).
        box_coder: decodes box deltas (weights 10/10/5/5).
    """

    def __init__(
        self,
        *,
        pre_nms_thresh: float = 0.05,
        pre_nms_top_n: int = 1000,
        nms_thresh: float = 0.6,
        detections_per_image: int = 100,
        box_coder: BoxCoder | None = None,
    ):
        self.pre_nms_thresh = pre_nms_thresh
        self.pre_nms_top_n = pre_nms_top_n
        self.nms_thresh = nms_thresh
        self.detections_per_image = detections_per_image
        self.box_coder = box_coder or BoxCoder()

    def candidates(self, output, index: int, pmap: torch.Tensor, label_offset: int = 0) -> Candidates:
        """Candidates of image ``index`` for the phrases of ``pmap`` (P, T), labels offset by ``label_offset``."""
        h, w = output.image_sizes[index]
        items = []
        for logits, deltas, ctr, anchors in zip(
            output.logits, output.box_regression, output.centerness, output.anchors
        ):
            scores = phrase_scores(logits[index].sigmoid(), pmap.to(logits.device))  # (N, P)
            keep = scores > self.pre_nms_thresh
            if not bool(keep.any()):
                continue
            ranked = scores * ctr[index].reshape(-1).sigmoid()[:, None]
            values = ranked[keep]
            k = min(self.pre_nms_top_n, values.numel())
            values, order = values.topk(k, sorted=False)
            loc, label = keep.nonzero()[order].unbind(1)
            box_deltas = deltas[index].reshape(4, -1).t()[loc]
            boxes = self.box_coder.decode(box_deltas, anchors[loc])
            boxes = torch.stack(
                [
                    boxes[:, 0].clamp(0, w - 1),
                    boxes[:, 1].clamp(0, h - 1),
                    boxes[:, 2].clamp(0, w - 1),
                    boxes[:, 3].clamp(0, h - 1),
                ],
                dim=1,
            )
            items.append(Candidates(boxes, values.sqrt(), label + label_offset))
        if not items:
            device = output.logits[0].device
            return Candidates(
                torch.zeros(0, 4, device=device),
                torch.zeros(0, device=device),
                torch.zeros(0, dtype=torch.long, device=device),
            )
        return Candidates.cat(items)

    def select(self, cand: Candidates) -> Candidates:
        """Per-phrase NMS ("+1" areas, IoU > threshold suppressed), best ``detections_per_image``, sorted."""
        if cand.scores.numel() == 0:
            return cand
        plus_one = cand.boxes + torch.tensor([0.0, 0.0, 1.0, 1.0], device=cand.boxes.device)
        keep = batched_nms(plus_one.float(), cand.scores.float(), cand.labels, self.nms_thresh)
        boxes, scores, labels = cand.boxes[keep], cand.scores[keep], cand.labels[keep]
        n, k = scores.numel(), self.detections_per_image
        if n > k > 0:
            # GLIP keeps every box scoring at least the k-th best score (ties can give a few more)
            thresh = torch.kthvalue(scores.float().cpu(), n - k + 1).values.item()
            mask = scores >= thresh
            boxes, scores, labels = boxes[mask], scores[mask], labels[mask]
        order = scores.argsort(descending=True, stable=True)
        return Candidates(boxes[order], scores[order], labels[order])

    def __call__(self, output, positive_maps: list[torch.Tensor]) -> list[Candidates]:
        """Detections of every image, in input (resized, unpadded) pixels.

        ``positive_maps[b]`` is the (P_b, T) binary phrase-token map of image b's caption.
        """
        return [self.select(self.candidates(output, b, pmap)) for b, pmap in enumerate(positive_maps)]
