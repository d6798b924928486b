"""The "offline" localisation branch of the official RegionCLIP ``CLIPFastRCNN``: a frozen detectron2 R50-C4 or
R50-FPN backbone (:mod:`.rcnn_resnet`) with its RPN, which proposes the regions that the CLIP branch then
classifies.

Everything here mirrors microsoft/RegionCLIP (a detectron2 fork, commit ``4b8513b``) closely enough to load its
released RPN checkpoints (read by :func:`openglip.regionclip.releases.read_release`) without renaming: module
names give the official ``offline_backbone.*`` / ``offline_proposal_generator.*`` keys. The anchors, the box
decoding and the top-k / NMS selection follow detectron2 step by step, since they decide *which* boxes come out.
The convolutions, NMS and norms are PyTorch / torchvision ops.

Three kinds, named like :func:`openglip.regionclip.releases.rpn_kind` (:func:`build_offline_rpn`):

* ``"c4"``: ``configs/COCO-InstanceSegmentation/mask_rcnn_R_50_C4_1x_ovd_FSD.yaml`` (``rpn_coco_*.pth``),
  ResNet-50 to ``res4`` (stride 16, FrozenBN), 15 anchors per location, pre-NMS top 6000, NMS 0.7, post-NMS
  top 1000.
* ``"fpn"``: ``configs/LVISv1-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml`` (``rpn_lvis_866.pth``),
  ResNet-50 (FrozenBN) + FPN ``p2``..``p6`` (no norm), 3 anchors per location, pre-NMS top 1000 *per level*
  (``Base-RCNN-FPN.yaml``), NMS 0.7, post-NMS top 1000.
* ``"fpn_lsj"``: the same config with ``MODEL.CLIP.OFFLINE_RPN_LSJ_PRETRAINED True`` (``rpn_lvis_866_lsj.pth``,
  trained with large-scale jitter): ``CLIPFastRCNN.from_config`` then sets ``BACKBONE.FREEZE_AT 0``,
  ``RESNETS.NORM SyncBN``, ``FPN.NORM SyncBN`` and ``RPN.CONV_DIMS [-1, -1]``: BatchNorm in every ResNet and FPN
  conv (the FPN convs lose their bias) and two 3x3 conv + ReLU in the RPN head (``conv.conv0``, ``conv.conv1``).
  The test-time settings are those of ``"fpn"``.

``MODEL.CLIP.OFFLINE_RPN_NMS_THRESH`` / ``OFFLINE_RPN_POST_NMS_TOPK_TEST`` of a ``CLIPFastRCNN`` config override
the RPN config's values; they are the caller's (:func:`build_offline_rpn` arguments): the LVIS zero-shot config
``CLIP_fast_rcnn_R_50_C4_zsinf.yaml`` sets NMS 0.9, the LVIS transfer test none (:data:`.rcnn.PRESETS`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms

from ..errors import UsageError
from .rcnn_boxes import apply_deltas
from .rcnn_resnet import FPN, ResNet

# detectron2's default (caffe2 MSRA) pixel mean, in BGR order; the std is 1 (cfg.MODEL.PIXEL_STD).
OFFLINE_PIXEL_MEAN_BGR = (103.530, 116.280, 123.675)

# --------------------------------------------------------------------------------------------------------------
# RPN: StandardRPNHead, DefaultAnchorGenerator, Box2BoxTransform and find_top_rpn_proposals
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RPNSettings:
    """The offline RPN's test-time settings (detectron2 ``MODEL.RPN`` / ``MODEL.ANCHOR_GENERATOR`` names).

    Attributes:
        in_features: backbone outputs the RPN reads, finest first.
        strides: their strides in input pixels.
        sizes: anchor sizes (sqrt of the area) per level.
        aspect_ratios: anchor aspect ratios (h / w), the same on every level.
        offset: anchor centre offset in strides (``ANCHOR_GENERATOR.OFFSET``, 0.0 in detectron2's defaults).
        pre_nms_topk: proposals kept per level before NMS (``PRE_NMS_TOPK_TEST``).
        post_nms_topk: proposals kept per image after NMS (``POST_NMS_TOPK_TEST``).
        nms_thresh: NMS IoU threshold (applied within each level).
        min_box_size: boxes with a side ``<=`` this (pixels) are dropped (``PROPOSAL_GENERATOR.MIN_SIZE``).
        box_weights: ``RPN.BBOX_REG_WEIGHTS``.
    """

    in_features: tuple[str, ...]
    strides: tuple[int, ...]
    sizes: tuple[tuple[float, ...], ...]
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    offset: float = 0.0
    pre_nms_topk: int = 6000
    post_nms_topk: int = 1000
    nms_thresh: float = 0.7
    min_box_size: float = 0.0
    box_weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)


PRESETS: dict[str, RPNSettings] = {
    "c4": RPNSettings(in_features=("res4",), strides=(16,), sizes=((32, 64, 128, 256, 512),)),
    "fpn": RPNSettings(
        in_features=("p2", "p3", "p4", "p5", "p6"),
        strides=(4, 8, 16, 32, 64),
        sizes=((32,), (64,), (128,), (256,), (512,)),
        pre_nms_topk=1000,
    ),
}
# the LSJ flag changes the architecture only (build_offline_rpn), not the RPN's test-time settings
PRESETS["fpn_lsj"] = PRESETS["fpn"]


def cell_anchors(sizes: tuple[float, ...], aspect_ratios: tuple[float, ...]) -> torch.Tensor:
    """detectron2's canonical anchors centred on (0, 0), size-major then ratio: ``(len(sizes)*len(ratios), 4)``.

    Computed in Python floats and rounded once to float32, without torchvision's rounding to integers.
    """
    anchors = []
    for size in sizes:
        area = size**2.0
        for ratio in aspect_ratios:
            w = math.sqrt(area / ratio)
            h = ratio * w
            anchors.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
    return torch.tensor(anchors, dtype=torch.float32)


def grid_anchors(cell: torch.Tensor, height: int, width: int, stride: int, offset: float) -> torch.Tensor:
    """All anchors of an ``height x width`` map, ``(H*W*A, 4)`` xyxy, ordered (y, x, anchor) like the RPN head's
    flattened outputs."""
    xs = torch.arange(offset * stride, width * stride, step=stride, dtype=torch.float32, device=cell.device)
    ys = torch.arange(offset * stride, height * stride, step=stride, dtype=torch.float32, device=cell.device)
    sy, sx = torch.meshgrid(ys, xs, indexing="ij")
    sx, sy = sx.reshape(-1), sy.reshape(-1)
    shifts = torch.stack((sx, sy, sx, sy), dim=1)
    return (shifts.view(-1, 1, 4) + cell.view(1, -1, 4)).reshape(-1, 4)


class StandardRPNHead(nn.Module):
    """3x3 conv(s) + ReLU shared by all levels, then 1x1 convs for ``A`` objectness logits and ``4A`` anchor deltas
    per location.

    Args:
        channels: input (and hidden) channels.
        num_anchors: anchors per location.
        num_convs: ``len(RPN.CONV_DIMS)``. One gives the plain ``conv`` of old checkpoints; more give detectron2's
            ``conv.conv0``, ``conv.conv1``, ... (each with its ReLU), as in the LSJ RPN.
    """

    def __init__(self, channels: int, num_anchors: int, num_convs: int = 1):
        super().__init__()
        if num_convs < 1:
            raise UsageError(f"the RPN head needs at least one conv, got {num_convs}")
        if num_convs == 1:
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        else:
            self.conv = nn.Sequential()
            for k in range(num_convs):
                self.conv.add_module(f"conv{k}", nn.Conv2d(channels, channels, 3, padding=1))
        self.objectness_logits = nn.Conv2d(channels, num_anchors, 1)
        self.anchor_deltas = nn.Conv2d(channels, num_anchors * 4, 1)

    def forward(self, features: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        convs = [self.conv] if isinstance(self.conv, nn.Conv2d) else list(self.conv)
        logits, deltas = [], []
        for x in features:
            t = x
            for conv in convs:  # detectron2's Conv2d(..., activation=ReLU): a ReLU after every conv
                t = F.relu(conv(t))
            logits.append(self.objectness_logits(t))
            deltas.append(self.anchor_deltas(t))
        return logits, deltas


class RPNOutputs(NamedTuple):
    """The RPN's dense outputs, per level: anchors ``(H*W*A, 4)``, objectness logits ``(N, A, H, W)`` and anchor
    deltas ``(N, 4A, H, W)`` (the layouts of the official reference's ``offline.rpn.*`` stages)."""

    anchors: list[torch.Tensor]
    objectness_logits: list[torch.Tensor]
    anchor_deltas: list[torch.Tensor]


def find_top_rpn_proposals(
    proposals: list[torch.Tensor],
    logits: list[torch.Tensor],
    image_sizes: list[tuple[int, int]],
    settings: RPNSettings,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """detectron2's test-time proposal selection.

    Args:
        proposals: per level, decoded boxes ``(N, H*W*A, 4)``.
        logits: per level, objectness logits ``(N, H*W*A)``.
        image_sizes: ``(h, w)`` of each image before padding (boxes are clipped to it).
        settings: top-k, NMS and minimum-size settings.

    Returns:
        Per image ``(boxes (R, 4) xyxy, logits (R,))``, the raw logits (no sigmoid), highest first.
    """
    top_boxes, top_logits, level_ids = [], [], []
    for level, (boxes_i, logits_i) in enumerate(zip(proposals, logits)):
        k = min(logits_i.shape[1], settings.pre_nms_topk)
        # a full descending sort narrowed to k, not topk(): the official code does this (sort is faster), and the
        # order of equal logits, which NMS depends on, must come out as there
        sorted_logits, idx = logits_i.sort(descending=True, dim=1)
        top_logits.append(sorted_logits[:, :k])
        idx = idx[:, :k]
        top_boxes.append(torch.gather(boxes_i, 1, idx[..., None].expand(-1, -1, 4)))
        level_ids.append(torch.full((k,), level, dtype=torch.int64, device=boxes_i.device))
    all_boxes, all_logits = torch.cat(top_boxes, 1), torch.cat(top_logits, 1)
    all_levels = torch.cat(level_ids)

    results = []
    for n, (h, w) in enumerate(image_sizes):
        boxes, scores, levels = all_boxes[n], all_logits[n], all_levels
        valid = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores)
        if not valid.all():
            boxes, scores, levels = boxes[valid], scores[valid], levels[valid]
        # clamp to [0, w] / [0, h] (exact, so the same values as detectron2's per-coordinate Boxes.clip)
        boxes = torch.minimum(boxes.clamp(min=0), boxes.new_tensor([w, h, w, h]))
        sides = boxes[:, 2:] - boxes[:, :2]
        keep = (sides > settings.min_box_size).all(dim=1)
        boxes, scores, levels = boxes[keep], scores[keep], levels[keep]
        # NMS within each level. detectron2's own loop for >= 40000 boxes and torchvision's batched_nms (which
        # it calls below that) keep the same boxes in the same order, so torchvision's serves for both.
        keep = batched_nms(boxes.float(), scores, levels, settings.nms_thresh)[: settings.post_nms_topk]
        results.append((boxes[keep], scores[keep]))
    return results


class OfflineRPN(nn.Module):
    """detectron2's ``RPN`` at test time: ``rpn_head`` (the only weights), anchors and proposal selection.

    Args:
        settings: see :class:`RPNSettings`.
        channels: channels of the input features.
        head_convs: hidden 3x3 convs of the head (``len(RPN.CONV_DIMS)``).
    """

    def __init__(self, settings: RPNSettings, channels: int, head_convs: int = 1):
        super().__init__()
        self.settings = settings
        sizes = settings.sizes if len(settings.sizes) > 1 else settings.sizes * len(settings.strides)
        cells = [cell_anchors(tuple(s), settings.aspect_ratios) for s in sizes]
        if len({len(c) for c in cells}) != 1:
            raise UsageError("every RPN level needs the same number of anchors per location")
        for i, cell in enumerate(cells):  # non-persistent: not in the state dict, as in detectron2
            self.register_buffer(f"cell_anchors_{i}", cell, persistent=False)
        self.rpn_head = StandardRPNHead(channels, len(cells[0]), head_convs)

    def head_outputs(self, features: dict[str, torch.Tensor]) -> RPNOutputs:
        """Objectness logits, anchor deltas and anchors on every level in ``settings.in_features``."""
        maps = [features[name] for name in self.settings.in_features]
        logits, deltas = self.rpn_head(maps)
        anchors = [
            grid_anchors(
                getattr(self, f"cell_anchors_{i}"), x.shape[-2], x.shape[-1], stride, self.settings.offset
            )
            for i, (x, stride) in enumerate(zip(maps, self.settings.strides))
        ]
        return RPNOutputs(anchors, logits, deltas)

    def select(
        self, outputs: RPNOutputs, image_sizes: list[tuple[int, int]]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Decode the deltas onto the anchors and pick the proposals (:func:`find_top_rpn_proposals`)."""
        proposals, logits = [], []
        for anchors, logit, delta in zip(*outputs):
            n, _, h, w = logit.shape
            # (N, A, H, W) -> (N, H*W*A) and (N, A*4, H, W) -> (N, H*W*A, 4): anchor index fastest
            logits.append(logit.permute(0, 2, 3, 1).flatten(1))
            delta = delta.view(n, -1, 4, h, w).permute(0, 3, 4, 1, 2).flatten(1, -2)
            boxes = anchors.unsqueeze(0).expand(n, -1, -1).reshape(-1, 4)
            decoded = apply_deltas(delta.reshape(-1, 4), boxes, self.settings.box_weights)
            proposals.append(decoded.view(n, -1, 4))
        return find_top_rpn_proposals(proposals, logits, image_sizes, self.settings)

    def forward(
        self, features: dict[str, torch.Tensor], image_sizes: list[tuple[int, int]]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per image ``(boxes (R, 4) xyxy in input pixels, raw objectness logits (R,))``, highest logit first."""
        return self.select(self.head_outputs(features), image_sizes)


# --------------------------------------------------------------------------------------------------------------
# building and preprocessing
# --------------------------------------------------------------------------------------------------------------


def build_offline_rpn(
    kind: str, *, nms_thresh: float | None = None, post_nms_topk: int | None = None
) -> tuple[nn.Module, OfflineRPN]:
    """The official offline backbone and RPN, in eval mode and frozen.

    Args:
        kind: ``"c4"`` (R50-C4, COCO), ``"fpn"`` (R50-FPN, LVIS) or ``"fpn_lsj"`` (the BatchNorm R50-FPN with a
            two-conv RPN head of ``OFFLINE_RPN_LSJ_PRETRAINED``).
        nms_thresh: ``MODEL.CLIP.OFFLINE_RPN_NMS_THRESH``; None keeps the RPN config's own 0.7.
        post_nms_topk: ``MODEL.CLIP.OFFLINE_RPN_POST_NMS_TOPK_TEST``; None keeps the RPN config's own 1000.

    Returns:
        ``(backbone, proposal_generator)``; the backbone maps a ``(B, 3, H, W)`` batch from
        :func:`offline_preprocess` to ``{"res4": ...}`` or ``{"p2": ..., "p6": ...}`` and has a
        ``size_divisibility`` attribute.
    """
    if kind not in PRESETS:
        raise UsageError(f"unknown offline RPN {kind!r}; choose one of {sorted(PRESETS)}")
    settings = PRESETS[kind]
    # Quirk kept: CLIPFastRCNN.from_config tests these overrides for truth, so 0 / 0.0 mean "not set" too.
    if nms_thresh:
        settings = replace(settings, nms_thresh=float(nms_thresh))
    if post_nms_topk:
        settings = replace(settings, post_nms_topk=int(post_nms_topk))
    if kind == "c4":
        backbone, channels, head_convs = ResNet(out_features=("res4",)), 1024, 1
    elif kind == "fpn":
        backbone, channels, head_convs = FPN(), 256, 1
    else:  # FREEZE_AT 0 + SyncBN everywhere + RPN.CONV_DIMS [-1, -1]
        backbone, channels, head_convs = FPN(norm="SyncBN", resnet_norm="SyncBN"), 256, 2
    rpn = OfflineRPN(settings, channels=channels, head_convs=head_convs)
    for module in (backbone, rpn):
        module.eval().requires_grad_(False)
    return backbone, rpn


def offline_preprocess(
    images: list[torch.Tensor], size_divisibility: int = 0
) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """The offline branch's input: RGB -> BGR, minus the caffe pixel mean (std 1), zero-padded on the right and
    bottom to a common size that is a multiple of ``size_divisibility`` (32 for FPN, 0 for C4).

    Args:
        images: uint8 RGB ``(3, H, W)`` tensors, already resized.
        size_divisibility: the backbone's ``size_divisibility``.

    Returns:
        ``(batch (B, 3, H', W') float32, [(H, W), ...])``.
    """
    if not images:
        raise UsageError("offline_preprocess needs at least one image")
    mean = torch.tensor(OFFLINE_PIXEL_MEAN_BGR, device=images[0].device).view(-1, 1, 1)
    # uint8 - float32 promotes to float32: exactly float32(v) - mean, as in the official code
    normalised = [(img[[2, 1, 0]] - mean) / 1.0 for img in images]
    sizes = [(int(x.shape[-2]), int(x.shape[-1])) for x in normalised]
    height, width = max(s[0] for s in sizes), max(s[1] for s in sizes)
    if size_divisibility > 1:
        height = (height + size_divisibility - 1) // size_divisibility * size_divisibility
        width = (width + size_divisibility - 1) // size_divisibility * size_divisibility
    batch = normalised[0].new_zeros((len(images), 3, height, width))
    for out, img in zip(batch, normalised):
        out[:, : img.shape[-2], : img.shape[-1]].copy_(img)
    return batch, sizes
