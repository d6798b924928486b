"""The modules that are traced into ONNX: a GLIP model plus what a runtime needs around it.

Shapes: B batch, N locations over all pyramid levels (level by level, row-major inside a level), T tokens,
P phrases, K detections per image.

* :class:`OpenVocabGraph` takes ``images`` and a tokenized prompt (``input_ids``, ``attention_mask``) and returns
  the raw head outputs plus decoded boxes; phrases are scored outside (``openglip_onnx.py``).
* :class:`FixedVocabGraph` bakes the encoded prompt in (its pre-fusion text features become constants: the text
  encoder is not in the graph) and also returns per-phrase scores.
* Either one with ``nms=True`` also runs openglip's selection rules in the graph (candidate threshold, top-n per
  level, per-phrase ONNX ``NonMaxSuppression``, best K per image); it then needs ``image_sizes`` to clip boxes the
  way :class:`~openglip.models.postprocess.PostProcessor` does before suppression (and the open-vocabulary graph a
  ``positive_map`` to turn token scores into phrase scores).
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import nms

from ..models.anchors import BoxCoder
from ..models.glip import GLIP

# ------------------------------------------------------------------------------------------------------------
# ONNX NonMaxSuppression, for both exporters
# ------------------------------------------------------------------------------------------------------------


def _nms_reference(boxes, scores, max_out: int, iou: float, score_thr: float) -> torch.Tensor:
    """What ONNX ``NonMaxSuppression`` returns, computed with torchvision (used while tracing)."""

    selected = []
    B, P, _ = scores.shape
    for b in range(B):
        for p in range(P):
            s = scores[b, p]
            idx = (s > score_thr).nonzero().squeeze(1)
            keep = idx[nms(boxes[b, idx], s[idx], iou)][:max_out]
            selected.append(torch.stack([torch.full_like(keep, b), torch.full_like(keep, p), keep], dim=1))
    return torch.cat(selected) if selected else torch.zeros(0, 3, dtype=torch.long)


@torch.library.custom_op("openglip_export::nms", mutates_args=())
def onnx_nms(
    boxes: torch.Tensor, scores: torch.Tensor, max_out: int, iou: float, score_thr: float
) -> torch.Tensor:
    """ONNX ``NonMaxSuppression``: boxes (B, N, 4), scores (B, P, N) -> selected (K, 3) [batch, phrase, box]."""
    return _nms_reference(boxes, scores, max_out, iou, score_thr)


@onnx_nms.register_fake
def _(boxes, scores, max_out, iou, score_thr):
    k = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((k, 3), dtype=torch.long)


def nms_onnx_translation(boxes, scores, max_out: int, iou: float, score_thr: float):
    """The dynamo exporter's translation of :func:`onnx_nms` (an onnxscript function)."""
    from onnxscript import opset18 as op

    return op.NonMaxSuppression(
        boxes,
        scores,
        op.Constant(value_ints=[max_out]),
        op.Constant(value_floats=[iou]),
        op.Constant(value_floats=[score_thr]),
    )


class _NMSFunction(torch.autograd.Function):
    """The TorchScript exporter's route to ONNX ``NonMaxSuppression`` (a symbolic on an autograd function)."""

    @staticmethod
    def forward(ctx, boxes, scores, max_out: int, iou: float, score_thr: float):
        return _nms_reference(boxes, scores, max_out, iou, score_thr)

    @staticmethod
    def symbolic(g, boxes, scores, max_out: int, iou: float, score_thr: float):
        return g.op(
            "NonMaxSuppression",
            boxes,
            scores,
            g.op("Constant", value_t=torch.tensor([max_out], dtype=torch.long)),
            g.op("Constant", value_t=torch.tensor([iou], dtype=torch.float32)),
            g.op("Constant", value_t=torch.tensor([score_thr], dtype=torch.float32)),
        )


def _nms(boxes, scores, max_out: int, iou: float, score_thr: float) -> torch.Tensor:
    if torch.jit.is_tracing():
        return _NMSFunction.apply(boxes, scores, max_out, iou, score_thr)
    return onnx_nms(boxes, scores, max_out, iou, score_thr)


# ------------------------------------------------------------------------------------------------------------
# Graphs
# ------------------------------------------------------------------------------------------------------------


def level_anchors(feature: torch.Tensor, stride: int, size: float) -> torch.Tensor:
    """Anchors of one level from its (dynamic) map size: (H*W, 4) xyxy, as
    :func:`openglip.models.anchors.level_anchors` computes them (same arithmetic, so the same floats)."""
    h, w = feature.shape[-2:]
    half, centre = (size - 1) / 2.0, (stride - 1) / 2.0
    xs = torch.arange(w, device=feature.device, dtype=torch.float32) * stride  # (W,)
    ys = torch.arange(h, device=feature.device, dtype=torch.float32) * stride  # (H,)
    sx = xs.view(1, -1).expand(h, w).reshape(-1)
    sy = ys.view(-1, 1).expand(h, w).reshape(-1)
    lo, hi = centre - half, centre + half
    return torch.stack([sx + lo, sy + lo, sx + hi, sy + hi], dim=1)


class _GraphBase(nn.Module):
    """Runs a :class:`GLIP` from images and pre-fusion text features to flat head outputs and boxes."""

    def __init__(
        self,
        model: GLIP,
        *,
        box_coder: BoxCoder,
        nms: bool,
        pre_nms_thresh: float,
        pre_nms_top_n: int,
        nms_thresh: float,
        detections_per_image: int,
    ):
        super().__init__()
        self.model = model
        self.box_coder = box_coder
        self.strides = tuple(model.anchor_generator.strides)
        self.sizes = tuple(model.anchor_generator.sizes)
        self.nms = nms
        self.pre_nms_thresh = float(pre_nms_thresh)
        self.pre_nms_top_n = int(pre_nms_top_n)
        self.nms_thresh = float(nms_thresh)
        self.detections_per_image = int(detections_per_image)

    def heads(self, images: torch.Tensor, hidden: torch.Tensor, text_mask: torch.Tensor):
        """Returns logits (B, N, T), box_regression (B, N, 4), centerness (B, N) logits, boxes (B, N, 4) xyxy in
        input pixels (not clipped), and the number of locations of each level."""
        visual = self.model.encode_image(images)
        fused_visual, fused_text = self.model.tower(visual, hidden, text_mask)
        logits, deltas, centers = self.model.head(fused_visual, fused_text)
        B = images.shape[0]
        logits = torch.cat(logits, dim=1)  # (B, N, T)
        deltas = torch.cat([d.flatten(2).transpose(1, 2) for d in deltas], dim=1)  # (B, N, 4)
        centers = torch.cat([c.flatten(1) for c in centers], dim=1)  # (B, N)
        anchors = torch.cat(
            [level_anchors(f, s, z) for f, s, z in zip(visual, self.strides, self.sizes)]
        )  # (N, 4)
        boxes = self.box_coder.decode(deltas.reshape(-1, 4), anchors.repeat(B, 1)).view(B, -1, 4)
        counts = [f.shape[-2] * f.shape[-1] for f in visual]
        return logits, deltas, centers, boxes, counts

    def select(self, scores, centers, boxes, counts, image_sizes):
        """openglip's PostProcessor rules in the graph.

        Args:
            scores: (B, N, P) phrase scores; centers: (B, N) centerness logits; boxes: (B, N, 4).
            counts: locations per level; image_sizes: (B, 2) int64 (h, w) of each image inside the padding.

        Returns det_boxes (B, K, 4) xyxy in input pixels, det_scores (B, K) (0 where there is no detection),
        det_labels (B, K) phrase indices, best first.
        """
        B, N, P = scores.shape
        candidate = scores > self.pre_nms_thresh
        ranked = torch.where(candidate, scores * centers.sigmoid().unsqueeze(-1), -1.0)  # (B, N, P)
        # top-n per level: keep what ranks at least as high as the level's n-th candidate. The level is padded
        # with n entries of -2 so that k stays a constant (a level with fewer candidates keeps them all).
        keep, start = [], 0
        for count in counts:
            level = ranked[:, start : start + count].reshape(B, -1)
            padded = torch.cat([level, level.new_full((B, self.pre_nms_top_n), -2.0)], dim=1)
            kth = padded.topk(self.pre_nms_top_n, dim=1).values[:, -1:]
            keep.append((level >= kth).view(B, count, P))
            start += count
        keep = torch.cat(keep, dim=1) & candidate
        final = torch.where(keep, ranked.clamp_min(0.0).sqrt(), 0.0)  # (B, N, P)

        h = image_sizes[:, 0:1].to(boxes.dtype)  # (B, 1)
        w = image_sizes[:, 1:2].to(boxes.dtype)
        zero = torch.zeros_like(h)
        boxes = torch.stack(
            [
                torch.minimum(torch.maximum(boxes[..., 0], zero), w - 1),
                torch.minimum(torch.maximum(boxes[..., 1], zero), h - 1),
                torch.minimum(torch.maximum(boxes[..., 2], zero), w - 1),
                torch.minimum(torch.maximum(boxes[..., 3], zero), h - 1),
            ],
            dim=-1,
        )  # (B, N, 4)
        plus_one = boxes + torch.tensor([0.0, 0.0, 1.0, 1.0])  # GLIP's "+1" areas
        selected = _nms(
            plus_one, final.transpose(1, 2).contiguous(), self.detections_per_image, self.nms_thresh, 0.0
        )  # (S, 3) [batch, phrase, location]
        b, p, n = selected[:, 0], selected[:, 1], selected[:, 2]
        dense = torch.zeros(B, N * P, dtype=final.dtype)
        dense = dense.index_put((b, n * P + p), final[b, n, p])  # (B, N*P) survivors' scores
        K = self.detections_per_image
        padded = torch.cat([dense, dense.new_zeros(B, K)], dim=1)
        det_scores, index = padded.topk(K, dim=1)  # (B, K)
        index = torch.where(det_scores > 0, index, 0)
        # index = location * P + phrase. Not ``index % P``: with P a symbolic size (open vocabulary) the dynamo
        # exporter makes that aten.remainder.Scalar, which onnxscript cannot translate with a symbolic operand
        location = index // P
        det_labels = index - location * P
        det_boxes = torch.gather(boxes, 1, location.unsqueeze(-1).expand(B, K, 4))
        return det_boxes, det_scores, det_labels


class OpenVocabGraph(_GraphBase):
    """Images + a tokenized prompt -> head outputs (and detections with ``nms=True``).

    ``forward(images (B,3,H,W), input_ids (B,T), attention_mask (B,T)[, positive_map (B,P,T), image_sizes (B,2)])``
    returns ``logits (B,N,T), boxes (B,N,4), centerness (B,N), box_regression (B,N,4)`` and with ``nms``
    ``det_boxes (B,K,4), det_scores (B,K), det_labels (B,K)``.
    """

    def forward(self, images, input_ids, attention_mask, positive_map=None, image_sizes=None):
        text = self.model.encode_text(input_ids, attention_mask)
        logits, deltas, centers, boxes, counts = self.heads(images, text.hidden, attention_mask)
        outputs = (logits, boxes, centers, deltas)
        if not self.nms:
            return outputs
        weights = positive_map / positive_map.sum(-1, keepdim=True).clamp_min(1.0)  # (B, P, T)
        scores = logits.sigmoid() @ weights.transpose(1, 2)  # (B, N, P)
        return outputs + self.select(scores, centers, boxes, counts, image_sizes)


class FixedVocabGraph(_GraphBase):
    """Images -> per-phrase scores and boxes for one prompt baked in as constants.

    Args:
        model, box_coder, ...: as :class:`OpenVocabGraph`.
        hidden: (1, T, Dt) the prompt's encoded (pre-fusion) text features.
        text_mask: (1, T).
        positive_map: (P, T) binary phrase-token map.

    ``forward(images (B,3,H,W)[, image_sizes (B,2)])`` returns ``scores (B,N,P), boxes (B,N,4), centerness (B,N),
    logits (B,N,T), box_regression (B,N,4)`` and with ``nms`` the three ``det_*`` outputs.
    """

    def __init__(self, model, *, hidden, text_mask, positive_map, **kwargs):
        super().__init__(model, **kwargs)
        pmap = positive_map.float()
        self.register_buffer("hidden", hidden.detach().float().clone())
        self.register_buffer("text_mask", text_mask.detach().clone())
        # the phrase score is the mean probability of the phrase's tokens (openglip.models.postprocess)
        self.register_buffer("phrase_weights", (pmap / pmap.sum(1, keepdim=True).clamp_min(1.0)).t())

    def forward(self, images, image_sizes=None):
        B = images.shape[0]
        hidden = self.hidden.expand(B, -1, -1)
        text_mask = self.text_mask.expand(B, -1)
        logits, deltas, centers, boxes, counts = self.heads(images, hidden, text_mask)
        scores = logits.sigmoid() @ self.phrase_weights  # (B, N, P)
        outputs = (scores, boxes, centers, logits, deltas)
        if not self.nms:
            return outputs
        return outputs + self.select(scores, centers, boxes, counts, image_sizes)
