"""Inference shared by RegionCLIP's detectors: image preparation, class-name embeddings, per-class NMS into
:class:`~openglip.structures.Detections`, and the zero-shot detector (RPN proposals + pretrained student region
embeddings against class names, no detection training)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn
from torchvision.ops import batched_nms

from ..errors import UsageError
from ..images import load_image
from ..models.transform import ImageTransform
from ..structures import Detections
from .concepts import TextEncoder, load_text_encoder, template_embeddings
from .features import PIXEL_MEAN, PIXEL_STD


def prepare_images(
    images: Sequence, *, min_size: int, max_size: int
) -> tuple[torch.Tensor, list[float], list[tuple[int, int]]]:
    """Paths / PIL images / arrays -> ``(batch (B, 3, H, W) normalised and grey-padded to a multiple of 32,
    per-image scale (model px per original px), original (height, width))``."""
    transform = ImageTransform(
        min_size=min_size,
        max_size=max_size,
        mean=(PIXEL_MEAN,) * 3,
        std=(PIXEL_STD,) * 3,
        bgr=False,
        size_divisibility=32,
    )
    tensors, scales, originals = [], [], []
    for source in images:
        image, (h, w) = load_image(source)
        t = transform.to_tensor(image)
        tensors.append(t)
        scales.append(t.shape[-1] / w)
        originals.append((h, w))
    batch, _ = transform.pad(tensors)
    return batch, scales, originals


class NameEmbedder:
    """Centred, template-averaged class-name embeddings in a model's text space, cached per name list.

    Args:
        encoder: the text encoder's name (loaded on first use unless ``text`` is given).
        templates: prompt templates.
        text: an already loaded text encoder.
    """

    def __init__(self, *, encoder: str, templates: Sequence[str], text: TextEncoder | None = None):
        self.encoder, self.templates, self.text = encoder, tuple(templates), text
        self._cache: dict[tuple[str, ...], torch.Tensor] = {}

    def __call__(self, names: Sequence[str], centre: torch.Tensor) -> torch.Tensor:
        """``(N, D)`` unit vectors ``normalize(template_mean(name) - centre)``."""
        names = tuple(names)
        if not names or any(not isinstance(n, str) or not n.strip() for n in names):
            raise UsageError(f"class names must be non-empty strings, got {list(names)[:5]}")
        if names not in self._cache:
            if self.text is None:
                self.text = load_text_encoder(self.encoder, device="cpu")
            if self.text.name != self.encoder:
                raise UsageError(f"the model's text space is {self.encoder!r}, not {self.text.name!r}")
            raw = template_embeddings(self.text, names, self.templates).cpu()
            self._cache[names] = torch.nn.functional.normalize(raw - centre.detach().cpu(), dim=-1)
        return self._cache[names].to(centre.device)


def select_detections(
    boxes: torch.Tensor, scores: torch.Tensor, *, score_thresh: float, nms_thresh: float, limit: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-class NMS over every (box, class) pair above ``score_thresh``.

    Args:
        boxes: ``(R, 4)`` one (class-agnostic) box per region.
        scores: ``(R, C)`` class scores.

    Returns:
        ``(boxes (N, 4), scores (N,), labels (N,))``, best first, ``N <= limit``.
    """
    _r, c = scores.shape
    flat = scores.reshape(-1)
    keep = torch.nonzero(flat > score_thresh).squeeze(1)
    cand_boxes = boxes.repeat_interleave(c, 0)[keep] if c else boxes[:0]
    labels = (keep % c) if c else keep
    cand_scores = flat[keep]
    kept = batched_nms(cand_boxes, cand_scores, labels, nms_thresh)[:limit]
    return cand_boxes[kept], cand_scores[kept], labels[kept]


def to_detections(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    names: Sequence[str],
    scale: float,
    size: tuple[int, int],
) -> Detections:
    """Model-pixel results of one image -> :class:`Detections` in original pixels (clipped to the image)."""
    h, w = size
    xyxy = (boxes.detach().float().cpu().numpy() / scale).clip(0, [w, h, w, h])
    lab = labels.cpu().numpy()
    return Detections(
        xyxy,
        scores.detach().float().cpu().numpy(),
        lab,
        [names[i] for i in lab],
        prompt_phrases=tuple(names),
        image_size=(h, w),
    )


def with_objectness(probs: torch.Tensor, objectness: list[torch.Tensor], multiply: bool) -> torch.Tensor:
    """Class probabilities ``(R, C)`` of the regions, times the RPN's objectness geometrically
    (``sqrt(p * objectness)``) when ``multiply``."""
    return (probs * torch.cat(objectness)[:, None]).sqrt() if multiply else probs


def detect_in_batches(
    images,
    class_names: Sequence[str],
    score: Callable[[torch.Tensor], Iterable[tuple[torch.Tensor, torch.Tensor]]],
    *,
    batch_size: int,
    min_size: int,
    max_size: int,
    device: torch.device,
    score_thresh: float,
    nms_thresh: float,
    limit: int,
) -> list[Detections]:
    """The predict loop of RegionCLIP's detectors: prepare each batch, ``score(batch)`` -> per image ``(boxes
    (R_i, 4) in model pixels, class scores (R_i, C))``, per-class NMS, boxes back to original pixels."""
    images, names = as_list(images), list(class_names)
    results: list[Detections] = []
    for start in range(0, len(images), batch_size):
        batch, scales, sizes = prepare_images(
            images[start : start + batch_size], min_size=min_size, max_size=max_size
        )
        for i, (boxes, scores) in enumerate(score(batch.to(device))):
            b, s, lab = select_detections(
                boxes, scores, score_thresh=score_thresh, nms_thresh=nms_thresh, limit=limit
            )
            results.append(to_detections(b, s, lab, names, scales[i], sizes[i]))
    return results


class ZeroShotDetector(nn.Module):
    """A pretrained student used as a detector without transfer: each RPN proposal's region embedding against the
    class names, ``score = softmax_c(scale * cos)`` (times the objectness, geometrically, when
    ``multiply_rpn_score``), then per-class NMS.

    Args:
        rpn: a trained :class:`~openglip.regionclip.proposals.ProposalNetwork`.
        student: a pretrained :class:`~openglip.regionclip.model.RegionStudent`.
        templates: prompt templates of the concept pool.
        encoder: text encoder name.
        score_thresh, nms_thresh, detections_per_image: post-processing.
        multiply_rpn_score: ``sqrt(p * objectness)`` instead of ``p``.
        min_size, max_size: test resize rule.
        text: an already loaded text encoder (else loaded on first use).
    """

    def __init__(
        self,
        *,
        rpn: nn.Module,
        student: nn.Module,
        templates: Sequence[str],
        encoder: str,
        score_thresh: float = 0.01,
        nms_thresh: float = 0.5,
        detections_per_image: int = 100,
        multiply_rpn_score: bool = True,
        min_size: int = 128,
        max_size: int = 224,
        text: TextEncoder | None = None,
    ):
        super().__init__()
        self.rpn, self.student = rpn.eval(), student.eval()
        self.names = NameEmbedder(encoder=encoder, templates=templates, text=text)
        self.score_thresh, self.nms_thresh, self.limit = score_thresh, nms_thresh, detections_per_image
        self.multiply_rpn_score, self.min_size, self.max_size = multiply_rpn_score, min_size, max_size

    @torch.no_grad()
    def predict(self, images, class_names: Sequence[str], *, batch_size: int = 16) -> list[Detections]:
        """Detections of ``class_names`` in one image or a list (paths, PIL images, arrays); labels index
        ``class_names``."""
        device = self.student.text_centre.device
        text = self.names(class_names, self.student.text_centre)  # (C, D)

        def score(batch: torch.Tensor):
            proposals, objectness, _ = self.rpn(batch)
            res = self.student(batch, proposals)
            probs = (res.logit_scale * res.region_emb @ text.t()).softmax(-1)  # (R, C)
            probs = with_objectness(probs, objectness, self.multiply_rpn_score)
            return zip(proposals, probs.split([len(p) for p in proposals]))

        return detect_in_batches(
            images, class_names, score, batch_size=batch_size, min_size=self.min_size, max_size=self.max_size,
            device=device, score_thresh=self.score_thresh, nms_thresh=self.nms_thresh, limit=self.limit,
        )  # fmt: skip


def as_list(images) -> list:
    """A single image (path, PIL image, array) or a list of them -> a list."""
    if isinstance(images, (list, tuple)):
        return list(images)
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return list(images)
    return [images]
