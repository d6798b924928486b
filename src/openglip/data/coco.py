"""COCO detection JSON: reader, writer, and the validation helpers every dataset reader shares.

The helpers (:func:`load_json`, :func:`resolve_image`, :func:`image_size`, :func:`clean_boxes`,
:func:`clean_spans`) implement the rules common to all formats: bad boxes and spans are dropped and counted
in a :class:`SkipReport`, partly-outside boxes are clipped, and only an unreadable file raises.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import DataError
from ..files import write_text_atomic
from .records import ImageRecord, SkipReport

# ---------------------------------------------------------------------------------------------- helpers


def load_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not valid UTF-8 JSON (the message names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"annotation file not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not a valid JSON file ({err})") from None


def open_annotations(
    json_path: str | os.PathLike, image_root: str | os.PathLike | None
) -> tuple[Any, Path, SkipReport]:
    """What every JSON annotation reader starts from: the parsed file (:func:`load_json`), the folder its image
    names are relative to (``image_root``, default: the file's folder) and an empty skip report for it."""
    root = Path(json_path).parent if image_root is None else Path(image_root)
    return load_json(json_path), root, SkipReport(source=str(json_path))


def resolve_image(file_name: str, image_root: str | os.PathLike) -> str:
    """``file_name`` joined with ``image_root`` (an absolute ``file_name`` is kept as is)."""
    return str(Path(image_root) / file_name)


def relative_name(file_name: str, folder: str | os.PathLike) -> str:
    """``file_name`` relative to ``folder`` when it lies inside it (for writers), else unchanged."""
    try:
        return Path(os.path.abspath(file_name)).relative_to(os.path.abspath(folder)).as_posix()
    except ValueError:
        return file_name


def image_size(entry: dict, path: str) -> tuple[int, int] | None:
    """``(height, width)`` from an annotation entry, else from the image file's header, else None."""
    try:
        h, w = int(entry["height"]), int(entry["width"])
        if h > 0 and w > 0:
            return h, w
    except (KeyError, TypeError, ValueError):
        pass
    try:
        with Image.open(path) as im:
            return im.height, im.width
    except (OSError, ValueError):
        return None


def locate_image(
    entry: dict, file_name: str, root: Path, report: SkipReport, *, check_images: bool, where: str
) -> tuple[str, tuple[int, int]] | None:
    """``(path, (height, width))`` of an annotation entry's image, or None after counting why it is skipped
    ("missing_image": no such file when ``check_images``; "missing_size": no size in the entry or the file)."""
    path = resolve_image(file_name, root)
    if check_images and not os.path.isfile(path):
        report.add("missing_image", where=f"{where}: {path}")
        return None
    size = image_size(entry, path)
    if size is None:
        report.add("missing_size", where=where)
        return None
    return path, size


def group_annotations(
    anns: list, image_ids: Any, report: SkipReport, *, required: tuple[str, ...], categories: Any = None
) -> dict[Any, list[dict]]:
    """COCO-style annotations grouped by ``image_id`` (every id of ``image_ids`` present); malformed ones
    (missing a ``required`` key), crowd ones, those of unknown images and, when ``categories`` is given, of
    unknown category ids are counted in ``report`` and left out."""
    by_image: dict[Any, list[dict]] = {k: [] for k in image_ids}
    for ann in anns:
        if not isinstance(ann, dict) or any(k not in ann for k in required):
            report.add("bad_annotation")
        elif ann.get("iscrowd", 0):
            report.add("crowd")
        elif ann.get("image_id") not in by_image:
            report.add("unknown_image")
        elif categories is not None and ann["category_id"] not in categories:
            report.add("unknown_category")
        else:
            by_image[ann["image_id"]].append(ann)
    return by_image


def parse_box(raw: Any, xywh: bool) -> list[float]:
    """Four floats ``x1, y1, x2, y2`` from a raw ``bbox``; NaNs when it is malformed."""
    try:
        box = [float(v) for v in raw]
    except (TypeError, ValueError):
        return [math.nan] * 4
    if len(box) != 4:
        return [math.nan] * 4
    if xywh:
        box[2] += box[0]
        box[3] += box[1]
    return box


def clean_boxes(
    boxes: Sequence[Sequence[float]], height: int, width: int, report: SkipReport
) -> tuple[np.ndarray, np.ndarray]:
    """Drop empty/NaN boxes ("empty_box") and boxes entirely outside the image ("box_outside"); clip the rest.

    Args:
        boxes: ``N`` boxes ``x1, y1, x2, y2`` in pixels.
        height, width: image size.
        report: where the dropped boxes are counted.

    Returns:
        ``(clipped, keep)``: the kept boxes ``(K, 4)`` float32 and a ``(N,)`` bool mask of which were kept.
    """
    arr = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    finite = np.isfinite(arr).all(axis=1)
    with np.errstate(invalid="ignore"):
        empty = ~finite | (arr[:, 2] <= arr[:, 0]) | (arr[:, 3] <= arr[:, 1])
        outside = ~empty & (
            (arr[:, 0] >= width) | (arr[:, 1] >= height) | (arr[:, 2] <= 0) | (arr[:, 3] <= 0)
        )
    for reason, bad in (("empty_box", empty), ("box_outside", outside)):
        if bad.any():  # SkipReport.add(..., 0) would create a zero entry
            report.add(reason, int(bad.sum()))
    keep = ~empty & ~outside
    clipped = arr[keep]
    clipped[:, 0::2] = clipped[:, 0::2].clip(0, width)
    clipped[:, 1::2] = clipped[:, 1::2].clip(0, height)
    return clipped.astype(np.float32).reshape(-1, 4), keep


def clean_spans(raw: Any, caption: str) -> tuple[list[tuple[int, int]], int]:
    """Valid character spans ``0 <= start < end <= len(caption)`` of a region, and how many were dropped."""
    spans, bad = [], 0
    for span in raw if isinstance(raw, list) else []:
        try:
            start, end = (int(v) for v in span)
        except (TypeError, ValueError):
            bad += 1
            continue
        if 0 <= start < end <= len(caption):
            spans.append((start, end))
        else:
            bad += 1
    if not isinstance(raw, list):
        bad += 1
    return spans, bad


# ---------------------------------------------------------------------------------------------- COCO


def coco_category_info(json_path_or_dict: str | os.PathLike | dict) -> list[dict]:
    """The categories of a COCO file, sorted by id (the order that defines the category index).

    Args:
        json_path_or_dict: a COCO JSON file or its parsed dictionary.

    Returns:
        Copies of the category dicts (``id``, ``name`` and any extra fields such as ``"split"``).

    Raises:
        ValueError: the categories are missing, lack ``id``/``name``, or repeat an id.
    """
    if isinstance(json_path_or_dict, dict):
        return _categories(json_path_or_dict, "COCO dict")
    return _categories(load_json(json_path_or_dict), str(json_path_or_dict))


def _categories(data: Any, where: str) -> list[dict]:
    cats = data.get("categories") if isinstance(data, dict) else None
    if not isinstance(cats, list) or not all(isinstance(c, dict) and "id" in c and "name" in c for c in cats):
        raise DataError(f"{where}: not a COCO file (expected a 'categories' list of {{id, name}} dicts)")
    ids = [c["id"] for c in cats]
    if len(set(ids)) != len(ids):
        raise DataError(f"{where}: repeated category ids")
    return [dict(c) for c in sorted(cats, key=lambda c: c["id"])]


def read_coco(
    json_path: str | os.PathLike, image_root: str | os.PathLike | None = None, *, check_images: bool = True
) -> tuple[list[ImageRecord], list[str], SkipReport]:
    """Read a COCO detection JSON file.

    Args:
        json_path: the annotation file.
        image_root: folder the ``file_name`` entries are relative to (default: the JSON's folder).
        check_images: skip images whose file does not exist ("missing_image").

    Returns:
        ``(records, categories, report)``: one detection record per image (images without annotations
        included), ``labels`` indexing ``categories`` (names sorted by category id), masks = the kept
        annotations' ``segmentation`` (None when no annotation has one); crowd annotations are skipped.

    Raises:
        FileNotFoundError: ``json_path`` does not exist.
        ValueError: the file is not JSON or not in COCO detection format.
    """
    data, root, report = open_annotations(json_path, image_root)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(f"{json_path}: not a COCO detection file (expected an 'images' list)")
    anns = data.get("annotations", [])
    if not isinstance(anns, list):
        raise DataError(f"{json_path}: 'annotations' must be a list")
    cats = _categories(data, str(json_path))
    cat_index = {c["id"]: i for i, c in enumerate(cats)}

    images: dict[Any, dict] = {}
    for entry in data["images"]:
        if (
            isinstance(entry, dict)
            and isinstance(entry.get("id"), int | str)
            and isinstance(entry.get("file_name"), str)
        ):
            images[entry["id"]] = entry
        else:
            report.add("bad_image_entry")
    by_image = group_annotations(anns, images, report, required=("bbox", "category_id"), categories=cat_index)
    records = []
    for image_id, entry in images.items():
        located = locate_image(
            entry, entry["file_name"], root, report, check_images=check_images, where=f"image id {image_id}"
        )
        if located is None:
            continue
        path, size = located
        group = by_image[image_id]
        boxes, keep = clean_boxes([parse_box(a["bbox"], xywh=True) for a in group], *size, report)
        kept = [a for a, k in zip(group, keep) if k]
        labels = np.array([cat_index[a["category_id"]] for a in kept], dtype=np.int64)
        masks = [a.get("segmentation") for a in kept]
        records.append(
            ImageRecord(
                file_name=path,
                height=size[0],
                width=size[1],
                boxes=boxes,
                labels=labels,
                image_id=image_id,
                masks=masks if any(m is not None for m in masks) else None,
            )
        )
    report.log()
    return records, [c["name"] for c in cats], report


def coco_annotation(ann_id: int, image_id: int, category_id: int, box: Sequence[float], **extra) -> dict:
    """One COCO annotation from an xyxy ``box`` (COCO stores xywh and the box's area); ``extra`` adds fields
    such as ``iscrowd`` (default 0) or ``segmentation``."""
    x1, y1, x2, y2 = (float(v) for v in box)
    ann = {"id": ann_id, "image_id": image_id, "category_id": category_id, "iscrowd": 0}
    ann.update(bbox=[x1, y1, x2 - x1, y2 - y1], area=(x2 - x1) * (y2 - y1))
    ann.update(extra)
    return ann


def coco_ground_truth(images: Sequence[dict], categories: Sequence[dict], **top: Any) -> dict:
    """A COCO ground-truth dict, the one builder every writer and evaluator uses.

    Args:
        images: one dict an image: ``boxes`` (xyxy), ``category_ids``, optionally ``extras`` (one dict of extra
            annotation fields a box, e.g. ``iscrowd``, ``segmentation`` or a mask's ``area``); every other field
            (``id``, ``file_name``, ``height``, ``width``, ...) is the COCO image entry. Annotations are numbered
            1..n in that order.
        categories: the COCO ``categories`` list, kept as given.
        top: further top-level fields (``info``, ``licenses``).
    """
    out_images, anns = [], []
    for im in images:
        out_images.append({k: v for k, v in im.items() if k not in ("boxes", "category_ids", "extras")})
        extras = im.get("extras") or [{}] * len(im["boxes"])
        for box, cat, extra in zip(im["boxes"], im["category_ids"], extras, strict=True):
            anns.append(coco_annotation(len(anns) + 1, im["id"], int(cat), box, **extra))
    return {**top, "images": out_images, "annotations": anns, "categories": list(categories)}


def assign_image_ids(records: Sequence[ImageRecord]) -> list[int]:
    """The records' own ids when they are positive and unique, else 1..n."""
    ids = [r.image_id for r in records]
    if all(isinstance(i, int) and i > 0 for i in ids) and len(set(ids)) == len(ids):
        return ids
    return list(range(1, len(records) + 1))


def write_coco(
    path: str | os.PathLike, records: Sequence[ImageRecord], categories: Sequence[str | dict]
) -> None:
    """Write detection records as COCO JSON (the inverse of :func:`read_coco`).

    Args:
        path: output file; image paths inside its folder are written relative to it.
        records: detection records (``labels`` index ``categories``).
        categories: names, or dicts with ``"name"`` and extra fields (e.g. from :func:`coco_category_info`);
            category ids are written as index + 1.

    Raises:
        ValueError: a label is outside ``categories`` (e.g. a grounding record's -1).
    """
    folder = Path(path).parent
    cats = []
    for i, c in enumerate(categories):
        extra = {k: v for k, v in c.items() if k not in ("id", "name")} if isinstance(c, dict) else {}
        cats.append({"id": i + 1, "name": c["name"] if isinstance(c, dict) else c, **extra})
    images = []
    for image_id, rec in zip(assign_image_ids(records), records):
        bad = [int(v) for v in rec.labels if not 0 <= v < len(cats)]
        if bad:
            raise DataError(
                f"write_coco: {rec.file_name} has labels {bad} outside the {len(cats)} categories"
            )
        masks = rec.masks if rec.masks is not None else [None] * len(rec.boxes)
        images.append(
            {"id": image_id, "file_name": relative_name(rec.file_name, folder), "height": rec.height,
             "width": rec.width, "boxes": rec.boxes.tolist(), "category_ids": (rec.labels + 1).tolist(),
             "extras": [{} if m is None else {"segmentation": m} for m in masks]}
        )  # fmt: skip
    write_text_atomic(path, json.dumps(coco_ground_truth(images, cats)))
