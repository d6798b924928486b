"""The transferred open-vocabulary detector (RegionCLIP Sec. 3.4): a two-stage detector whose region classifier is
the text embeddings of class names plus a learned background embedding.

Proposals come from the frozen class-agnostic RPN (RegionCLIP's transfer keeps its offline RPN too); the box head
is the student (RoIAlign + 2-FC head + projection, initialised from the pretrained student when given) plus a
class-agnostic box regressor. Class logits are ``cos(v, t_c) / T`` for each class name ``t_c`` and
``<v, w_bg> / T`` for background, ``v`` being the unit region embedding. Because classes are only text,
:meth:`OpenVocabDetector.predict` works for any list of class names.

Keeping what pretraining learnt. Closed-set transfer only ever pushes regions *away* from the training classes'
embeddings, never away from the classes it has no box of; in the pool-centred text space the shape words are
nearly opposite directions, so a region pushed off the training classes points at the words no box names, and
every region ends up scoring highest for a never-trained class (the training classes then get no detections at
all). Two remedies, both on by default:

* in training, foreground RoIs also compete with the caption concepts that do not describe them
  (``pool_negatives``, :func:`~openglip.regionclip.losses.with_concept_negatives`): the never-trained names
  come from the captions, so a region of a training class learns to score below them;
* at test time, a detector transferred from a pretrained student keeps a frozen copy of it and ensembles the
  two as ViLD does: ``p_c = p_det^(1 - w) * p_pre^w`` with ``w = unseen_weight`` (2/3) for classes without
  training boxes and ``w = seen_weight`` (1/3) for the training classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torchvision.models.detection import _utils as det_utils
from torchvision.ops import box_iou, clip_boxes_to_image

from .concepts import SentenceEncoder
from .inference import NameEmbedder, Postprocess, RegionPredictor, with_objectness
from .proposals import ProposalNetwork


@dataclass
class DetectorOutput:
    """What :class:`OpenVocabDetector` returns.

    Attributes:
        logits: ``(R, C + 1)`` class logits, background last; ``R`` regions of all images in order.
        box_deltas: ``(R, 4)`` class-agnostic box deltas relative to the regions.
        regions: per image ``(R_i, 4)`` the regions (sampled proposals + ground truth in training).
        objectness: per image ``(R_i,)`` the RPN's objectness (1 for added ground-truth boxes).
        labels: training only, ``(R,)`` targets in ``0..C`` (``C`` = background).
        box_targets: training only, ``(R, 4)`` encoded targets (meaningful on foreground rows).
        region_emb: ``(R, D)`` the unit region embeddings behind ``logits``.
    """

    logits: torch.Tensor
    box_deltas: torch.Tensor
    regions: list[torch.Tensor]
    objectness: list[torch.Tensor]
    labels: torch.Tensor | None = None
    box_targets: torch.Tensor | None = None
    region_emb: torch.Tensor | None = None


class OpenVocabDetector(RegionPredictor):
    """RPN (frozen) + student box head + text classifier with a background embedding.

    Args:
        rpn: the trained class-agnostic RPN; it stays frozen and in eval mode.
        student: the box head (a student of :mod:`.model`).
        temperature: ``T`` of the classifier.
        rois_per_image, positive_fraction, fg_iou: RoI sampling in training.
        post: test-time settings.
        templates, encoder: the text space (prompt templates and sentence encoder name).
        text: an already loaded sentence encoder (else loaded on first :meth:`predict`).
        pretrained: the frozen pretrained student, the ensemble partner of the class scores (None: no ensemble).
        seen_classes: the class names transfer trained on.
        unseen_weight: ``w`` of the calibration for classes transfer had no box of (0: off).
        seen_weight: ``w`` for the training classes (0: their scores are the detector's alone).
    """

    def __init__(
        self,
        *,
        rpn: ProposalNetwork,
        student: nn.Module,
        temperature: float,
        rois_per_image: int,
        positive_fraction: float,
        fg_iou: float,
        post: Postprocess,
        templates: Sequence[str],
        encoder: str,
        text: SentenceEncoder | None = None,
        pretrained: nn.Module | None = None,
        seen_classes: Sequence[str] = (),
        unseen_weight: float = 0.0,
        seen_weight: float = 0.0,
    ):
        super().__init__()
        self.rpn = rpn.requires_grad_(False).eval()
        self.student = student
        self.pretrained = None if pretrained is None else pretrained.requires_grad_(False).eval()
        self.seen_classes = tuple(seen_classes)
        self.unseen_weight, self.seen_weight = unseen_weight, seen_weight
        self.background = nn.Parameter(
            torch.zeros(student.embed_dim)
        )  # RegionCLIP: zero-initialised, not normalised
        self.box_regressor = nn.Linear(student.feat_dim, 4)
        nn.init.normal_(self.box_regressor.weight, std=0.001)
        nn.init.zeros_(self.box_regressor.bias)
        self.temperature = temperature
        self.box_coder = det_utils.BoxCoder((10.0, 10.0, 5.0, 5.0))
        self.matcher = det_utils.Matcher(fg_iou, fg_iou, allow_low_quality_matches=False)
        self.sampler = det_utils.BalancedPositiveNegativeSampler(rois_per_image, positive_fraction)
        self.post = post
        self.names = NameEmbedder(encoder=encoder, templates=templates, text=text)

    def train(self, mode: bool = True):
        super().train(mode)
        self.rpn.eval()  # frozen proposals: eval-mode top-n, no RPN losses
        if self.pretrained is not None:
            self.pretrained.eval()
        return self

    @torch.no_grad()
    def _sample(self, proposals, objectness, boxes, labels, num_classes):
        """Add the ground truth to the proposals, match (IoU >= fg_iou) and sample RoIs per image."""
        regions, scores, roi_labels, targets = [], [], [], []
        for props, obj, gt, gt_labels in zip(proposals, objectness, boxes, labels):
            props = torch.cat([props, gt])
            obj = torch.cat([obj, obj.new_ones(len(gt))])
            if len(gt):
                matched = self.matcher(box_iou(gt, props))  # (P,) gt index, or -1 below fg_iou
                fg = matched >= 0
                lab = torch.where(fg, gt_labels[matched.clamp(min=0)], num_classes)
                matched_boxes = gt[matched.clamp(min=0)]
            else:
                lab = torch.full((len(props),), num_classes, dtype=torch.int64, device=props.device)
                matched_boxes = props
            pos, neg = self.sampler([(lab != num_classes).to(torch.int64)])
            keep = torch.nonzero(pos[0] | neg[0]).squeeze(1)
            regions.append(props[keep])
            scores.append(obj[keep])
            roi_labels.append(lab[keep])
            targets.append(self.box_coder.encode_single(matched_boxes[keep], props[keep]))
        return regions, scores, torch.cat(roi_labels), torch.cat(targets)

    def forward(
        self,
        images: torch.Tensor,
        class_emb: torch.Tensor,
        boxes: list[torch.Tensor] | None = None,
        labels: list[torch.Tensor] | None = None,
    ) -> DetectorOutput:
        """Classify and refine the regions of normalised ``images (B, 3, H, W)`` against ``class_emb (C, D)``.

        With ``boxes``/``labels`` (ground truth per image, labels in ``0..C-1``) RoIs are sampled for training
        and the output carries their targets; without them every proposal is scored.
        """
        with torch.no_grad():
            proposals, objectness, _ = self.rpn(images)
        out_labels = box_targets = None
        if boxes is not None:
            if labels is None:
                raise ValueError("training the detector needs labels with the boxes")
            proposals, objectness, out_labels, box_targets = self._sample(
                proposals, objectness, boxes, labels, class_emb.shape[0]
            )
        res = self.student(images, proposals)
        v = res.region_emb  # (R, D) unit
        logits = (
            torch.cat([v @ class_emb.t(), v @ self.background[:, None]], dim=1) / self.temperature
        )  # (R, C+1)
        return DetectorOutput(
            logits, self.box_regressor(res.region_feats), proposals, objectness, out_labels, box_targets, v
        )

    def centre(self) -> torch.Tensor:
        return self.student.text_centre

    def score(self, batch: torch.Tensor, text: torch.Tensor, names: Sequence[str]):
        out = self(batch, text)
        probs = out.logits.softmax(-1)[:, :-1]  # (R, C)
        unseen = torch.tensor([n not in self.seen_classes for n in names], device=probs.device)
        # per class: the pretrained student's geometric weight (ViLD's ensemble, separate for seen and unseen)
        w = torch.where(unseen, self.unseen_weight, self.seen_weight).to(probs)  # (C,)
        if self.pretrained is not None and bool((w > 0).any()):
            pre = self.pretrained(batch, out.regions)
            pre_probs = (pre.logit_scale * pre.region_emb @ text.t()).softmax(-1)  # (R, C)
            probs = probs.clamp(min=1e-12) ** (1 - w) * pre_probs.clamp(min=1e-12) ** w
        probs = with_objectness(probs, out.objectness, self.post.multiply_rpn_score)
        counts = [len(r) for r in out.regions]
        for regions, deltas, p in zip(out.regions, out.box_deltas.split(counts), probs.split(counts)):
            boxes = self.box_coder.decode_single(deltas, regions)
            yield clip_boxes_to_image(boxes, tuple(batch.shape[-2:])), p
