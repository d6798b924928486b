"""RegionCLIP's released detector, ``CLIPFastRCNN`` (microsoft/RegionCLIP), as one OpenGLIP predictor.

Two branches, as the official inference runs them:

1. localisation (frozen, "offline"): a detectron2 R50-C4 or R50-FPN RPN on the caffe-normalised BGR image
   (:mod:`.rcnn_rpn`) proposes up to 1000 boxes with their raw objectness logits;
2. recognition: the CLIP ResNet (:mod:`.rcnn_head`) gives res4 of the CLIP-normalised image, each proposal is
   RoI-aligned, run through ``layer4`` and CLIP's attention pooling, and classified by cosine similarity with the
   class names' CLIP text embeddings (:mod:`.clip_text`, temperature 0.01, a zero background embedding); the
   box deltas, the score transformation and (soft-)NMS follow the official test scripts (:data:`PRESETS`).

The module's ``state_dict()`` keys are the official ones (``offline_backbone.*``, ``offline_proposal_generator.*``,
``backbone.*``, ``roi_heads.*``, ``lang_encoder.*``), so released files load without a renaming table
(:func:`load_official`, :mod:`.releases`). The classifier of the user's vocabulary is ``test_cls_score`` (the
official open-set test classifier); ``cls_score`` keeps the training vocabulary the file came with.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..errors import UsageError
from ..images import load_image
from ..models.masks import paste_masks
from ..structures import Detections
from .clip_text import CLIPLanguageEncoder, concept_embeddings
from .inference import prompt_groups, to_detections
from .rcnn_head import (
    CLIP_RESNETS,
    HeadOutput,
    HeadSettings,
    RegionHead,
    build_clip_backbone,
    clip_preprocess,
    detect,
)
from .rcnn_rpn import build_offline_rpn, offline_preprocess

OFFICIAL_KIND = "regionclip-official"  # the OpenGLIP file kind of a converted release


@dataclass(frozen=True)
class RCNNConfig:
    """One official test configuration.

    Attributes:
        arch: the CLIP ResNet (``RN50`` or ``RN50x4``).
        rpn: the offline RPN: ``c4`` (COCO), ``fpn`` (LVIS), ``fpn_lsj`` (LVIS, large-scale jitter), or None
            (boxes are given, e.g. ground truth).
        rpn_nms_thresh: ``MODEL.CLIP.OFFLINE_RPN_NMS_THRESH`` (None: the RPN config's own 0.7).
        proposals: ``MODEL.CLIP.OFFLINE_RPN_POST_NMS_TOPK_TEST``: proposals per image (1000; the region head's
            cost grows with it).
        train_classes: rows of ``cls_score``: the vocabulary the detector was transferred on (48 COCO base
            classes, 866 LVIS base classes; 1 when the file has none).
        head: the box predictor's test-time settings.
        mask_on: the class-agnostic mask head of the LVIS detector (``MODEL.MASK_ON``).
        min_size, max_size: ``ResizeShortestEdge`` of the test mapper.
    """

    arch: str = "RN50"
    rpn: str | None = "c4"
    rpn_nms_thresh: float | None = None
    proposals: int = 1000
    train_classes: int = 48
    head: HeadSettings = field(default_factory=HeadSettings.ovd)
    mask_on: bool = False
    min_size: int = 800
    max_size: int = 1333

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> RCNNConfig:
        head = data.get("head", {})
        head = HeadSettings(**{**head, "box_reg_weights": tuple(head.get("box_reg_weights", (10, 10, 5, 5)))})
        return cls(**{**data, "head": head})


PRESETS: dict[str, RCNNConfig] = {
    # test_transfer_learning.sh, COCO: CLIP_fast_rcnn_R_50_C4_ovd.yaml with soft-NMS, the C4 RPN of 48 base classes
    "coco": RCNNConfig(rpn="c4", train_classes=48, head=HeadSettings.ovd()),
    # test_transfer_learning.sh, LVIS: CLIP_fast_rcnn_R_50_C4.yaml (RPN score multiplied in, 300 per image),
    # soft-NMS, the large-scale-jitter FPN RPN of 866 base classes
    "lvis": RCNNConfig(
        rpn="fpn_lsj",
        train_classes=866,
        head=HeadSettings(score_thresh=0.02, soft_nms=True, topk=300, multiply_rpn_score=True),
        mask_on=True,
    ),
    # test_zeroshot_inference.sh: the pretrained (not transferred) model, CLIP_fast_rcnn_R_50_C4_zsinf.yaml: the
    # LVIS FPN RPN at NMS 0.9, the proposals are the boxes, sqrt(probability * raw RPN logit), NMS 0.5, 300
    "zeroshot": RCNNConfig(rpn="fpn", rpn_nms_thresh=0.9, train_classes=1, head=HeadSettings.zsinf()),
}


def resized_size(height: int, width: int, short: int, longest: int) -> tuple[int, int]:
    """detectron2's ``ResizeShortestEdge.get_output_shape``: the shorter side to ``short``, the longer at most
    ``longest``, rounded half up."""
    scale = short / min(height, width)
    new_h, new_w = (short, scale * width) if height < width else (scale * height, short)
    if max(new_h, new_w) > longest:
        scale = longest / max(new_h, new_w)
        new_h, new_w = new_h * scale, new_w * scale
    return int(new_h + 0.5), int(new_w + 0.5)


def resize_image(image: Image.Image, short: int, longest: int) -> torch.Tensor:
    """The official test mapper on a decoded RGB image: PIL bilinear resize of the uint8 image, as detectron2's
    ``ResizeTransform`` does it, -> uint8 ``(3, H, W)``."""
    h, w = resized_size(image.height, image.width, short, longest)
    if (h, w) != (image.height, image.width):
        image = image.resize((w, h), Image.BILINEAR)
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)


class MaskHead(nn.Module):
    """The LVIS detector's ``MaskRCNNConvUpsampleHead`` (``NUM_CONV 0``, class-agnostic): a 2x transposed conv with
    ReLU and a 1x1 predictor on the ``layer4`` features of each detected box (7 x 7 -> 14 x 14 mask logits)."""

    def __init__(self, in_channels: int, dim: int = 256):
        super().__init__()
        self.deconv = nn.ConvTranspose2d(in_channels, dim, kernel_size=2, stride=2)
        self.predictor = nn.Conv2d(dim, 1, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predictor(torch.relu(self.deconv(x)))


class OfficialRegionCLIP(nn.Module):
    """RegionCLIP's ``CLIPFastRCNN`` at test time, a :class:`~openglip.structures.Predictor`.

    Args:
        cfg: the test configuration (:data:`PRESETS`).
        text: build ``lang_encoder`` (CLIP's text transformer) to embed class names.
    """

    def __init__(self, cfg: RCNNConfig, *, text: bool = True):
        super().__init__()
        if cfg.arch not in CLIP_RESNETS:
            raise UsageError(f"unknown CLIP ResNet {cfg.arch!r}; RegionCLIP's releases are RN50 and RN50x4")
        self.cfg = cfg
        if cfg.rpn is not None:
            self.offline_backbone, self.offline_proposal_generator = build_offline_rpn(
                cfg.rpn, nms_thresh=cfg.rpn_nms_thresh, post_nms_topk=cfg.proposals
            )
        self.backbone = build_clip_backbone(cfg.arch)
        spec = CLIP_RESNETS[cfg.arch]
        self.roi_heads = RegionHead(
            spec.output_dim, cfg.train_classes, pooler_resolution=spec.pooler_resolution
        )
        if cfg.mask_on:
            self.roi_heads.mask_head = MaskHead(spec.width * 32)
        self.lang_encoder = CLIPLanguageEncoder(cfg.arch) if text else None
        self.vocabulary: tuple[str, ...] = ()
        # (names, embeddings) that came with the model (a released concept_emb file); asked-for names found there
        # use those rows, in the order asked
        self.stored: tuple[tuple[str, ...], torch.Tensor] | None = None
        self._embedded: dict[tuple[str, ...], torch.Tensor] = {}
        self.eval().requires_grad_(False)

    # ------------------------------------------------------------------------------------------ vocabulary
    def set_vocabulary(self, names: Sequence[str], embeddings: torch.Tensor | None = None) -> None:
        """Classify into ``names``: their text embeddings (given, e.g. a released ``concept_emb`` file, or made by
        ``lang_encoder`` with the official 81 prompt templates) become the test classifier.

        Raises:
            UsageError: no names, an empty name, a count that does not match ``embeddings``, or no text encoder
                to embed new names with.
        """
        names = tuple(str(n).strip() for n in names)
        if not names or any(not n for n in names):
            raise UsageError(f"class names must be non-empty, got {list(names)[:5]}")
        if names == self.vocabulary and embeddings is None:
            return
        if embeddings is None:
            embeddings = self._embedded.get(names)
        if embeddings is None and self.stored is not None:
            stored_names, stored = self.stored
            if names == stored_names:  # the whole stored vocabulary (LVIS repeats some cleaned names)
                embeddings = stored
            elif set(names) <= set(stored_names):
                row = {n: i for i, n in enumerate(stored_names)}
                embeddings = stored[[row[n] for n in names]]
        if embeddings is None:
            if self.lang_encoder is None:
                raise UsageError(
                    "this RegionCLIP detector has no text encoder to embed class names: give text weights "
                    "(--text regionclip_pretrained-cc_rn50.pth or OpenAI's RN50.pt) or class embeddings "
                    "(--concepts concept_emb/FILE.pth with one name per row)"
                )
            device = self.backbone.conv1.weight.device
            embeddings = concept_embeddings(self.lang_encoder, names).to(device)
            self._embedded[names] = embeddings
        if embeddings.shape[0] != len(names):
            raise UsageError(f"{embeddings.shape[0]} class embeddings for {len(names)} names")
        dim = self.roi_heads.box_predictor.cls_score.in_features
        if embeddings.shape[1] != dim:
            raise UsageError(
                f"class embeddings are {embeddings.shape[1]}-d; this {self.cfg.arch} model needs {dim}"
            )
        self.roi_heads.box_predictor.set_classifier(embeddings.to(self.backbone.conv1.weight))
        self.vocabulary = names

    # ------------------------------------------------------------------------------------------ forward
    @torch.no_grad()
    def run(
        self,
        images: Sequence[torch.Tensor],
        original_sizes: Sequence[tuple[int, int]],
        boxes: Sequence[torch.Tensor] | None = None,
    ) -> HeadOutput:
        """The official inference on resized uint8 RGB ``(3, H, W)`` images: proposals from the offline RPN (or
        ``boxes`` per image, in resized pixels), the region head, the score transformation and NMS.

        Returns:
            :class:`~openglip.regionclip.rcnn_head.HeadOutput`: detections in ``original_sizes`` pixels.
        """
        device = self.backbone.conv1.weight.device
        images = [im.to(device) for im in images]
        sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
        logits = None
        if boxes is None:
            if self.cfg.rpn is None:
                raise UsageError("this RegionCLIP configuration has no RPN: give the boxes to classify")
            batch, _ = offline_preprocess(images, self.offline_backbone.size_divisibility)
            found = self.offline_proposal_generator(self.offline_backbone(batch), sizes)
            proposals, logits = [p for p, _ in found], [s for _, s in found]
        else:
            proposals = [b.to(device=device, dtype=torch.float32) for b in boxes]
        res4 = self.backbone.res4(clip_preprocess(images))
        cls_logits, deltas, _ = self.roi_heads(res4, proposals, self.backbone)
        out = detect(cls_logits, deltas, proposals, logits, sizes, list(original_sizes), self.cfg.head)
        if self.cfg.mask_on:
            out.masks = self.masks(res4, out, sizes, original_sizes)
        return out

    def masks(self, res4, out: HeadOutput, sizes, original_sizes) -> list[torch.Tensor]:
        """``forward_with_given_boxes`` + ``detector_postprocess``: per image, ``(N, H0, W0)`` bool masks of the
        final detections (mask logits from the boxes in network pixels, pasted at threshold 0.5)."""
        masks = []
        for i, (det, size, original) in enumerate(zip(out.detections, sizes, original_sizes)):
            scale = torch.tensor([size[1] / original[1], size[0] / original[0]] * 2, device=det.boxes.device)
            pooled = self.roi_heads.pool(res4[i : i + 1], [det.boxes * scale])
            logits = self.roi_heads.mask_head(self.backbone.layer4(pooled)) if len(pooled) else pooled[:, :1]
            masks.append(paste_masks(logits, det.boxes, *original))
        return masks

    @torch.no_grad()
    def predict(self, images, prompt=None, *, prompts=None, box_threshold: float = 0.0, batch_size: int = 1):
        """Detect the prompt's phrases (any names: the classifier is their CLIP text embeddings).

        Args:
            images: a path, PIL image or ``(H, W, 3)`` array, or a list of them.
            prompt: class names shared by every image: ``"cup. saucer."``, a list or a Prompt.
            prompts: one prompt per image instead.
            box_threshold: drop detections scoring below this.
            batch_size: images per forward pass (padded to a common size, as the official batch inference).

        Returns:
            :class:`Detections` (a list for a list of images) in original pixels; ``labels`` index the phrases.
        """
        single, groups = prompt_groups(images, prompt, prompts, batch_size)
        results: list[Detections] = []
        for chunk, names in groups:
            self.set_vocabulary(names)
            loaded = [load_image(src) for src in chunk]
            tensors = [resize_image(im, self.cfg.min_size, self.cfg.max_size) for im, _ in loaded]
            out = self.run(tensors, [size for _, size in loaded])
            masks = getattr(out, "masks", None) or [None] * len(loaded)
            for det, mask, (_, size) in zip(out.detections, masks, loaded):
                dets = to_detections(det.boxes, det.scores, det.classes, names, 1.0, size)
                if mask is not None:
                    dets.masks = mask.cpu().numpy()
                results.append(dets[dets.scores >= box_threshold])
        return results[0] if single else results
