"""MDETR-style grounding COCO JSON: ``images[]`` carry a ``caption``, ``annotations[]`` carry
``tokens_positive`` character spans into it. One grounding record per image."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..files import write_text_atomic
from .coco import (
    assign_image_ids,
    clean_boxes,
    clean_spans,
    group_annotations,
    locate_image,
    open_annotations,
    parse_box,
    relative_name,
)
from .records import ImageRecord, SkipReport


def read_mdetr(
    json_path: str | os.PathLike, image_root: str | os.PathLike | None = None, *, check_images: bool = True
) -> tuple[list[ImageRecord], list[str], SkipReport]:
    """Read an MDETR-style grounding JSON file.

    Args:
        json_path: the annotation file.
        image_root: folder the ``file_name`` entries are relative to (default: the JSON's folder).
        check_images: skip images whose file does not exist ("missing_image").

    Returns:
        ``(records, categories, report)``: one grounding record per image with at least one valid region
        (``labels == -1``, ``image_id`` = the image's id); ``categories`` is always empty (grounding has none).

    Raises:
        FileNotFoundError: ``json_path`` does not exist.
        ValueError: the file is not JSON, or not MDETR format (no image has a caption).
    """
    data, root, report = open_annotations(json_path, image_root)
    images = data.get("images") if isinstance(data, dict) else None
    anns = data.get("annotations", []) if isinstance(data, dict) else None
    if not isinstance(images, list) or not isinstance(anns, list):
        raise DataError(f"{json_path}: not a COCO-style file (expected 'images' and 'annotations' lists)")
    if images and not any(isinstance(im, dict) and "caption" in im for im in images):
        raise DataError(f"{json_path}: not an MDETR grounding file (images have no 'caption')")

    entries = []
    for im in images:
        ok = (
            isinstance(im, dict)
            and isinstance(im.get("file_name"), str)
            and isinstance(im.get("caption"), str)
        )
        if not ok or "id" not in im:
            report.add("bad_image_entry")
            continue
        entries.append(im)
    by_image = group_annotations(anns, [im["id"] for im in entries], report, required=("bbox",))

    records = []
    for im in entries:
        located = locate_image(
            im, im["file_name"], root, report, check_images=check_images, where=f"image id {im['id']}"
        )
        if located is None:
            continue
        path, size = located
        caption, raw, spans = im["caption"], [], []
        for ann in by_image[im["id"]]:
            valid, dropped = clean_spans(ann.get("tokens_positive"), caption)
            if not valid:
                report.add("bad_span")
                continue
            if dropped:
                report.add("bad_span_partial", dropped)
            raw.append(parse_box(ann["bbox"], xywh=True))
            spans.append(valid)
        boxes, keep = clean_boxes(raw, *size, report)
        spans = [s for s, k in zip(spans, keep) if k]
        if not spans:
            report.add("no_regions")
            continue
        labels = np.full(len(spans), -1, dtype=np.int64)
        records.append(
            ImageRecord(
                file_name=path,
                height=size[0],
                width=size[1],
                boxes=boxes,
                labels=labels,
                caption=caption,
                spans=spans,
                image_id=im["id"],
            )
        )
    report.log()
    return records, [], report


def write_mdetr(path: str | os.PathLike, records: Sequence[ImageRecord]) -> None:
    """Write grounding records as MDETR-style JSON (the inverse of :func:`read_mdetr`).

    Args:
        path: output file; image paths inside its folder are written relative to it.
        records: grounding records (with a caption).

    Raises:
        ValueError: a record has no caption.
    """
    folder = Path(path).parent
    images, anns = [], []
    for image_id, rec in zip(assign_image_ids(records), records):
        if rec.caption is None:
            raise DataError(f"write_mdetr: {rec.file_name} is a detection record (no caption)")
        name = relative_name(rec.file_name, folder)
        images.append(
            {
                "id": image_id,
                "file_name": name,
                "height": rec.height,
                "width": rec.width,
                "caption": rec.caption,
            }
        )
        for box, spans in zip(rec.boxes.tolist(), rec.spans):
            x1, y1, x2, y2 = box
            ann = {"id": len(anns) + 1, "image_id": image_id, "category_id": 1, "iscrowd": 0}
            ann.update(bbox=[x1, y1, x2 - x1, y2 - y1], area=(x2 - x1) * (y2 - y1))
            ann["tokens_positive"] = [[int(s), int(e)] for s, e in spans]
            anns.append(ann)
    categories = [{"id": 1, "name": "object"}]
    write_text_atomic(path, json.dumps({"images": images, "annotations": anns, "categories": categories}))
