"""Image-caption pairs (input to pseudo-labelling and RegionCLIP): JSONL ``{"filename", "caption"}`` lines, or
COCO Captions JSON (``images`` + ``annotations[].caption``, as ``captions_train2017.json``); and captioning data
(the same files) grouped per image for GLIPv2's captioning head."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError
from ..files import write_text_atomic
from .coco import open_annotations, relative_name, resolve_image
from .odvg import iter_jsonl
from .records import SkipReport


def read_captions(
    jsonl_path: str | os.PathLike, image_root: str | os.PathLike | None = None, *, check_images: bool = True
) -> tuple[list[tuple[str, str]], SkipReport]:
    """Read image-caption pairs.

    Args:
        jsonl_path: the JSONL file.
        image_root: folder the ``filename`` entries are relative to (default: the file's folder).
        check_images: skip pairs whose image file does not exist ("missing_image").

    Returns:
        ``(pairs, report)`` with ``pairs`` = ``[(image path joined with image_root, caption), ...]``; lines
        without a string ``filename`` and ``caption`` ("bad_record") or with an empty caption ("empty_caption")
        are skipped.

    Raises:
        FileNotFoundError: ``jsonl_path`` does not exist.
        ValueError: the file is not JSONL.
    """
    root = Path(jsonl_path).parent if image_root is None else Path(image_root)
    report = SkipReport(source=str(jsonl_path))
    pairs = []
    for line, obj in iter_jsonl(jsonl_path, report):
        name, caption = obj.get("filename"), obj.get("caption")
        if not isinstance(name, str) or not isinstance(caption, str):
            report.add("bad_record", where=f"line {line}")
            continue
        if not caption.strip():
            report.add("empty_caption", where=f"line {line}")
            continue
        path = resolve_image(name, root)
        if check_images and not os.path.isfile(path):
            report.add("missing_image", where=f"line {line}: {path}")
            continue
        pairs.append((path, caption))
    report.log()
    return pairs, report


def read_coco_caption_pairs(
    json_path: str | os.PathLike, image_root: str | os.PathLike | None = None, *, check_images: bool = True
) -> tuple[list[tuple[str, str]], SkipReport]:
    """Read COCO Captions JSON (``captions_train2017.json``): one pair per caption annotation.

    Args:
        json_path: the file (``images`` with ``id`` and ``file_name``; ``annotations`` with ``image_id`` and
            ``caption``).
        image_root: folder the ``file_name`` entries are relative to (default: the file's folder).
        check_images: skip pairs whose image file does not exist ("missing_image").

    Returns:
        ``(pairs, report)`` as :func:`read_captions`; annotations of unknown images ("unknown_image"), without a
        string caption ("bad_record") or with an empty one ("empty_caption") are skipped.

    Raises:
        DataError: the file is missing, not JSON, or has no ``images``/``annotations`` lists.
    """
    data, root, report = open_annotations(json_path, image_root)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(f"{json_path}: not a COCO Captions file (expected 'images' and 'annotations' lists)")
    anns = data.get("annotations")
    if not isinstance(anns, list):
        raise DataError(f"{json_path}: not a COCO Captions file (expected an 'annotations' list)")
    files = {}
    for k, entry in enumerate(data["images"]):
        if isinstance(entry, dict) and isinstance(entry.get("file_name"), str) and "id" in entry:
            files[entry["id"]] = resolve_image(entry["file_name"], root)
        else:
            report.add("bad_image_entry", where=f"images[{k}]")
    missing: dict[str, bool] = {}
    pairs = []
    for k, ann in enumerate(anns):
        where = f"annotations[{k}]"
        caption = ann.get("caption") if isinstance(ann, dict) else None
        if not isinstance(caption, str):
            report.add("bad_record", where=where)
        elif not caption.strip():
            report.add("empty_caption", where=where)
        elif ann.get("image_id") not in files:
            report.add("unknown_image", where=f"{where}: image_id {ann.get('image_id')!r}")
        else:
            path = files[ann["image_id"]]
            if check_images and missing.setdefault(path, not os.path.isfile(path)):
                report.add("missing_image", where=f"{where}: {path}")
                continue
            pairs.append((path, caption))
    report.log()
    return pairs, report


def read_caption_pairs(
    path: str | os.PathLike, image_root: str | os.PathLike | None = None, *, check_images: bool = True
) -> tuple[list[tuple[str, str]], SkipReport]:
    """Image-caption pairs from a ``.jsonl`` caption file or a COCO Captions ``.json`` file (by the suffix).

    Raises:
        DataError: the file is missing or malformed, or not one pair is usable (the message gives the skip counts
            and the first bad record).
    """
    read = read_captions if Path(path).suffix == ".jsonl" else read_coco_caption_pairs
    pairs, report = read(path, image_root, check_images=check_images)
    if not pairs:
        raise DataError(f"{path}: no usable image-caption pair ({report.detail() or 'the file is empty'})")
    return pairs, report


def write_captions(path: str | os.PathLike, pairs: Sequence[tuple[str, str]]) -> None:
    """Write ``(image path, caption)`` pairs as JSONL (the inverse of :func:`read_captions`).

    Args:
        path: output file; image paths inside its folder are written relative to it.
        pairs: ``(image path, caption)`` tuples.
    """
    folder = Path(path).parent
    lines = [
        json.dumps({"filename": relative_name(name, folder), "caption": caption}) + "\n"
        for name, caption in pairs
    ]
    write_text_atomic(path, "".join(lines))


# --------------------------------------------------------------------------------------------------------------
# Captioning data: COCO Captions JSON and caption JSONL, grouped per image
# --------------------------------------------------------------------------------------------------------------


@dataclass
class CaptionRecord:
    """One image with its reference captions (COCO Captions has about five per image).

    Attributes:
        file_name: image path (joined with the image root).
        captions: the reference captions.
        image_id: id from the source (COCO image id, or the first line number of a JSONL file).
    """

    file_name: str
    captions: list[str] = field(default_factory=list)
    image_id: int = 0


def read_coco_captions(
    json_path: str | os.PathLike, image_root: str | os.PathLike | None = None, *, check_images: bool = True
) -> tuple[list[CaptionRecord], SkipReport]:
    """Read a COCO Captions file (``{"images": [{"id", "file_name"}], "annotations": [{"image_id",
    "caption"}]}``). Images without a caption, empty captions and missing image files are skipped and counted.

    Raises:
        DataError: the file is missing or not COCO Captions JSON.
    """
    data, root, report = open_annotations(json_path, image_root)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(f"{json_path}: not a COCO Captions file (no 'images' list)")
    captions: dict = {}
    for ann in data.get("annotations", []):
        text = ann.get("caption") if isinstance(ann, dict) else None
        if not isinstance(text, str) or not text.strip():
            report.add("bad_caption")
            continue
        captions.setdefault(ann.get("image_id"), []).append(text.strip())
    records = []
    for img in data["images"]:
        if not isinstance(img, dict) or not isinstance(img.get("file_name"), str):
            report.add("bad_image_entry")
            continue
        if not captions.get(img.get("id")):
            report.add("no_caption")
            continue
        path = resolve_image(img["file_name"], root)
        if check_images and not os.path.isfile(path):
            report.add("missing_image")
            continue
        records.append(CaptionRecord(path, captions[img["id"]], int(img["id"])))
    report.log()
    return records, report


def write_coco_captions(path: str | os.PathLike, records: Sequence[CaptionRecord]) -> None:
    """Write records as COCO Captions JSON (the inverse of :func:`read_coco_captions`)."""
    folder = Path(path).parent
    images, anns = [], []
    for i, r in enumerate(records):
        image_id = r.image_id or i + 1
        images.append({"id": image_id, "file_name": relative_name(r.file_name, folder)})
        for c in r.captions:
            anns.append({"id": len(anns) + 1, "image_id": image_id, "caption": c})
    write_text_atomic(path, json.dumps({"images": images, "annotations": anns}))


def read_caption_files(spec: str, image_root: str | None = None) -> tuple[list[CaptionRecord], SkipReport]:
    """Records of a comma-separated list of COCO Captions ``.json`` and caption ``.jsonl`` files (JSONL lines of
    one image are grouped into one record)."""
    records: list[CaptionRecord] = []
    report = SkipReport(source=spec)
    for p in [p.strip() for p in spec.split(",") if p.strip()]:
        if p.endswith(".jsonl"):
            pairs, rep = read_captions(p, image_root)
            grouped: dict[str, CaptionRecord] = {}
            for name, caption in pairs:
                grouped.setdefault(name, CaptionRecord(name, [], len(grouped) + 1)).captions.append(caption)
            records += list(grouped.values())
        else:
            recs, rep = read_coco_captions(p, image_root)
            records += recs
        report.counts.update(rep.counts)
    return records, report
