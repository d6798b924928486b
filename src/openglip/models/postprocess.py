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
        """Candidates of image ``index`` for the phrases of ``pmap`` (P, T), labels offset by ``label_offset``
        (see :meth:`candidates_batch`)."""
        return self.candidates_batch(output, [index], pmap, label_offset)[0]

    def candidates_batch(
        self, output, indices: list[int], pmap: torch.Tensor, label_offset: int = 0
    ) -> list[Candidates]:
        """Candidates of the images ``indices`` (which share the phrases of ``pmap`` (P, T)), one per image.

        Fixed-size and free of host syncs, all levels and images at once: per level, the
        ``min(pre_nms_top_n, N_l * P)`` best (location, phrase) pairs by ``score * sigmoid(centerness)``
        among all pairs, the non-candidates (phrase score at most ``pre_nms_thresh``) masked below every
        candidate. The pairs kept are GLIP's (its top-k runs over the candidates only); masked pairs come
        back with score -1 and :meth:`select` drops them.
        """
        if len(indices) == 1:
            i = indices[0]

            def pick(x):
                return x[i : i + 1]

        else:
            index = torch.as_tensor(indices, device=output.logits[0].device)

            def pick(x):
                return x[index]

        logits = torch.cat([pick(x) for x in output.logits], dim=1)  # (G, N, T), N over all levels
        scores = phrase_scores(logits.sigmoid(), pmap.to(logits.device))  # (G, N, P)
        G, N, P = scores.shape
        ctr = torch.cat([pick(c).flatten(1) for c in output.centerness], dim=1).sigmoid()  # (G, N)
        is_cand = scores > self.pre_nms_thresh
        ranked = (scores * ctr[..., None]).masked_fill(~is_cand, -1.0).view(G, N * P)
        values, flats, start = [], [], 0
        for level in output.anchors:  # top-k per level, as GLIP
            n = level.shape[0] * P
            v, f = ranked[:, start : start + n].topk(min(self.pre_nms_top_n, n), dim=1, sorted=False)
            values.append(v)
            flats.append(f + start)
            start += n
        values, flat = torch.cat(values, 1), torch.cat(flats, 1)  # (G, K)
        loc, label = flat // P, flat % P
        deltas = torch.cat([pick(d).flatten(2) for d in output.box_regression], dim=2)  # (G, 4, N)
        box_deltas = deltas.gather(2, loc[:, None, :].expand(G, 4, loc.shape[1])).transpose(1, 2)  # (G, K, 4)
        anchors = torch.cat(output.anchors)[loc]  # (G, K, 4)
        boxes = self.box_coder.decode(box_deltas.reshape(-1, 4), anchors.reshape(-1, 4)).view(G, -1, 4)
        sizes = [output.image_sizes[i] for i in indices]
        limits = boxes.new_tensor([[w - 1, h - 1, w - 1, h - 1] for h, w in sizes]).view(G, 1, 4)
        boxes = torch.minimum(boxes.clamp_min(0), limits)
        valid = is_cand.view(G, N * P).gather(1, flat)
        final = torch.where(valid, values.clamp_min(0).sqrt(), -1.0)
        labels = label + label_offset
        return [Candidates(boxes[g], final[g], labels[g]) for g in range(G)]

    def select(self, cand: Candidates) -> Candidates:
        """Per-phrase NMS ("+1" areas, IoU > threshold suppressed), best ``detections_per_image``, sorted.

        The only host syncs of the post-processing are here (dropping the masked pairs, the NMS itself):
        the number of detections is data-dependent.
        """
        valid = (cand.scores >= 0).nonzero().squeeze(1)  # one sync for the three tensors
        cand = Candidates(cand.boxes[valid], cand.scores[valid], cand.labels[valid])
        if cand.scores.numel() == 0:
            return cand
        plus_one = cand.boxes + torch.tensor([0.0, 0.0, 1.0, 1.0], device=cand.boxes.device)
        keep = batched_nms(plus_one.float(), cand.scores.float(), cand.labels, self.nms_thresh)
        n, k = keep.numel(), self.detections_per_image
        if n > k > 0:
            # GLIP keeps every box scoring at least the k-th best score (ties can give a few more); NMS
            # returns the boxes by decreasing score, so they are a prefix
            kept = cand.scores[keep]
            keep = keep[: int((kept >= kept[k - 1]).sum())]
        boxes, scores, labels = cand.boxes[keep], cand.scores[keep], cand.labels[keep]
        order = scores.argsort(descending=True, stable=True)
        return Candidates(boxes[order], scores[order], labels[order])

    def __call__(self, output, positive_maps: list[torch.Tensor]) -> list[Candidates]:
        """Detections of every image, in input (resized, unpadded) pixels.

        ``positive_maps[b]`` is the (P_b, T) binary phrase-token map of image b's caption.
        """
        groups: dict[int, list[int]] = {}
        for b, pmap in enumerate(positive_maps):  # images with the same map are scored together
            groups.setdefault(id(pmap), []).append(b)
        cands: list = [None] * len(positive_maps)
        for members in groups.values():
            for b, c in zip(members, self.candidates_batch(output, members, positive_maps[members[0]])):
                cands[b] = c
        return [self.select(c) for c in cands]
