"""The recognition branch of the official RegionCLIP ``CLIPFastRCNN``: CLIP ResNet, region head, post-processing.

This reproduces microsoft/RegionCLIP's inference path after the proposals (``detectron2/modeling/backbone/
clip_backbone.py``, ``roi_heads/clip_roi_heads.py``, ``roi_heads/fast_rcnn.py``, ``layers/soft_nms.py``,
``postprocessing.py``), with module names that give the official ``state_dict`` keys:

1. :func:`build_clip_backbone` — CLIP's ``ModifiedResNet`` (open_clip's, BatchNorm swapped for frozen BN) whose
   ``res4`` is the C4 feature map; ``layer4`` and ``attnpool`` run per region.
2. :class:`RegionHead` — RoIAlign on res4, ``layer4``, ``attnpool``, then :class:`BoxPredictor` (cosine classifier
   against text embeddings with a zero background embedding, class-agnostic box deltas).
3. :func:`detect` — ``fast_rcnn_inference_single_image`` (hard NMS or the official gaussian soft-NMS) and
   ``detector_postprocess``, with the settings of the two official test configs (:class:`HeadSettings`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms, roi_align

from ..errors import UsageError
from .clip import CLIP_MEAN, CLIP_STD
from .rcnn_boxes import SCALE_CLAMP, apply_deltas, batched_soft_nms, clip_boxes


@dataclass(frozen=True)
class ClipResNetSpec:
    """One CLIP ResNet as ``build_clip_resnet_backbone`` sizes it from ``MODEL.RESNETS.DEPTH``.

    Attributes:
        layers: Bottlenecks per stage.
        width: stem width (res2 has ``4 * width`` channels, res4 ``16 * width``).
        output_dim: attention-pooling output (the text-embedding size, ``MODEL.CLIP.TEXT_EMB_DIM``).
        heads: attention-pooling heads (``width * 32 // 64``).
        input_resolution: CLIP's pretraining image side; ``attnpool`` expects a ``resolution / 32`` grid.
    """

    layers: tuple[int, int, int, int]
    width: int
    output_dim: int
    heads: int
    input_resolution: int

    @property
    def pooler_resolution(self) -> int:
        """RoIAlign side on res4 (stride 16) that ``layer4`` (stride 2) turns into the attnpool grid."""
        return self.input_resolution // 16


# RegionCLIP names RN50x4 "depth 200" in its configs
CLIP_RESNETS: dict[str, ClipResNetSpec] = {
    "RN50": ClipResNetSpec((3, 4, 6, 3), 64, 1024, 32, 224),
    "RN101": ClipResNetSpec((3, 4, 23, 3), 64, 512, 32, 224),
    "RN50x4": ClipResNetSpec((4, 6, 10, 6), 80, 640, 40, 288),
}


class ClipResNet(nn.Module):
    """CLIP's ``ModifiedResNet`` with every BatchNorm frozen, as the official detection backbone.

    The layers are open_clip's (its Bottleneck and AttentionPool2d are CLIP's code, as RegionCLIP's are), taken
    over as this module's children, so ``state_dict()`` keys are the official ``backbone.*`` keys (``conv1``,
    ``bn1``, ``layer1.0.downsample.0``, ``attnpool.q_proj``, ...); torchvision's ``FrozenBatchNorm2d`` holds the
    same four buffers as detectron2's and no ``num_batches_tracked``.

    Raises:
        UsageError: open_clip (the ``[clip]`` extra) is not installed.
    """

    def __init__(self, spec: ClipResNetSpec):
        super().__init__()
        try:
            from open_clip.modified_resnet import ModifiedResNet
            from open_clip.utils import freeze_batch_norm_2d
        except ImportError:
            raise UsageError(
                "RegionCLIP's CLIP backbone needs open_clip: pip install 'openglip[clip]'"
            ) from None
        net = ModifiedResNet(
            list(spec.layers), spec.output_dim, spec.heads, spec.input_resolution, spec.width
        )
        for name, child in freeze_batch_norm_2d(net).named_children():
            self.add_module(name, child)
        self.spec = spec

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """Three 3x3 conv-BN-ReLU (the first one strided) and a 2x2 average pool: stride 4."""
        for conv, bn in ((self.conv1, self.bn1), (self.conv2, self.bn2), (self.conv3, self.bn3)):
            x = F.relu(bn(conv(x)))
        return self.avgpool(x)

    def res4(self, x: torch.Tensor) -> torch.Tensor:
        """C4 features ``(B, 16 * width, H/16, W/16)``: stem and ``layer1``-``layer3``."""
        x = self.stem(x.to(self.conv1.weight.dtype))
        return self.layer3(self.layer2(self.layer1(x)))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The official C4 backbone's output (``pool_vec=False``, ``OUT_FEATURES ["res4"]``)."""
        return {"res4": self.res4(x)}


def build_clip_backbone(arch: str = "RN50") -> ClipResNet:
    """The recognition backbone of ``CLIPFastRCNN`` for ``arch`` (RN50, RN101 or RN50x4), in eval mode.

    Raises:
        ValueError: an architecture RegionCLIP does not build.
    """
    if arch not in CLIP_RESNETS:
        raise ValueError(f"unknown CLIP ResNet {arch!r}; RegionCLIP builds {sorted(CLIP_RESNETS)}")
    return ClipResNet(CLIP_RESNETS[arch]).eval()


def clip_preprocess(images: Sequence[torch.Tensor], size_divisibility: int = 0) -> torch.Tensor:
    """``CLIPFastRCNN.preprocess_image``: uint8 RGB ``(3, H, W)`` images -> a normalised ``(B, 3, H, W)`` batch.

    ``(x / 255 - mean) / std`` in float32 in that order (bit-exact with the official input), then detectron2's
    ``ImageList.from_tensors``: zero padding at the right/bottom to the largest image (rounded up to a multiple of
    ``size_divisibility``; the C4 config uses 0).
    """
    device = images[0].device
    mean = torch.tensor(CLIP_MEAN, device=device).view(-1, 1, 1)
    std = torch.tensor(CLIP_STD, device=device).view(-1, 1, 1)
    normed = [((x / 255.0) - mean) / std for x in images]
    h, w = (max(x.shape[d] for x in normed) for d in (-2, -1))
    if size_divisibility > 1:
        h, w = (-(-side // size_divisibility) * size_divisibility for side in (h, w))  # round up
    batch = normed[0].new_zeros((len(normed), 3, h, w))
    for img, out in zip(normed, batch):
        out[:, : img.shape[-2], : img.shape[-1]].copy_(img)
    return batch


class BoxPredictor(nn.Module):
    """``FastRCNNOutputLayers`` with ``USE_TEXT_EMB_CLASSIFIER``: a cosine classifier on text embeddings.

    ``logits = cat(norm(x) @ norm(W).T, norm(x) @ w_bg.T) / temperature``; ``W`` is ``test_cls_score`` in eval mode
    when the config has an open-set test vocabulary (``OPENSET_TEST_TEXT_EMB_PATH``), else ``cls_score``; the
    background embedding ``w_bg`` is frozen at zero, so the background logit is 0. None of the classifier Linears
    has a bias (the official ``use_bias`` is False); ``bbox_pred`` (class-agnostic, 4 deltas) has one.

    Args:
        embed_dim: region-embedding size (1024 for RN50).
        num_classes: rows of ``cls_score`` (the training vocabulary).
        test_classes: rows of ``test_cls_score``; None when there is none.
        temperature: ``MODEL.CLIP.CLSS_TEMP``.
    """

    def __init__(self, embed_dim: int, num_classes: int, test_classes: int | None = None, temperature=0.01):
        super().__init__()
        self.temperature = temperature
        self.cls_score = nn.Linear(embed_dim, num_classes, bias=False)
        self.cls_bg_score = nn.Linear(embed_dim, 1, bias=False)
        nn.init.zeros_(self.cls_bg_score.weight)
        self.test_cls_score = nn.Linear(embed_dim, test_classes, bias=False) if test_classes else None
        self.bbox_pred = nn.Linear(embed_dim, 4)

    def classifier(self) -> nn.Linear:
        """The class-embedding Linear in use: the open-set test one in eval mode, when present."""
        if not self.training and self.test_cls_score is not None:
            return self.test_cls_score
        return self.cls_score

    @torch.no_grad()
    def set_classifier(self, embeddings: torch.Tensor) -> None:
        """Classify into any vocabulary: ``embeddings (K, D)`` become ``test_cls_score``, the open-set test
        classifier, as the official constructor builds it from ``OPENSET_TEST_TEXT_EMB_PATH`` (a bias-free Linear
        holding the matrix, not normalised); ``cls_score`` keeps the training vocabulary."""
        new = nn.Linear(embeddings.shape[1], embeddings.shape[0], bias=False)
        new.to(device=self.cls_score.weight.device, dtype=self.cls_score.weight.dtype).weight.copy_(
            embeddings
        )
        self.test_cls_score = new.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits (R, K+1), deltas (R, 4))`` for region embeddings ``x (R, D)``; background is the last column."""
        if x.dim() > 2:
            x = torch.flatten(x, start_dim=1)
        normed = F.normalize(x, p=2.0, dim=1)
        cls = normed @ F.normalize(self.classifier().weight, p=2.0, dim=1).t()
        scores = torch.cat((cls, self.cls_bg_score(normed)), dim=1) / self.temperature
        return scores, self.bbox_pred(x)


class RegionHead(nn.Module):
    """``CLIPRes5ROIHeads`` with attention pooling: the official ``roi_heads`` module (keys ``box_predictor.*``).

    The per-region layers are the backbone's own ``layer4`` and ``attnpool`` (the official head holds no res5).

    Args:
        embed_dim (int): region-embedding size.
        num_classes (int): ``cls_score`` rows (``MODEL.ROI_HEADS.NUM_CLASSES``).
        test_classes (int | None): ``test_cls_score`` rows, or None.
        pooler_resolution (int): RoIAlign output side (14 for RN50, 18 for RN50x4).
        temperature (float): ``MODEL.CLIP.CLSS_TEMP``.
    """

    spatial_scale = 1.0 / 16  # res4 has stride 16 in every CLIP ResNet

    def __init__(
        self, embed_dim=1024, num_classes=1203, test_classes=None, *, pooler_resolution=14, temperature=0.01
    ):
        super().__init__()
        self.pooler_resolution = pooler_resolution
        self.box_predictor = BoxPredictor(embed_dim, num_classes, test_classes, temperature)

    def set_classifier(self, embeddings: torch.Tensor) -> None:
        """See :meth:`BoxPredictor.set_classifier`."""
        self.box_predictor.set_classifier(embeddings)

    def pool(self, res4: torch.Tensor, proposals: Sequence[torch.Tensor]) -> torch.Tensor:
        """ROIAlignV2 (``aligned=True``, adaptive sampling) of one ``(R_i, 4)`` xyxy box tensor per image."""
        boxes = [p.to(res4.dtype) for p in proposals]
        return roi_align(res4, boxes, self.pooler_resolution, self.spatial_scale, 0, True)

    def forward(
        self,
        res4: torch.Tensor,
        proposals: Sequence[torch.Tensor],
        backbone: ClipResNet,
        stages: dict[str, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(cls_logits (R, K+1), box deltas (R, 4), region embeddings (R, D))`` over all images' proposals.

        Args:
            res4: the backbone's C4 map of the batch.
            proposals: per image, ``(R_i, 4)`` xyxy boxes in the (resized) input's pixels.
            backbone: the recognition backbone whose ``layer4`` and ``attnpool`` run per region.
            stages: when given, receives the intermediate ``clip.roi.pooled_res4`` and ``clip.roi.res5``.
        """
        pooled = self.pool(res4, proposals)
        if pooled.shape[0] == 0:  # attention pooling cannot take an empty batch
            emb = res4.new_zeros(0, self.box_predictor.bbox_pred.in_features)
        else:
            res5 = backbone.layer4(pooled)
            emb = backbone.attnpool(res5)
            if stages is not None:
                stages.update({"clip.roi.pooled_res4": pooled, "clip.roi.res5": res5})
        logits, deltas = self.box_predictor(emb)
        return logits, deltas, emb


@dataclass(frozen=True)
class HeadSettings:
    """Test-time settings of the official box predictor (fields default to detectron2's ``get_cfg()``).

    Attributes:
        score_thresh: ``ROI_HEADS.SCORE_THRESH_TEST`` (strictly greater is kept).
        nms_thresh: ``ROI_HEADS.NMS_THRESH_TEST`` (also the linear soft-NMS threshold).
        soft_nms: ``ROI_HEADS.SOFT_NMS_ENABLED``.
        soft_nms_method: ``"gaussian"``, ``"linear"`` or ``"hard"``.
        soft_nms_sigma: gaussian decay ``exp(-iou^2 / sigma)``.
        soft_nms_prune: candidates whose decayed score is not above this are dropped.
        topk: ``TEST.DETECTIONS_PER_IMAGE`` (negative: all).
        no_box_delta: ``MODEL.CLIP.NO_BOX_DELTA``: the proposals are the output boxes.
        multiply_rpn_score: ``MODEL.CLIP.MULTIPLY_RPN_SCORE``: score ``(prob * raw RPN logit) ** 0.5``.
        box_reg_weights: ``ROI_BOX_HEAD.BBOX_REG_WEIGHTS``.
        scale_clamp: largest ``dw``/``dh`` after the weights.
    """

    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    soft_nms: bool = False
    soft_nms_method: str = "gaussian"
    soft_nms_sigma: float = 0.5
    soft_nms_prune: float = 0.001
    topk: int = 100
    no_box_delta: bool = False
    multiply_rpn_score: bool = False
    box_reg_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)
    scale_clamp: float = SCALE_CLAMP

    @classmethod
    def ovd(cls) -> HeadSettings:
        """``CLIP_fast_rcnn_R_50_C4_ovd.yaml`` as ``test_transfer_learning.sh`` runs it (soft-NMS turned on)."""
        return cls(score_thresh=0.001, soft_nms=True, topk=100)

    @classmethod
    def zsinf(cls) -> HeadSettings:
        """``CLIP_fast_rcnn_R_50_C4_zsinf.yaml`` as ``test_zeroshot_inference.sh`` runs it."""
        return cls(score_thresh=0.02, nms_thresh=0.5, topk=300, no_box_delta=True, multiply_rpn_score=True)


@dataclass
class Detections:
    """Detections of one image: ``boxes (N, 4)`` xyxy, ``scores (N,)``, ``classes (N,)`` (0-based rows of the
    classifier) and ``proposal_index (N,)`` (row of the image's proposal list), in output order."""

    boxes: torch.Tensor
    scores: torch.Tensor
    classes: torch.Tensor
    proposal_index: torch.Tensor

    def __getitem__(self, keep) -> Detections:
        return Detections(self.boxes[keep], self.scores[keep], self.classes[keep], self.proposal_index[keep])


@dataclass
class HeadOutput:
    """What :func:`detect` computes: the final ``detections`` (original image pixels), the same before
    ``detector_postprocess`` (``resized``), and the per-RoI tensors over all images, as the official code makes
    them: ``pred_boxes (R, 4)`` before clipping, ``probs (R, K+1)`` and ``scores_for_nms (R, K+1)``."""

    detections: list[Detections]
    resized: list[Detections]
    pred_boxes: torch.Tensor
    probs: torch.Tensor
    scores_for_nms: torch.Tensor
    masks: list[torch.Tensor] | None = None  # per image (N, H0, W0) bool, when the model has a mask head


def fast_rcnn_inference_single_image(
    boxes: torch.Tensor, scores: torch.Tensor, image_size: tuple[int, int], settings: HeadSettings
) -> Detections:
    """The official ``fast_rcnn_inference_single_image`` for ``boxes (R, 4)`` (class-agnostic) or ``(R, 4K)`` and
    ``scores (R, K+1)``: drop rows with a non-finite value, drop the background column, clip to ``image_size``
    (height, width), keep scores above the threshold, per-class (soft-)NMS, the first ``topk``.

    ``proposal_index`` counts rows of the input (the official ``kept_indices`` count rows after the non-finite
    filter; both agree when no row is dropped).
    """
    rows = torch.arange(boxes.shape[0], device=boxes.device)
    valid = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores).all(dim=1)
    if not valid.all():
        boxes, scores, rows = boxes[valid], scores[valid], rows[valid]
    scores = scores[:, :-1]
    per_class = boxes.shape[1] // 4
    boxes = clip_boxes(boxes.reshape(-1, 4), image_size).view(-1, per_class, 4)
    mask = scores > settings.score_thresh
    inds = mask.nonzero()  # (RoI, class) pairs in row-major order, as the candidates below
    boxes = boxes[inds[:, 0], 0] if per_class == 1 else boxes[mask]
    scores = scores[mask]
    if settings.soft_nms:
        opts = (
            settings.soft_nms_method,
            settings.soft_nms_sigma,
            settings.nms_thresh,
            settings.soft_nms_prune,
        )
        keep, scores = batched_soft_nms(boxes, scores, inds[:, 1], *opts, topk=settings.topk)
    else:
        # detectron2's batched_nms is torchvision's below 40000 boxes and, above, the same per-class NMS followed
        # by the same unstable descending sort that torchvision's CPU path uses
        keep = batched_nms(boxes.float(), scores, inds[:, 1], settings.nms_thresh)
        scores = scores[keep]
    if settings.topk >= 0:
        keep, scores = keep[: settings.topk], scores[: settings.topk]
    return Detections(boxes[keep], scores, inds[keep, 1], rows[inds[keep, 0]])


def detector_postprocess(det: Detections, image_size: tuple, original_size: tuple) -> Detections:
    """detectron2's ``detector_postprocess``: scale boxes from ``image_size`` to ``original_size`` (both
    (height, width)), clip to it and drop empty boxes."""
    scale_y, scale_x = (out / size for out, size in zip(original_size, image_size))  # Python floats
    boxes = det.boxes.clone()
    boxes[:, 0::2] *= scale_x
    boxes[:, 1::2] *= scale_y
    boxes = clip_boxes(boxes, original_size)
    nonempty = (boxes[:, 2] - boxes[:, 0] > 0) & (boxes[:, 3] - boxes[:, 1] > 0)
    return Detections(boxes, det.scores, det.classes, det.proposal_index)[nonempty]


def detect(
    cls_logits: torch.Tensor,
    deltas: torch.Tensor,
    proposals: Sequence[torch.Tensor],
    rpn_logits: Sequence[torch.Tensor] | None,
    image_sizes: Sequence[tuple[int, int]],
    original_sizes: Sequence[tuple[int, int]],
    settings: HeadSettings,
) -> HeadOutput:
    """``box_predictor.inference`` and ``CLIPFastRCNN._postprocess`` on the head's outputs.

    Args:
        cls_logits: ``(R, K+1)`` over all images' proposals.
        deltas: ``(R, 4)`` box deltas.
        proposals: per image, the ``(R_i, 4)`` proposal boxes the head ran on.
        rpn_logits: per image, the proposals' raw objectness logits (needed with ``multiply_rpn_score``).
        image_sizes: per image, the proposals' (height, width): the offline input's size before padding.
        original_sizes: per image, (height, width) to rescale the detections to.
        settings: :class:`HeadSettings`, e.g. ``HeadSettings.ovd()``.
    """
    boxes = torch.cat(list(proposals), dim=0)
    if not settings.no_box_delta:
        boxes = apply_deltas(deltas, boxes, settings.box_reg_weights, settings.scale_clamp)
    probs = F.softmax(cls_logits, dim=-1)
    scores = probs
    if settings.multiply_rpn_score:
        if rpn_logits is None:
            raise ValueError("multiply_rpn_score needs the proposals' RPN logits")
        # official quirk: the raw (not sigmoided) logit; a negative one makes the row NaN, dropped as non-finite
        scores = (probs * torch.cat(list(rpn_logits))[:, None]) ** 0.5
    counts = [len(p) for p in proposals]
    resized = [
        fast_rcnn_inference_single_image(b, s, size, settings)
        for b, s, size in zip(boxes.split(counts), scores.split(counts), image_sizes)
    ]
    final = list(map(detector_postprocess, resized, image_sizes, original_sizes))
    return HeadOutput(final, resized, boxes, probs, scores)
