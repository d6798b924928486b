"""Inference shared by RegionCLIP's detectors: image preparation, class-name embeddings, per-class NMS into
:class:`~openglip.structures.Detections`, the :class:`~openglip.structures.Predictor` call they all answer, and
the zero-shot detector (RPN proposals + the region embeddings of a pretrained student or of the teacher against
class names, no detection training)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import nn
from torchvision.ops import batched_nms

from ..errors import UsageError
from ..images import load_image
from ..models.transform import ImageTransform
from ..prompts import parse_prompt
from ..structures import Detections
from .concepts import SentenceEncoder, load_sentence_encoder, template_embeddings
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

    def __init__(self, *, encoder: str, templates: Sequence[str], text: SentenceEncoder | None = None):
        self.encoder, self.templates, self.text = encoder, tuple(templates), text
        self._cache: dict[tuple[str, ...], torch.Tensor] = {}

    def __call__(self, names: Sequence[str], centre: torch.Tensor) -> torch.Tensor:
        """``(N, D)`` unit vectors ``normalize(template_mean(name) - centre)``."""
        names = tuple(names)
        if not names or any(not isinstance(n, str) or not n.strip() for n in names):
            raise UsageError(f"class names must be non-empty strings, got {list(names)[:5]}")
        if names not in self._cache:
            if self.text is None:
                self.text = load_sentence_encoder(self.encoder, device="cpu")
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


@dataclass
class Postprocess:
    """Test-time settings of RegionCLIP's detectors (fields of the same names in :class:`TransferConfig`)."""

    score_thresh: float = 0.01  # keep class scores above this
    nms_thresh: float = 0.5  # per-class NMS
    detections_per_image: int = 100
    multiply_rpn_score: bool = True  # score = sqrt(class probability * objectness)
    min_size: int = 128  # shorter image side
    max_size: int = 224  # longer side cap

    @classmethod
    def of(cls, cfg) -> Postprocess:
        """The settings held by a config with these fields."""
        return cls(**{f.name: getattr(cfg, f.name) for f in fields(cls)})


class RegionPredictor(nn.Module):
    """The :class:`~openglip.structures.Predictor` call shared by RegionCLIP's detectors.

    A subclass sets ``names`` (a :class:`NameEmbedder`) and ``post`` (a :class:`Postprocess`) and implements
    :meth:`score`.
    """

    def score(self, batch: torch.Tensor, text: torch.Tensor, names: Sequence[str]):
        """Per image of ``batch (B, 3, H, W)``: ``(boxes (R_i, 4) in model pixels, class scores (R_i, C))``."""
        raise NotImplementedError

    def centre(self) -> torch.Tensor:
        """``(D,)`` the text centre of the model's space (on the model's device)."""
        raise NotImplementedError

    @torch.no_grad()
    def predict(self, images, prompt=None, *, prompts=None, box_threshold: float = 0.0, batch_size: int = 16):
        """Detect the prompt's phrases (any names: the classifier is their text embeddings).

        Args:
            images: a path, PIL image or ``(H, W, 3)`` array, or a list of them.
            prompt: class names shared by every image: a list (``["red circle", "cat"]``), a caption
                (``"red circle. cat."``) or a :class:`~openglip.prompts.Prompt`.
            prompts: one prompt per image instead.
            box_threshold: drop detections scoring below this.
            batch_size: images per forward pass.

        Returns:
            :class:`Detections` (a list for a list of images): boxes in original pixels, ``labels`` index the
            prompt's phrases, at most ``detections_per_image`` per image.
        """
        single, groups = prompt_groups(images, prompt, prompts, batch_size)
        was_training = self.training
        self.eval()
        results: list[Detections] = []
        for chunk, names in groups:
            text = self.names(names, self.centre())  # (C, D)
            post = self.post
            batch, scales, sizes = prepare_images(chunk, min_size=post.min_size, max_size=post.max_size)
            for i, (boxes, scores) in enumerate(self.score(batch.to(text.device), text, names)):
                b, s, lab = select_detections(
                    boxes,
                    scores,
                    score_thresh=post.score_thresh,
                    nms_thresh=post.nms_thresh,
                    limit=post.detections_per_image,
                )
                dets = to_detections(b, s, lab, names, scales[i], sizes[i])
                results.append(dets[dets.scores >= box_threshold])
        self.train(was_training)
        return results[0] if single else results


class ZeroShotDetector(RegionPredictor):
    """Region embeddings used as a detector without transfer (RegionCLIP's zero-shot protocol): each RPN proposal's
    embedding by a pretrained student or by the teacher against the class names, ``score = softmax_c(scale *
    cos)`` (times the objectness, geometrically, when ``multiply_rpn_score``), then per-class NMS.

    Args:
        rpn: a trained :class:`~openglip.regionclip.proposals.ProposalNetwork`.
        embedder: a pretrained student (:mod:`.model`) or a teacher (``embed_regions``/``scale``).
        templates: prompt templates of the concept pool.
        encoder: sentence encoder name.
        post: test-time settings (default: :class:`Postprocess`'s).
        text: an already loaded sentence encoder (else loaded on first use).
    """

    def __init__(
        self,
        *,
        rpn: nn.Module,
        embedder: nn.Module,
        templates: Sequence[str],
        encoder: str,
        post: Postprocess | None = None,
        text: SentenceEncoder | None = None,
    ):
        super().__init__()
        self.rpn, self.embedder = rpn.eval(), embedder.eval()
        self.names = NameEmbedder(encoder=encoder, templates=templates, text=text)
        self.post = post or Postprocess()

    def centre(self) -> torch.Tensor:
        return self.embedder.text_centre

    def region_probs(
        self, batch: torch.Tensor, boxes: list[torch.Tensor], text: torch.Tensor
    ) -> torch.Tensor:
        """``(R, C)`` class probabilities of the regions ``boxes`` (one tensor per image)."""
        if hasattr(self.embedder, "embed_regions"):  # a teacher
            emb, scale = self.embedder.embed_regions(batch, boxes), self.embedder.scale()
        else:
            out = self.embedder(batch, boxes)
            emb, scale = out.region_emb, out.logit_scale
        return (scale * emb @ text.t()).softmax(-1)  # (R, C)

    def score(self, batch: torch.Tensor, text: torch.Tensor, names: Sequence[str]):
        proposals, objectness, _ = self.rpn(batch)
        probs = with_objectness(
            self.region_probs(batch, proposals, text), objectness, self.post.multiply_rpn_score
        )
        return zip(proposals, probs.split([len(p) for p in proposals]))


def prompt_groups(images, prompt, prompts, batch_size: int) -> tuple[bool, list[tuple[list, list[str]]]]:
    """The :class:`~openglip.structures.Predictor` call's inputs as ``(single image?, [(images, class names)])``:
    up to ``batch_size`` images a group under a shared ``prompt``, one image a group with ``prompts``.

    Raises:
        UsageError: both or neither of ``prompt`` / ``prompts``, or a prompt count that is not the image count.
    """
    single = not isinstance(images, (list, tuple)) and not (
        isinstance(images, np.ndarray) and images.ndim == 4
    )
    items = as_list(images)
    if (prompt is None) == (prompts is None):
        raise UsageError("give exactly one of prompt= (shared) or prompts= (one per image)")
    if prompts is not None and len(prompts) != len(items):
        raise UsageError(f"{len(prompts)} prompts for {len(items)} images")
    if prompts is not None:
        return single, [([item], list(parse_prompt(p).phrases)) for item, p in zip(items, prompts)]
    names, step = list(parse_prompt(prompt).phrases), max(1, batch_size)
    return single, [(items[i : i + step], names) for i in range(0, len(items), step)]


def as_list(images) -> list:
    """A single image (path, PIL image, array) or a list of them -> a list."""
    if isinstance(images, (list, tuple)):
        return list(images)
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return list(images)
    return [images]
