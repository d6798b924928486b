"""Evaluation: COCO box AP (with base/novel splits) and phrase-grounding Recall@k, on files or on the
built-in shapes world. Vocabularies longer than the text limit are evaluated chunk by chunk (the detector
chunks the prompt and merges the chunks before NMS). Everything here takes any
:class:`~openglip.structures.Predictor` (the engine never imports the inference API)."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..data.build import read_annotations
from ..data.coco import coco_category_info, coco_ground_truth
from ..errors import DataError, UsageError
from ..metrics import coco_detection_metrics, grounding_recall, referring_miou
from ..prompts import Prompt, build_prompt, normalize_phrase
from ..structures import Predictor

log = logging.getLogger("openglip.evaluate")


@dataclass
class GroundingItem:
    """One caption to ground: its image (path or array), caption, phrases and ground-truth boxes.

    ``phrase_spans[i]`` are the character spans of phrase i; ``phrase_boxes[i]`` its (M, 4) xyxy boxes;
    ``referent_mask`` the (H, W) mask of phrase 0 (the referent of a referring caption), when known.
    """

    image: object
    caption: str
    phrase_spans: list[tuple[tuple[int, int], ...]]
    phrase_boxes: list[np.ndarray]
    referent_mask: np.ndarray | None = None


def detect_all(
    detector: Predictor, images: Sequence, prompt: Prompt, *, batch_size: int = 8, desc: str = "evaluate"
):
    """Detections (threshold 0, up to 100 per image) for every image with one prompt."""
    out = []
    for start in tqdm(
        range(0, len(images), batch_size), desc=desc, unit="batch", disable=len(images) <= batch_size
    ):
        out.extend(detector.predict(list(images[start : start + batch_size]), prompt, box_threshold=0.0))
    return out


def evaluate_detection(
    detector: Predictor,
    gt: dict,
    images: Sequence,
    *,
    splits: dict[str, list[int]] | None = None,
    batch_size: int = 8,
) -> tuple[dict[str, float], list[dict]]:
    """COCO metrics of ``detector`` on a COCO dataset dict whose images are ``images`` (same order).

    The prompt lists every category name in id order (GLIP's protocol); labels map back to category ids.
    Returns (metrics, COCO results list).
    """
    cats = sorted(gt["categories"], key=lambda c: c["id"])
    prompt = build_prompt([c["name"] for c in cats])
    # a label indexes the prompt's phrases; a name given to two categories is one phrase, scored as the first
    first_id: dict[str, int] = {}
    for c in cats:
        first_id.setdefault(normalize_phrase(c["name"]), c["id"])
    ids = [first_id[normalize_phrase(p)] for p in prompt.phrases]
    if splits is None and any("split" in c for c in cats):
        splits = {}
        for c in cats:
            if "split" in c:
                splits.setdefault(c["split"], []).append(c["id"])
    results = []
    for image_info, dets in zip(gt["images"], detect_all(detector, images, prompt, batch_size=batch_size)):
        results.extend(dets.to_coco(image_info["id"], category_ids=ids))
    metrics = coco_detection_metrics(gt, results, splits=splits)
    if results and "segmentation" in results[0] and all("segmentation" in a for a in gt["annotations"]):
        segm = coco_detection_metrics(gt, _compressed(results, gt), splits=splits, iou_type="segm")
        metrics.update({f"mask/{k}": v for k, v in segm.items()})
    return metrics, results


def _compressed(results: list[dict], gt: dict) -> list[dict]:
    """Predictions with compressed RLE (what pycocotools' loadRes expects for masks)."""
    from pycocotools import mask as mask_utils

    sizes = {img["id"]: (img["height"], img["width"]) for img in gt["images"]}
    out = []
    for r in results:
        seg = r["segmentation"]
        if isinstance(seg.get("counts"), list):
            h, w = sizes[r["image_id"]]
            seg = mask_utils.frPyObjects(seg, h, w)
            seg["counts"] = seg["counts"].decode("ascii")
        out.append({**r, "segmentation": seg})
    return out


def _item_prompt(item: GroundingItem) -> Prompt:
    """The caption of a grounding item as a prompt whose phrases are its annotated spans (first span each)."""
    return Prompt(
        item.caption,
        tuple(item.caption[s[0][0] : s[0][1]] for s in item.phrase_spans),
        tuple(item.phrase_spans),
    )


def evaluate_referring_segmentation(
    detector: Predictor, items: Sequence[GroundingItem], *, batch_size: int = 8
):
    """Referring segmentation: the mask of the best box of each caption's referent vs its mask (mIoU, oIoU)."""
    preds, gts = [], []
    for start in range(0, len(items), batch_size):
        chunk = [it for it in items[start : start + batch_size] if it.referent_mask is not None]
        if not chunk:
            continue
        prompts = [_item_prompt(it) for it in chunk]
        for it, dets in zip(
            chunk, detector.predict([it.image for it in chunk], prompts=prompts, box_threshold=0.0)
        ):
            mine = dets[dets.labels == 0]
            best = mine[int(np.argmax(mine.scores))] if len(mine) else None
            empty = np.zeros_like(it.referent_mask, dtype=bool)
            preds.append(best.masks[0] if best is not None and best.masks is not None else empty)
            gts.append(it.referent_mask)
    result = referring_miou(preds, gts)
    return {"referring_mIoU": result["mIoU"], "referring_oIoU": result["oIoU"]}


def evaluate_grounding(
    detector: Predictor, items: Sequence[GroundingItem], *, batch_size: int = 8
) -> dict[str, float]:
    """Flickr30k-style Recall@1/5/10: each phrase ranked by its own scores, recalled if a top-k box has
    IoU >= 0.5 with any of its ground-truth boxes."""
    gts, preds = [], []
    for start in tqdm(
        range(0, len(items), batch_size), desc="grounding", unit="batch", disable=len(items) <= batch_size
    ):
        chunk = items[start : start + batch_size]
        prompts = [_item_prompt(it) for it in chunk]
        outputs = detector.predict([it.image for it in chunk], prompts=prompts, box_threshold=0.0)
        for it, dets in zip(chunk, outputs):
            for p, boxes in enumerate(it.phrase_boxes):
                mine = dets[dets.labels == p]
                gts.append(np.asarray(boxes, dtype=np.float32).reshape(-1, 4))
                preds.append(mine.xyxy[np.argsort(-mine.scores, kind="stable")])
    return grounding_recall(gts, preds)


def json_metrics(metrics: dict) -> dict:
    """Metrics as strict JSON values: an undefined metric (NaN: no ground truth for it) becomes None (null)."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}


def check_tuned_prompt(tuned, names: Sequence[str], where: str) -> None:
    """A tuned prompt applies only to its own caption: refuse one made for other categories (it would be
    silently unused)."""
    if tuned is None:
        return
    expected = build_prompt(list(names)).caption
    if tuned.prompt.caption != expected:
        raise UsageError(
            f"--prompt-file was tuned for the phrases {list(tuned.prompt.phrases)[:5]}..., but {where} has the "
            f"categories {list(names)[:5]}... (in this order); tune a prompt on this data's categories"
        )


def evaluate_file(
    detector, path: str, image_root: str | None, batch_size: int, *, tuned_prompt=None
) -> tuple[dict, list]:
    """Metrics of ``detector`` on one annotation file: box AP for detection data (COCO JSON, ODVG detection
    lines), phrase-grounding recall for grounding data. Returns (metrics, COCO results list).

    A file without any box gives undefined (NaN) metrics and a warning. ``tuned_prompt``, when given, must
    have been tuned on the file's categories (checked)."""

    records, categories = read_annotations(path, image_root)
    if not records:
        raise DataError(f"{path}: no usable records")
    if not any(len(rec.boxes) for rec in records):
        log.warning(
            "%s: no annotated boxes in %d images: the metrics are undefined (n/a)", path, len(records)
        )
    cats = coco_category_info(path) if Path(path).suffix == ".json" else None
    if tuned_prompt is not None:
        if records[0].is_grounding:
            raise UsageError(f"--prompt-file applies to detection data, but {path} holds grounding captions")
        names = [c["name"] for c in sorted(cats, key=lambda c: c["id"])] if cats else list(categories)
        check_tuned_prompt(tuned_prompt, names, path)
    return evaluate_records(detector, records, categories, cats, batch_size=batch_size)


def evaluate_records(
    detector: Predictor,
    records: Sequence,
    categories: Sequence[str],
    cats: list[dict] | None = None,
    *,
    batch_size: int = 8,
) -> tuple[dict, list]:
    """Metrics of ``detector`` on :class:`~openglip.data.records.ImageRecord` s: phrase-grounding recall when
    they are grounding records, else box AP with the prompt of ``categories`` (``cats``: their COCO entries,
    ids ``1..n`` when not given). Returns (metrics, COCO results list)."""
    if records and records[0].is_grounding:
        items = []
        for rec in records:
            groups: dict = {}
            for box, spans in zip(rec.boxes, rec.spans):
                groups.setdefault(tuple(tuple(s) for s in spans), []).append(box)
            items.append(
                GroundingItem(
                    rec.file_name, rec.caption, list(groups), [np.stack(v) for v in groups.values()]
                )
            )
        return evaluate_grounding(detector, items, batch_size=batch_size), []
    cats = cats or [{"id": i + 1, "name": n} for i, n in enumerate(categories)]
    images = [
        {"id": i + 1, "file_name": rec.file_name, "height": rec.height, "width": rec.width,
         "boxes": rec.boxes.tolist(), "category_ids": [cats[label]["id"] for label in rec.labels.tolist()]}
        for i, rec in enumerate(records)
    ]  # fmt: skip
    gt = coco_ground_truth(images, cats)
    return evaluate_detection(detector, gt, [r.file_name for r in records], batch_size=batch_size)
