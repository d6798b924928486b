"""ODVG JSONL (one image a line): detection lines, grounding lines, or a mix of both.

Detection: ``{"filename", "height", "width", "detection": {"instances": [{"bbox": [x1, y1, x2, y2],
"label": int, "category": str}]}}``. Grounding: ``{"filename", "height", "width", "grounding": {"caption":
str, "regions": [{"bbox": [...], "phrase": str, "tokens_positive": [[start, end], ...]}]}}``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from ..files import write_text_atomic
from .coco import clean_boxes, clean_spans, image_size, parse_box, relative_name, resolve_image
from .records import ImageRecord, SkipReport, log

_MAX_LOGGED_LINES = 10  # bad lines logged one by one; the rest only counted


def iter_jsonl(path: str | os.PathLike, report: SkipReport) -> Iterator[tuple[int, dict]]:
    """``(line_number, object)`` for every JSON-object line of a JSONL file (1-based line numbers).

    Blank lines are ignored; lines that are not a JSON object are counted as "bad_json" and logged with
    their line number.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not UTF-8 text, or it has content but not a single JSON-object line.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"annotation file not found: {path}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not a UTF-8 JSONL file ({err})") from None
    good = bad = 0
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            obj, why = None, str(err)
        else:
            why = f"expected a JSON object, got {type(obj).__name__}"
        if not isinstance(obj, dict):
            bad += 1
            report.add("bad_json")
            if bad <= _MAX_LOGGED_LINES:
                log.warning("%s:%d: skipped malformed line (%s)", path, number, why)
            continue
        good += 1
        yield number, obj
    if bad and not good:
        raise DataError(f"{path}: not a JSONL file (none of its {bad} lines is a JSON object)")


def _detection(
    obj: dict, size: tuple[int, int], names: dict[int, str], report: SkipReport
) -> tuple[np.ndarray, np.ndarray] | None:
    """Boxes and labels of a detection line (None when unusable); records label names in ``names``."""
    instances = obj["detection"].get("instances", []) if isinstance(obj["detection"], dict) else None
    if not isinstance(instances, list):
        report.add("bad_record")
        return None
    raw, labels = [], []
    for inst in instances:
        label = inst.get("label") if isinstance(inst, dict) else None
        if not isinstance(label, int) or isinstance(label, bool) or label < 0:
            report.add("bad_label")
            continue
        name = inst.get("category")
        if isinstance(name, str) and names.setdefault(label, name) != name:
            report.add("label_name_conflict")
        raw.append(parse_box(inst.get("bbox"), xywh=False))
        labels.append(label)
    boxes, keep = clean_boxes(raw, *size, report)
    return boxes, np.asarray(labels, dtype=np.int64).reshape(-1)[keep]


def _grounding(
    obj: dict, size: tuple[int, int], report: SkipReport
) -> tuple[str, np.ndarray, list[list[tuple[int, int]]]] | None:
    """Caption, boxes and spans of a grounding line, or None when the line is unusable."""
    grounding = obj["grounding"]
    caption = grounding.get("caption") if isinstance(grounding, dict) else None
    regions = grounding.get("regions") if isinstance(grounding, dict) else None
    if not isinstance(caption, str) or not isinstance(regions, list):
        report.add("bad_record")
        return None
    raw, spans = [], []
    for region in regions:
        if not isinstance(region, dict):
            report.add("bad_record")
            continue
        tokens = region.get("tokens_positive")
        phrase = region.get("phrase")
        if tokens is None and isinstance(phrase, str) and phrase and phrase in caption:
            start = caption.index(phrase)  # no spans given: the phrase's first occurrence
            tokens = [[start, start + len(phrase)]]
        valid, dropped = clean_spans(tokens, caption)
        if not valid:
            report.add("bad_span")
            continue
        if dropped:
            report.add("bad_span_partial", dropped)
        raw.append(parse_box(region.get("bbox"), xywh=False))
        spans.append(valid)
    boxes, keep = clean_boxes(raw, *size, report)
    return caption, boxes, [s for s, k in zip(spans, keep) if k]


def read_odvg(
    jsonl_path: str | os.PathLike, image_root: str | os.PathLike | None = None, *, check_images: bool = True
) -> tuple[list[ImageRecord], list[str], SkipReport]:
    """Read an ODVG JSONL file of detection and/or grounding lines.

    Args:
        jsonl_path: the annotation file.
        image_root: folder the ``filename`` entries are relative to (default: the file's folder).
        check_images: skip lines whose image file does not exist ("missing_image").

    Returns:
        ``(records, categories, report)``: one record per usable line (``image_id`` = 1-based line number);
        ``categories[label]`` is the name seen with ``label`` in detection instances ("" for labels never
        seen); grounding records have ``labels == -1`` and spans from ``tokens_positive``.

    Raises:
        FileNotFoundError: ``jsonl_path`` does not exist.
        ValueError: the file is not JSONL.
    """
    root = Path(jsonl_path).parent if image_root is None else Path(image_root)
    report = SkipReport(source=str(jsonl_path))
    records, names, kinds = [], {}, set()
    for number, obj in iter_jsonl(jsonl_path, report):
        kind = "detection" if "detection" in obj else "grounding" if "grounding" in obj else None
        kinds.add(kind)
        if kind is None or not isinstance(obj.get("filename"), str):
            report.add("bad_record")
            continue
        path = resolve_image(obj["filename"], root)
        if check_images and not os.path.isfile(path):
            report.add("missing_image")
            continue
        size = image_size(obj, path)
        if size is None:
            report.add("missing_size")
            continue
        head = {"file_name": path, "height": size[0], "width": size[1], "image_id": number}
        if kind == "detection":
            parsed_det = _detection(obj, size, names, report)
            if parsed_det is not None:
                records.append(ImageRecord(**head, boxes=parsed_det[0], labels=parsed_det[1]))
            continue
        parsed = _grounding(obj, size, report)
        if parsed is None:
            continue
        caption, boxes, spans = parsed
        if len(spans) == 0:
            report.add("no_regions")
            continue
        labels = np.full(len(spans), -1, dtype=np.int64)
        records.append(ImageRecord(**head, boxes=boxes, labels=labels, caption=caption, spans=spans))
    if kinds == {None}:
        raise DataError(f"{jsonl_path}: not an ODVG file (no line has 'detection' or 'grounding')")
    categories = [names.get(i, "") for i in range(max(names, default=-1) + 1)]
    missing = [i for i, n in enumerate(categories) if not n]
    if missing:
        log.warning("%s: no category name for labels %s", jsonl_path, missing[:20])
    report.log()
    return records, categories, report


def odvg_line(record: ImageRecord, categories: Sequence[str], file_name: str | None = None) -> dict[str, Any]:
    """One ODVG line (a dict) for a record: a grounding line when it has a caption, else a detection line."""
    head = {"filename": file_name or record.file_name, "height": record.height, "width": record.width}
    boxes = record.boxes.tolist()
    if record.caption is None:
        instances = [
            {"bbox": box, "label": int(label), "category": categories[int(label)]}
            for box, label in zip(boxes, record.labels.tolist())
        ]
        return {**head, "detection": {"instances": instances}}
    regions = [
        {
            "bbox": box,
            "phrase": " ".join(record.caption[s:e] for s, e in spans),
            "tokens_positive": [[int(s), int(e)] for s, e in spans],
        }
        for box, spans in zip(boxes, record.spans)
    ]
    return {**head, "grounding": {"caption": record.caption, "regions": regions}}


def write_odvg(path: str | os.PathLike, records: Sequence[ImageRecord], categories: Sequence[str]) -> None:
    """Write records as ODVG JSONL (the inverse of :func:`read_odvg`), one line per record in order.

    Args:
        path: output file; image paths inside its folder are written relative to it.
        records: detection and/or grounding records.
        categories: category names indexed by the detection records' labels.
    """
    folder = Path(path).parent
    lines = [json.dumps(odvg_line(r, categories, relative_name(r.file_name, folder))) + "\n" for r in records]
    write_text_atomic(path, "".join(lines))
