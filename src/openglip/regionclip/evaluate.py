"""RegionCLIP's open-vocabulary protocols on any COCO detection file with a category split (or on the shapes val
split by default), through the core evaluator:

* detection: COCO AP/AP50 over every category, per split (``base``/``novel``) and per LVIS frequency group
  (``r``/``c``/``f``), of a transferred detector, or zero-shot of a pretrained student or of the teacher on the
  RPN's proposals (:func:`openglip.engine.evaluate.evaluate_detection`);
* region classification: each ground-truth box embedded by the student or the teacher and classified over the
  whole vocabulary, top-1 accuracy per split (the paper's zero-shot inference with ground-truth boxes).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from tqdm import tqdm

from ..data.splits import category_splits
from ..engine.evaluate import evaluate_detection
from ..errors import UsageError
from .concepts import ConceptPool, SentenceEncoder
from .data import BoxDataset, DetectionData, collate_regions, read_detection_data, shapes_detection_data
from .inference import NameEmbedder, ZeroShotDetector
from .weights import load_detector, load_region_teacher, load_rpn, load_student

VAL_SEED = 1234


def evaluation_data(
    data: str = "",
    *,
    image_root: str = "",
    split_file: str = "",
    num_images: int = 200,
    image_size: int = 128,
) -> DetectionData:
    """The images to evaluate on: ``data`` (COCO JSON) with its split, else ``num_images`` of the shapes val split
    (40% novel objects)."""
    if data:
        return read_detection_data(data, image_root or None, split_file=split_file)
    if split_file:
        raise UsageError("--split-file needs --data FILE (the shapes world carries its own split)")
    return shapes_detection_data(num_images, split="val", image_size=image_size, seed=VAL_SEED)


def _splits(data: DetectionData, extra_splits: dict[str, Sequence[str]] | None) -> dict[str, list[int]]:
    splits = category_splits(data.categories)
    ids = {c["name"]: c["id"] for c in data.categories}
    for name, members in (extra_splits or {}).items():
        unknown = sorted(set(members) - set(ids))
        if unknown or not members:
            raise UsageError(
                f"split {name!r}: not categories of {data.source}: {unknown[:5]}"
                if unknown
                else f"split {name!r} is empty"
            )
        splits[name] = [ids[m] for m in members]
    return splits


def evaluate_predictor(
    predictor,
    data: DetectionData,
    *,
    num_images: int | None = None,
    batch_size: int = 16,
    extra_splits: dict[str, Sequence[str]] | None = None,
) -> dict[str, float]:
    """COCO box metrics of a :class:`~openglip.structures.Predictor` on ``data`` (every category in the prompt).

    Args:
        extra_splits: more category splits to report, by category name (e.g. ``{"hexagon": [...]}``).

    Returns:
        the core's keys (``AP``, ``AP50`` ...) plus ``<split>/AP50`` (and ``/AP``, ``/AP75``) for ``base``,
        ``novel``, ``r``, ``c``, ``f`` where the categories carry them, and for every extra split.
    """
    gt, images = data.coco(num_images)
    metrics, _ = evaluate_detection(
        predictor, gt, images, splits=_splits(data, extra_splits), batch_size=batch_size
    )
    return metrics


def zero_shot_detector(
    rpn_path: str | os.PathLike,
    *,
    student: str | os.PathLike = "",
    teacher: str | os.PathLike = "",
    concepts: str | os.PathLike = "",
    text: SentenceEncoder | None = None,
) -> ZeroShotDetector:
    """The RPN's proposals classified by a pretrained student's or by the teacher's region embeddings (no
    detection training). A trained stand-in teacher file carries no text space of its own: pass the
    ``concepts`` pool it was trained with."""

    if bool(student) == bool(teacher):
        raise UsageError("zero-shot detection needs exactly one of a student or a teacher")
    if student:
        embedder, cfg = load_student(student)
        templates, encoder = cfg["templates"], cfg["encoder"]
    else:
        embedder = load_region_teacher(teacher)
        if not concepts:
            raise UsageError("zero-shot evaluation of a teacher needs the concept pool (--concepts FILE)")
        pool = ConceptPool.load(concepts)
        templates, encoder = pool.templates, pool.encoder
    return ZeroShotDetector(
        rpn=load_rpn(rpn_path), embedder=embedder, templates=templates, encoder=encoder, text=text
    )


def _sized(detector, image_size: int | None):
    """Test images resized so that their longer side is ``image_size`` (None: the detector's own setting)."""
    if image_size is not None:
        detector.post.min_size = detector.post.max_size = image_size
    return detector


def evaluate_zero_shot(
    rpn_path,
    data: DetectionData,
    *,
    student="",
    teacher="",
    concepts="",
    text=None,
    image_size=None,
    **kwargs,
):
    """:func:`evaluate_predictor` of a pretrained student or the teacher used zero-shot on RPN proposals."""
    detector = zero_shot_detector(rpn_path, student=student, teacher=teacher, concepts=concepts, text=text)
    return evaluate_predictor(_sized(detector, image_size), data, **kwargs)


def evaluate_detector(
    path: str | os.PathLike,
    data: DetectionData,
    *,
    text=None,
    unseen_weight=None,
    seen_weight=None,
    image_size=None,
    **kwargs,
):
    """:func:`evaluate_predictor` of a transferred detector file (``unseen_weight`` / ``seen_weight`` override
    its ensemble weights, ``image_size`` its test resize)."""
    detector = _sized(load_detector(path, text=text), image_size)
    if unseen_weight is not None:
        detector.unseen_weight = unseen_weight
    if seen_weight is not None:
        detector.seen_weight = seen_weight
    return evaluate_predictor(detector, data, **kwargs)


@torch.no_grad()
def region_classification(
    embedder: torch.nn.Module,
    data: DetectionData,
    *,
    templates: Sequence[str],
    encoder: str,
    text: SentenceEncoder | None = None,
    num_images: int | None = None,
    image_size: int = 128,
    batch_size: int = 16,
) -> dict[str, float]:
    """Zero-shot region classification with ground-truth boxes: every box embedded (student or teacher), its
    top-1 class over the whole vocabulary.

    Returns:
        ``{"accuracy": ..., "<split>/accuracy": ...}`` for ``base``/``novel`` and ``r``/``c``/``f`` where known.
    """

    names = NameEmbedder(encoder=encoder, templates=templates, text=text)
    centre = embedder.text_centre
    class_emb = names(data.names, centre)  # (C, D)
    dataset = BoxDataset(data, classes=data.names, image_size=image_size)
    n = len(dataset) if num_images is None else min(num_images, len(dataset))
    predicted, truth = [], []
    for start in tqdm(range(0, n, batch_size), desc="regions", unit="batch", disable=n <= batch_size):
        batch = collate_regions([dataset[i] for i in range(start, min(n, start + batch_size))]).to(
            centre.device
        )
        if hasattr(embedder, "embed_regions"):
            emb = embedder.embed_regions(batch.images, batch.boxes)
        else:
            emb = embedder(batch.images, batch.boxes).region_emb
        predicted.append((emb @ class_emb.t()).argmax(1).cpu())
        truth.append(torch.cat(batch.labels).cpu())
    predicted, truth = torch.cat(predicted), torch.cat(truth)
    correct = (predicted == truth).float()
    out = {"accuracy": correct.mean().item() if len(correct) else float("nan")}
    index = {c["id"]: k for k, c in enumerate(data.categories)}
    for split, ids in category_splits(data.categories).items():
        member = torch.zeros(len(data.categories), dtype=torch.bool)
        member[[index[i] for i in ids]] = True
        mask = member[truth]
        out[f"{split}/accuracy"] = correct[mask].mean().item() if mask.any() else float("nan")
    return out


def summary(metrics: dict[str, float]) -> dict[str, float]:
    """The numbers of an open-vocabulary table: novel, base and all AP50 (and r/c/f AP where present)."""
    out = {"novel AP50": metrics.get("novel/AP50", float("nan")), "base AP50": metrics.get("base/AP50", float("nan")),
           "all AP50": metrics["AP50"]}  # fmt: skip
    out.update({f"AP{k}": metrics[f"{k}/AP"] for k in ("r", "c", "f") if f"{k}/AP" in metrics})
    return out
