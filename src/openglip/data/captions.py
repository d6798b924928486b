"""Image-caption pairs (input to pseudo-labelling and RegionCLIP): JSONL ``{"filename", "caption"}`` lines, or
COCO Captions JSON (``images`` + ``annotations[].caption``, as ``captions_train2017.json``)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from ..errors import DataError
from ..files import write_text_atomic
from .coco import load_json, relative_name, resolve_image
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


def read_coco_captions(
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
    data = load_json(json_path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(f"{json_path}: not a COCO Captions file (expected 'images' and 'annotations' lists)")
    anns = data.get("annotations")
    if not isinstance(anns, list):
        raise DataError(f"{json_path}: not a COCO Captions file (expected an 'annotations' list)")
    root = Path(json_path).parent if image_root is None else Path(image_root)
    report = SkipReport(source=str(json_path))
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
    read = read_captions if Path(path).suffix == ".jsonl" else read_coco_captions
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
