"""Image-caption pairs as JSONL ``{"filename", "caption"}`` (input to pseudo-labelling and RegionCLIP)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from ..files import write_text_atomic
from .coco import relative_name, resolve_image
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
        without a string ``filename`` or a non-empty string ``caption`` are skipped ("bad_record").

    Raises:
        FileNotFoundError: ``jsonl_path`` does not exist.
        ValueError: the file is not JSONL.
    """
    root = Path(jsonl_path).parent if image_root is None else Path(image_root)
    report = SkipReport(source=str(jsonl_path))
    pairs = []
    for _, obj in iter_jsonl(jsonl_path, report):
        name, caption = obj.get("filename"), obj.get("caption")
        if not isinstance(name, str) or not isinstance(caption, str) or not caption.strip():
            report.add("bad_record")
            continue
        path = resolve_image(name, root)
        if check_images and not os.path.isfile(path):
            report.add("missing_image")
            continue
        pairs.append((path, caption))
    report.log()
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
