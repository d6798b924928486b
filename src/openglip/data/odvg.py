"""ODVG JSONL (one image a line): detection lines, grounding lines, or a mix of both.

Detection: ``{"filename", "height", "width", "detection": {"instances": [{"bbox": [x1, y1, x2, y2],
"label": int, "category": str}]}}``. Grounding: ``{"filename", "height", "width", "grounding": {"caption":
str, "regions": [{"bbox": [...], "phrase": str, "tokens_positive": [[start, end], ...]}]}}``.

The vocabulary of a detection file comes from its label map when there is one (GroundingDINO's
``{"0": "person", "1": "bicycle", ...}``, found beside the file as ``NAME.label_map.json`` for ``NAME.jsonl``,
or as ``label_map.json``), plus the ``category`` names of its instances. It never depends on which labels
happen to occur: a category no image shows is still a category (a negative in training prompts, a class in
evaluation).
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
from .coco import clean_boxes, clean_spans, locate_image, parse_box, relative_name
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


def label_map_path(jsonl_path: str | os.PathLike) -> Path:
    """Where :func:`write_odvg` puts the label map of ``NAME.jsonl``: ``NAME.label_map.json`` beside it."""
    path = Path(jsonl_path)
    return path.with_name(path.name.removesuffix(".jsonl") + ".label_map.json")


def read_label_map(path: str | os.PathLike) -> dict[int, str]:
    """A label map: ``{"0": "person", ...}`` (GroundingDINO's) or a JSON list of names (label = position).

    Raises:
        DataError: the file is not such a JSON object or list (the message names it).
    """
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"label map {path}: cannot read it as JSON ({err})") from None
    items = enumerate(raw) if isinstance(raw, list) else raw.items() if isinstance(raw, dict) else None
    out: dict[int, str] = {}
    for key, name in items or ():
        try:
            label = int(key)
        except (TypeError, ValueError):
            label = -1
        if label < 0 or not isinstance(name, str) or not name.strip():
            raise DataError(
                f"label map {path}: entry {key!r}: {name!r} is not 'label id': 'category name' "
                '(expected e.g. {"0": "person", "1": "bicycle"})'
            )
        out[label] = name
    if items is None or not out:
        raise DataError(f'label map {path}: expected a JSON object like {{"0": "person", "1": "bicycle"}}')
    return out


def _find_label_map(jsonl_path: Path) -> Path | None:
    for candidate in (label_map_path(jsonl_path), jsonl_path.parent / "label_map.json"):
        if candidate.is_file():
            return candidate
    return None


def parse_detection_line(
    obj: dict, size: tuple[int, int], names: dict[int, str], fixed: dict[int, str], report: SkipReport
) -> tuple[np.ndarray, np.ndarray] | None:
    """Boxes and labels of a detection line (None when unusable); records label names in ``names`` (the
    label map ``fixed`` has the last word on a label's name)."""
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
        if isinstance(name, str) and name.strip() and fixed.get(label, names.setdefault(label, name)) != name:
            report.add("label_name_conflict")
        raw.append(parse_box(inst.get("bbox"), xywh=False))
        labels.append(label)
    boxes, keep = clean_boxes(raw, *size, report)
    return boxes, np.asarray(labels, dtype=np.int64).reshape(-1)[keep]


def parse_grounding_line(
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


def _renumber_labels(
    records: list[ImageRecord], names: dict[int, str], report: SkipReport, jsonl_path: Path
) -> list[str]:
    """Renumber detection records' label ids to indices of the returned category names (ids in order); boxes
    whose label has no name are dropped ("unnamed_label") with one warning."""
    index = {label: i for i, label in enumerate(sorted(names))}
    categories = [names[label] for label in sorted(names)]
    unnamed: set[int] = set()
    for rec in records:
        if rec.caption is not None:
            continue
        keep = np.array([int(lab) in index for lab in rec.labels], dtype=bool)
        if not keep.all():
            unnamed.update(int(lab) for lab in rec.labels[~keep])
            report.add("unnamed_label", int((~keep).sum()))
            rec.boxes = rec.boxes[keep]
        rec.labels = np.array([index[int(lab)] for lab in rec.labels[keep]], dtype=np.int64)
    if unnamed:
        log.warning(
            "%s: labels %s have no category name (no 'category' field, no label map); their boxes are skipped. "
            "Add a label map %s",
            jsonl_path, sorted(unnamed)[:20], label_map_path(jsonl_path),
        )  # fmt: skip
    return categories


def read_odvg(
    jsonl_path: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    *,
    check_images: bool = True,
    label_map: str | os.PathLike | dict[int, str] | None = None,
) -> tuple[list[ImageRecord], list[str], SkipReport]:
    """Read an ODVG JSONL file of detection and/or grounding lines.

    Args:
        jsonl_path: the annotation file.
        image_root: folder the ``filename`` entries are relative to (default: the file's folder).
        check_images: skip lines whose image file does not exist ("missing_image").
        label_map: ``{label id: name}`` or a label-map file; default: ``NAME.label_map.json`` or
            ``label_map.json`` beside the file when one exists.

    Returns:
        ``(records, categories, report)``: one record per usable line (``image_id`` = 1-based line number);
        ``categories`` are the names of every label id of the label map and of the instances, in id order,
        and detection records' ``labels`` index them (ids with gaps are renumbered 0, 1, ...). Instances whose
        label has no name anywhere are skipped ("unnamed_label"). Grounding records have ``labels == -1`` and
        spans from ``tokens_positive``.

    Raises:
        DataError: the file does not exist, is not JSONL, or its label map is unreadable.
    """
    jsonl_path = Path(jsonl_path)
    root = jsonl_path.parent if image_root is None else Path(image_root)
    report = SkipReport(source=str(jsonl_path))
    if label_map is None:
        found = _find_label_map(jsonl_path)
        fixed = read_label_map(found) if found is not None else {}
        if found is not None:
            log.info("%s: categories from the label map %s", jsonl_path, found)
    else:
        fixed = dict(label_map) if isinstance(label_map, dict) else read_label_map(label_map)
    records, names, kinds = [], {}, set()
    for number, obj in iter_jsonl(jsonl_path, report):
        kind = "detection" if "detection" in obj else "grounding" if "grounding" in obj else None
        kinds.add(kind)
        if kind is None or not isinstance(obj.get("filename"), str):
            report.add("bad_record")
            continue
        located = locate_image(
            obj, obj["filename"], root, report, check_images=check_images, where=f"line {number}"
        )
        if located is None:
            continue
        path, size = located
        head = {"file_name": path, "height": size[0], "width": size[1], "image_id": number}
        if kind == "detection":
            parsed_det = parse_detection_line(obj, size, names, fixed, report)
            if parsed_det is not None:
                records.append(ImageRecord(**head, boxes=parsed_det[0], labels=parsed_det[1]))
            continue
        parsed = parse_grounding_line(obj, size, report)
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
    categories = _renumber_labels(records, {**names, **fixed}, report, jsonl_path)
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


def write_label_map(jsonl_path: str | os.PathLike, categories: Sequence[str]) -> Path:
    """Write the label map of an ODVG file (``{"0": name, ...}``) where :func:`read_odvg` finds it."""
    path = label_map_path(jsonl_path)
    write_text_atomic(path, json.dumps({str(i): name for i, name in enumerate(categories)}, indent=1))
    return path


def write_odvg(path: str | os.PathLike, records: Sequence[ImageRecord], categories: Sequence[str]) -> None:
    """Write records as ODVG JSONL (the inverse of :func:`read_odvg`), one line per record in order, and,
    when there are detection records, the label map of ``categories`` beside it (so that categories no
    record shows are kept).

    Args:
        path: output file; image paths inside its folder are written relative to it.
        records: detection and/or grounding records.
        categories: category names indexed by the detection records' labels.
    """
    folder = Path(path).parent
    lines = [json.dumps(odvg_line(r, categories, relative_name(r.file_name, folder))) + "\n" for r in records]
    if categories and any(r.caption is None for r in records):
        write_label_map(path, categories)
    write_text_atomic(path, "".join(lines))
