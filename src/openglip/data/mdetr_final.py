"""MDETR's evaluation files for phrase grounding and referring expressions (``final_*.json``).

Both are COCO-style JSON with one image entry per image-caption pair (fields as MDETR's conversion scripts
``scripts/pre-training/flickr_combined.py`` and ``scripts/fine-tuning/refexp_coco_format.py`` write them):

* **Flickr30k Entities** (``final_flickr_separateGT_{train,val,test}.json``, or ``mergedGT``): an image entry
  has ``file_name``, ``height``, ``width``, ``id``, ``caption``, ``dataset_name: "flickr"``, ``sentence_id``,
  ``original_img_id`` and ``tokens_positive_eval``: one list of character spans per phrase that has boxes.
  An annotation (``bbox`` x, y, w, h) lists in ``tokens_positive`` the spans of every phrase it grounds (boxes
  that overlap at IoU >= 0.95 were merged into one annotation). ``separateGT`` keeps every box of an entity,
  ``mergedGT`` one union box per entity.
* **RefCOCO / RefCOCO+ / RefCOCOg** (``final_refcoco_{val,testA,testB}.json``, ``final_refcoco+_*``,
  ``final_refcocog_{val,test}.json``): an image entry has ``caption`` (the referring expression),
  ``dataset_name`` (refcoco, refcoco+, refcocog), ``original_id`` and ``tokens_negative``; it has exactly one
  annotation, the referent, whose ``tokens_positive`` are the spans of the expression's root noun phrase.

:func:`read_mdetr_final` turns either into :class:`GroundingEvalRecord` items: a caption, its phrases and each
phrase's ground-truth boxes.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from .coco import load_json


@dataclass
class GroundingEvalRecord:
    """One caption to ground.

    Attributes:
        file_name: image path.
        caption: the caption or referring expression.
        phrase_spans: per phrase, its character spans in ``caption``.
        phrase_boxes: per phrase, its ground-truth boxes ``(M, 4)`` xyxy in pixels.
        dataset_name: MDETR's ``dataset_name`` (flickr, refcoco, refcoco+, refcocog).
        image_id: the entry's id in the file.
    """

    file_name: str
    caption: str
    phrase_spans: list[tuple[tuple[int, int], ...]]
    phrase_boxes: list[np.ndarray]
    dataset_name: str = ""
    image_id: int = 0


def _xyxy(bbox) -> list[float]:
    x, y, w, h = (float(v) for v in bbox)
    return [x, y, x + w, y + h]


def _spans(raw, caption: str, where: str) -> tuple[tuple[int, int], ...]:
    try:
        spans = tuple((int(s), int(e)) for s, e in raw)
    except (TypeError, ValueError):
        raise DataError(f"{where}: spans must be [[start, end], ...], got {raw!r}") from None
    for s, e in spans:
        if not 0 <= s < e <= len(caption):
            raise DataError(f"{where}: span ({s}, {e}) is outside the caption of {len(caption)} characters")
    return spans


def read_mdetr_final(
    path: str | os.PathLike, image_root: str | os.PathLike | None = None, *, check_images: bool = True
) -> list[GroundingEvalRecord]:
    """Read an MDETR Flickr30k Entities or RefCOCO/+/g evaluation file.

    Flickr entries (``tokens_positive_eval`` present) give one phrase per evaluated phrase, with the boxes
    whose ``tokens_positive`` contain one of its spans. RefExp entries give one phrase: the referent's
    ``tokens_positive`` (the whole expression when that is empty) with its single box.

    Args:
        path: the ``final_*.json`` file.
        image_root: folder of the images (default: the JSON's folder).
        check_images: raise if an image file is missing.

    Raises:
        DataError: the file is missing, not JSON, not in MDETR's format, or an image is missing.
    """
    try:
        data = load_json(path)
    except (FileNotFoundError, ValueError) as err:
        raise DataError(str(err)) from None
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("images"), list)
        or not isinstance(data.get("annotations"), list)
    ):
        raise DataError(f"{path}: not an MDETR final_*.json file (expected 'images' and 'annotations' lists)")
    root = Path(path).parent if image_root is None else Path(image_root)
    by_image: dict = defaultdict(list)
    for a in data["annotations"]:
        by_image[a.get("image_id")].append(a)
    records = []
    for img in data["images"]:
        where = f"{path}: image {img.get('id')!r}"
        caption = img.get("caption")
        if not isinstance(caption, str) or not isinstance(img.get("file_name"), str):
            raise DataError(f"{where} has no 'caption' or 'file_name' (not an MDETR grounding file)")
        anns = [a for a in by_image.get(img["id"], []) if not a.get("iscrowd", 0)]
        spans_list, boxes_list = [], []
        if "tokens_positive_eval" in img:  # Flickr30k Entities
            ann_spans = [set(_spans(a.get("tokens_positive", []), caption, where)) for a in anns]
            for raw in img["tokens_positive_eval"]:
                spans = _spans(raw, caption, where)
                boxes = [_xyxy(a["bbox"]) for a, own in zip(anns, ann_spans) if own & set(spans)]
                if boxes:  # MDETR lists only phrases with boxes; keep the rule if a file breaks it
                    spans_list.append(spans)
                    boxes_list.append(np.asarray(boxes, dtype=np.float32))
        else:  # RefCOCO/+/g: one referent
            if len(anns) != 1:
                raise DataError(
                    f"{where} has {len(anns)} annotations; a referring expression has exactly one"
                )
            spans = _spans(anns[0].get("tokens_positive") or [[0, len(caption)]], caption, where)
            spans_list.append(spans)
            boxes_list.append(np.asarray([_xyxy(anns[0]["bbox"])], dtype=np.float32))
        if not spans_list:
            continue
        file_name = str(root / img["file_name"])
        if check_images and not os.path.isfile(file_name):
            raise DataError(f"{where}: image not found: {file_name} (set --image-root)")
        records.append(
            GroundingEvalRecord(
                file_name, caption, spans_list, boxes_list, str(img.get("dataset_name", "")), int(img["id"])
            )
        )
    if not records:
        raise DataError(f"{path}: no caption with ground-truth boxes")
    return records


def merge_boxes(boxes: np.ndarray) -> np.ndarray:
    """The union box ``(1, 4)`` of ``(M, 4)`` xyxy boxes (the Flickr30k "merged-box" protocol)."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    return np.concatenate([boxes[:, :2].min(axis=0), boxes[:, 2:].max(axis=0)])[None]
