"""Evaluation metrics for open-vocabulary detection, phrase grounding and referring segmentation.

* :func:`coco_detection_metrics` wraps pycocotools' ``COCOeval`` (or ``faster_coco_eval`` with
  ``backend="faster"``) and adds per-split (e.g. base / novel) AP for open-vocabulary benchmarks.
* :func:`grounding_recall` implements the Flickr30k Entities Recall@k protocol.
* :func:`mask_iou` / :func:`referring_miou` compute mIoU and overall IoU for referring segmentation.
* :func:`format_table` renders a metrics dict as a plain-text table.

No AP is computed by hand here: all precision/recall bookkeeping is delegated to ``COCOeval``.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from .errors import DataError, UsageError

__all__ = [
    "coco_detection_metrics",
    "format_table",
    "grounding_recall",
    "mask_iou",
    "referring_miou",
]

# Indices into ``COCOeval.stats`` (bbox / segm) for the summary metrics we report.
_STAT_INDEX: dict[str, int] = {"AP": 0, "AP50": 1, "AP75": 2, "APs": 3, "APm": 4, "APl": 5, "AR100": 8}
_SPLIT_KEYS: tuple[str, ...] = ("AP", "AP50", "AP75")
_IOU_TYPES = ("bbox", "segm")
_BACKENDS = ("pycocotools", "faster")


def _load_backend(backend: str) -> tuple[type, type]:
    """Return the ``(COCO, COCOeval)`` classes of the requested backend."""
    if backend == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        return COCO, COCOeval
    if backend == "faster":
        try:
            from faster_coco_eval import COCO as FastCOCO
            from faster_coco_eval import COCOeval_faster
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("backend='faster' requires the 'faster-coco-eval' package") from exc
        return FastCOCO, COCOeval_faster
    raise UsageError(f"unknown backend {backend!r}; expected one of {_BACKENDS}")


@contextlib.contextmanager
def _quiet(verbose: bool) -> Iterator[None]:
    """Swallow stdout (pycocotools prints progress and summary tables) unless ``verbose``."""
    if verbose:
        yield
    else:
        with contextlib.redirect_stdout(io.StringIO()):
            yield


def _to_nan(value: float) -> float:
    """Map COCOeval's ``-1`` sentinel (no ground truth) to NaN."""
    value = float(value)
    return float("nan") if value < 0 else value


def _prepare_gt(gt: Mapping[str, Any]) -> dict[str, Any]:
    """Shallow-copy a COCO dataset dict, filling the ``iscrowd``/``area`` fields COCOeval needs."""
    for key in ("images", "annotations", "categories"):
        if key not in gt:
            raise DataError(f"ground truth is not a COCO dataset: the field {key!r} is missing")
    anns = []
    for ann in gt["annotations"]:
        ann = dict(ann)
        ann.setdefault("iscrowd", 0)
        if "area" not in ann:
            if "bbox" not in ann:
                raise DataError(f"annotation {ann.get('id')!r} has neither 'area' nor 'bbox'")
            ann["area"] = float(ann["bbox"][2]) * float(ann["bbox"][3])
        anns.append(ann)
    out = dict(gt)
    out["annotations"] = anns
    out["images"] = list(gt["images"])
    out["categories"] = list(gt["categories"])
    return out


def _prepare_predictions(predictions: Sequence[Mapping[str, Any]], iou_type: str) -> list[dict[str, Any]]:
    """Keep only the fields ``loadRes`` understands, as plain Python numbers.

    For ``segm`` the ``bbox`` is dropped so that ``loadRes`` derives area and box from the mask
    (otherwise it would take the box branch and use the box area for the area ranges).
    """
    geom = "bbox" if iou_type == "bbox" else "segmentation"
    out = []
    for i, pred in enumerate(predictions):
        missing = [k for k in ("image_id", "category_id", "score", geom) if k not in pred]
        if missing:
            raise DataError(f"prediction {i} is missing field(s) {missing}")
        clean: dict[str, Any] = {
            "image_id": int(pred["image_id"]),
            "category_id": int(pred["category_id"]),
            "score": float(pred["score"]),
        }
        if geom == "bbox":
            clean["bbox"] = [float(v) for v in pred["bbox"]]
        else:
            clean["segmentation"] = pred["segmentation"]
        out.append(clean)
    return out


def _build_coco(coco_cls: type, dataset: dict[str, Any]) -> Any:
    coco = coco_cls()
    coco.dataset = dataset
    coco.createIndex()
    return coco


def _run_eval(
    eval_cls: type, coco_gt: Any, coco_dt: Any, iou_type: str, cat_ids: list[int] | None
) -> np.ndarray:
    """Run evaluate/accumulate/summarize and return ``stats``."""
    evaluator = eval_cls(coco_gt, coco_dt, iou_type)
    if cat_ids is not None:
        evaluator.params.catIds = sorted(cat_ids)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return np.asarray(evaluator.stats, dtype=np.float64)


def coco_detection_metrics(
    gt: dict,
    predictions: list[dict],
    *,
    splits: dict[str, list[int]] | None = None,
    iou_type: str = "bbox",
    verbose: bool = False,
    backend: str = "pycocotools",
) -> dict[str, float]:
    """COCO-style detection / instance-segmentation metrics with optional category splits.

    Args:
        gt: A COCO dataset dict with ``images``, ``annotations`` (``bbox`` in xywh, and
            ``segmentation`` for ``iou_type="segm"``) and ``categories``. Missing ``iscrowd``
            defaults to 0 and missing ``area`` to the box area. The dict is not modified.
        predictions: A COCO results list: dicts with ``image_id``, ``category_id``, ``score`` and
            ``bbox`` ([x, y, w, h]) or, for ``segm``, ``segmentation`` (RLE, ``counts`` as str or
            bytes). Extra keys (e.g. ``phrase``) are ignored.
        splits: Optional mapping from split name to category ids, e.g.
            ``{"base": [1, 2], "novel": [3]}``. For each split ``s`` the keys ``s/AP``,
            ``s/AP50`` and ``s/AP75`` are added, computed by a COCOeval run restricted to those
            category ids.
        iou_type: ``"bbox"`` or ``"segm"``.
        verbose: If True, let pycocotools print its progress and summary tables.
        backend: ``"pycocotools"`` (default) or ``"faster"`` for ``faster_coco_eval``.

    Returns:
        ``{"AP", "AP50", "AP75", "APs", "APm", "APl", "AR100"}`` (plus the split keys) as floats in
        [0, 1]. Metrics with no ground truth (COCOeval's -1) are ``nan``. Images without
        predictions count as misses; empty ``predictions`` give 0.0 wherever ground truth exists.

    Raises:
        ValueError: On an unknown ``iou_type``/``backend``, a malformed prediction, or a
            prediction whose ``image_id`` is not in ``gt`` (the message names the first one).
    """
    if iou_type not in _IOU_TYPES:
        raise UsageError(f"unsupported iou_type {iou_type!r}; expected one of {_IOU_TYPES}")
    coco_cls, eval_cls = _load_backend(backend)
    dataset = _prepare_gt(gt)
    dets = _prepare_predictions(predictions, iou_type)

    image_ids = {int(img["id"]) for img in dataset["images"]}
    for det in dets:
        if det["image_id"] not in image_ids:
            raise DataError(f"prediction refers to image_id {det['image_id']} which is not in gt")

    with _quiet(verbose):
        coco_gt = _build_coco(coco_cls, dataset)
        if dets:
            coco_dt = coco_gt.loadRes(dets)
        else:
            # loadRes cannot handle an empty list; an empty results set evaluates to 0 AP wherever
            # ground truth exists (and -1 -> nan where it does not).
            empty = {"images": dataset["images"], "categories": dataset["categories"], "annotations": []}
            coco_dt = _build_coco(coco_cls, empty)

        stats = _run_eval(eval_cls, coco_gt, coco_dt, iou_type, None)
        metrics = {name: _to_nan(stats[idx]) for name, idx in _STAT_INDEX.items()}

        for split_name, cat_ids in (splits or {}).items():
            if len(cat_ids) == 0:
                metrics.update({f"{split_name}/{k}": float("nan") for k in _SPLIT_KEYS})
                continue
            split_stats = _run_eval(eval_cls, coco_gt, coco_dt, iou_type, [int(c) for c in cat_ids])
            for key in _SPLIT_KEYS:
                metrics[f"{split_name}/{key}"] = _to_nan(split_stats[_STAT_INDEX[key]])
    return metrics


def _as_boxes(boxes: Any) -> np.ndarray:
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 4), dtype=np.float64)
    return arr.reshape(-1, 4)


def _box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of xyxy boxes, shape ``(len(a), len(b))``."""
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def grounding_recall(
    gt_boxes: list[list[np.ndarray]] | list[np.ndarray],
    pred_boxes: list[list[np.ndarray]] | list[np.ndarray],
    ks: Sequence[int] = (1, 5, 10),
    iou_threshold: float = 0.5,
) -> dict[str, float]:
    """Phrase-grounding Recall@k (Flickr30k Entities protocol, "ANY-box" variant).

    A phrase counts as recalled at ``k`` if any of its top-``k`` predicted boxes has
    IoU >= ``iou_threshold`` with *any* of its ground-truth boxes. Ground-truth boxes are
    **not** merged into a single union box (the "MERGED-box" protocol used by some papers).

    Args:
        gt_boxes: One entry per phrase: an ``(M, 4)`` array-like of xyxy ground-truth boxes.
            Phrases with ``M == 0`` are skipped.
        pred_boxes: One entry per phrase: a ``(K, 4)`` array-like of xyxy predicted boxes sorted
            by descending score. ``K == 0`` counts as a miss.
        ks: The cut-offs ``k`` to report.
        iou_threshold: Minimum IoU for a prediction to match a ground-truth box.

    Returns:
        ``{"R@k": recall}`` for every ``k`` in ``ks``; ``nan`` if no phrase has ground truth.

    Raises:
        ValueError: If ``gt_boxes`` and ``pred_boxes`` have different lengths.
    """
    if len(gt_boxes) != len(pred_boxes):
        raise DataError(f"got {len(gt_boxes)} ground-truth phrases but {len(pred_boxes)} predictions")
    hits = dict.fromkeys(ks, 0)
    n_phrases = 0
    for gts, preds in zip(gt_boxes, pred_boxes):
        gt_arr, pred_arr = _as_boxes(gts), _as_boxes(preds)
        if len(gt_arr) == 0:
            continue
        n_phrases += 1
        if len(pred_arr) == 0:
            continue
        matched = (_box_iou(pred_arr, gt_arr) >= iou_threshold).any(axis=1)
        first = int(np.argmax(matched)) if matched.any() else None  # 0-based rank of first hit
        for k in ks:
            if first is not None and first < k:
                hits[k] += 1
    if n_phrases == 0:
        return {f"R@{k}": float("nan") for k in ks}
    return {f"R@{k}": hits[k] / n_phrases for k in ks}


def _mask_stats(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int]:
    pred = np.asarray(pred).astype(bool)
    gt = np.asarray(gt).astype(bool)
    if pred.shape != gt.shape:
        raise DataError(f"mask shapes differ: pred {pred.shape} vs gt {gt.shape}")
    return int(np.logical_and(pred, gt).sum()), int(np.logical_or(pred, gt).sum())


def mask_iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """Intersection-over-union of two boolean ``H x W`` masks.

    Args:
        pred: Predicted mask (any dtype; non-zero is foreground).
        gt: Ground-truth mask of the same shape.

    Returns:
        IoU in [0, 1]; 1.0 when both masks are empty.

    Raises:
        ValueError: If the shapes differ.
    """
    inter, union = _mask_stats(pred, gt)
    return 1.0 if union == 0 else inter / union


def referring_miou(preds: list[np.ndarray], gts: list[np.ndarray]) -> dict[str, float]:
    """Referring-segmentation metrics over a set of (prediction, ground truth) mask pairs.

    Args:
        preds: Predicted ``H x W`` masks, one per referring expression.
        gts: Ground-truth masks, aligned with ``preds`` (shapes must match pairwise).

    Returns:
        ``{"mIoU": mean per-sample IoU, "oIoU": total intersection / total union}``. Both are
        ``nan`` for empty input; ``oIoU`` is 1.0 if every mask is empty.

    Raises:
        ValueError: If the lists have different lengths or a pair's shapes differ.
    """
    if len(preds) != len(gts):
        raise DataError(f"got {len(preds)} predictions but {len(gts)} ground-truth masks")
    if not preds:
        return {"mIoU": float("nan"), "oIoU": float("nan")}
    total_inter = total_union = 0
    ious = []
    for pred, gt in zip(preds, gts):
        inter, union = _mask_stats(pred, gt)
        total_inter += inter
        total_union += union
        ious.append(1.0 if union == 0 else inter / union)
    return {
        "mIoU": float(np.mean(ious)),
        "oIoU": 1.0 if total_union == 0 else total_inter / total_union,
    }


def format_table(metrics: dict[str, float], title: str | None = None) -> str:
    """Render metrics as a plain-text two-column table.

    Args:
        metrics: Metric name -> value. Values print with 3 decimals; ``nan`` prints as ``n/a``.
        title: Optional heading line.

    Returns:
        The table as a multi-line string (no trailing newline).
    """
    header = ("metric", "value")
    rows = []
    for name, value in metrics.items():
        v = float(value)
        rows.append((str(name), "n/a" if math.isnan(v) else f"{v:.3f}"))
    w_name = max(len(header[0]), *(len(r[0]) for r in rows)) if rows else len(header[0])
    w_val = max(len(header[1]), *(len(r[1]) for r in rows)) if rows else len(header[1])
    rule = f"{'-' * w_name}  {'-' * w_val}"
    lines = [title] if title else []
    lines += [f"{header[0]:<{w_name}}  {header[1]:>{w_val}}", rule]
    lines += [f"{name:<{w_name}}  {val:>{w_val}}" for name, val in rows]
    return "\n".join(lines)
