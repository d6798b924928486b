"""Writing WebDataset shards: annotation files or pseudo labels and their images -> numbered tars + a manifest.

The layout and the record formats are described in :mod:`openglip.data.shards` (which reads them).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..errors import DataError, UsageError
from ..files import write_text_atomic
from .build import read_annotations
from .captions import read_captions
from .coco import relative_name
from .odvg import odvg_line
from .records import ImageRecord, SkipReport
from .shards import FORMAT, MANIFEST


class ShardWriter:
    """Write samples into numbered tar shards of ``shard_size`` samples and a manifest (on :meth:`close`).

    Each shard is written to a temporary name and renamed when complete, and the manifest last: a killed run
    leaves no half shard under a final name and no manifest.

    Args:
        out_dir: the shard folder (created; must not hold a manifest already).
        shard_size: samples per shard.
        categories: category names detection labels index.
        sources: description of each input (recorded in the manifest).
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        *,
        shard_size: int = 1000,
        categories: Sequence[str] = (),
        sources: Sequence[dict] = (),
    ):
        if shard_size < 1:
            raise UsageError(f"--shard-size must be at least 1, got {shard_size}")
        self.out = Path(out_dir)
        if (self.out / MANIFEST).exists():
            raise UsageError(f"{self.out} already holds shards ({MANIFEST}); choose a new folder")
        self.out.mkdir(parents=True, exist_ok=True)
        self.shard_size = shard_size
        self.categories = list(categories)
        self.sources = list(sources)
        self.shards: list[dict] = []
        self.kinds: Counter = Counter()
        self._tar = None
        self._count = 0
        self.total = 0

    def _open(self) -> None:
        import webdataset as wds

        name = f"shard-{len(self.shards):06d}.tar"
        self._tmp = self.out / (name + ".tmp")
        self._name = name
        self._file = open(self._tmp, "wb")  # noqa: SIM115 (closed in _finish)
        self._tar = wds.TarWriter(self._file, encoder=False, mtime=0.0)  # mtime 0: identical bytes on a rerun
        self._count = 0

    def _finish(self) -> None:
        self._tar.close()
        self._file.close()
        os.replace(self._tmp, self.out / self._name)
        size = (self.out / self._name).stat().st_size  # the reader checks it before any work
        self.shards.append({"name": self._name, "count": self._count, "bytes": size})
        self._tar = None

    def write(self, record: dict, image: bytes, ext: str) -> None:
        """Add one sample: its JSON ``record`` (with a ``kind``) and the image file's bytes (``ext``: jpg, png...)."""
        if self._tar is None:
            self._open()
        key = f"{self.total:09d}"
        payload = json.dumps(record, separators=(",", ":")).encode("utf-8")
        self._tar.write({"__key__": key, ext.lower().lstrip("."): bytes(image), "json": payload})
        self.kinds[record["kind"]] += 1
        self._count += 1
        self.total += 1
        if self._count == self.shard_size:
            self._finish()

    def close(self) -> dict:
        """Finish the last shard and write the manifest; returns it."""
        if self._tar is not None:
            self._finish()
        manifest = {
            "format": FORMAT,
            "total": self.total,
            "shard_size": self.shard_size,
            "shards": self.shards,
            "kinds": dict(self.kinds),
            "categories": self.categories,
            "sources": self.sources,
        }
        write_text_atomic(self.out / MANIFEST, json.dumps(manifest, indent=1))
        return manifest


def _image_ext(path: str) -> str:
    ext = Path(path).suffix.lower().lstrip(".")
    return ext if ext else "jpg"


def _read_input(path: Path, image_root: str | None, report_sink: list[SkipReport]):
    """``(kind, records-or-pairs, categories)`` of one input file, recognised from its name and content."""

    if path.suffix == ".jsonl":
        first = None
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    try:
                        first = json.loads(line)
                    except json.JSONDecodeError:
                        continue
                    break
        if isinstance(first, dict) and "caption" in first and not {"detection", "grounding"} & set(first):
            pairs, report = read_captions(path, image_root)
            report_sink.append(report)
            return "caption", pairs, []
    records, categories = read_annotations(path, image_root)
    return "records", records, categories


def _shard_record(rec: ImageRecord, name: str, labels: list[int], categories: list[str], source: int) -> dict:
    line = odvg_line(rec, categories, name)
    if rec.caption is None:
        for inst, label in zip(line["detection"]["instances"], labels):
            inst["label"] = label
    kind = "detection" if rec.caption is None else "grounding"
    out = {"kind": kind, **line, "image_id": _plain(rec.image_id), "source": source}
    if rec.masks is not None:
        out["masks"] = rec.masks
    return out


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


def write_shards(
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    shard_size: int = 1000,
    image_root: str | None = None,
    progress: bool = True,
) -> dict:
    """Convert annotation files (COCO / ODVG / MDETR / caption JSONL) and their images into shards.

    Args:
        inputs: annotation files; the format is recognised as in training (``.jsonl``: ODVG or captions).
        out_dir: new shard folder.
        shard_size: samples per shard.
        image_root: folder image names are relative to (default: each file's folder).
        progress: show a progress bar.

    Returns:
        The manifest (also written to ``out_dir/manifest.json``).

    Raises:
        UsageError: an input is missing, or the output folder already holds shards.
        DataError: an input has no usable record.
    """

    loaded, sources, categories, index_of = [], [], [], {}
    for raw in inputs:
        path = Path(raw)
        if not path.is_file():
            raise UsageError(f"{path}: input file not found")
        try:
            kind, items, cats = _read_input(path, image_root, [])
        except ValueError as err:
            raise DataError(str(err)) from None
        if not items:
            raise DataError(f"{path}: no usable records (images missing? see the skipped-entry counts above)")
        remap = [index_of.setdefault(name, len(index_of)) for name in cats]
        categories = list(index_of)
        loaded.append((kind, items, cats, remap))
        sources.append({"path": str(path), "kind": kind if kind == "caption" else "annotations"})
    writer = ShardWriter(out_dir, shard_size=shard_size, categories=categories, sources=sources)
    total = sum(len(items) for _, items, _, _ in loaded)
    bar = tqdm(total=total, desc="shard", unit="img", disable=not progress)
    for source, (kind, items, cats, remap) in enumerate(loaded):
        folder = Path(inputs[source]).parent if image_root is None else Path(image_root)
        for i, item in enumerate(items):
            file_name = item[0] if kind == "caption" else item.file_name
            name = _relative(file_name, folder)
            with open(file_name, "rb") as f:
                data = f.read()
            if kind == "caption":
                record = {"kind": "caption", "filename": name, "caption": item[1], "image_id": i + 1}
                record["source"] = source
            else:
                labels = [remap[int(lab)] if lab >= 0 else -1 for lab in item.labels.tolist()]
                record = _shard_record(item, name, labels, cats, source)
            writer.write(record, data, _image_ext(file_name))
            bar.update(1)
    bar.close()
    return writer.close()


def _relative(file_name: str, folder: Path) -> str:
    return relative_name(file_name, folder)


def odvg_to_shards(
    lines: Iterable[dict],
    out_dir: str | os.PathLike,
    image_bytes,
    *,
    shard_size: int = 1000,
    progress: bool = True,
) -> dict:
    """Write ODVG grounding lines (pseudo labels) and their images as shards.

    Args:
        lines: ODVG grounding line dicts.
        out_dir: new shard folder.
        image_bytes: ``filename -> (bytes, ext)`` for each line's image.
        shard_size: samples per shard.
        progress: show a progress bar.
    """

    lines = list(lines)
    writer = ShardWriter(out_dir, shard_size=shard_size, sources=[{"kind": "labels"}])
    for i, line in enumerate(tqdm(lines, desc="shard", unit="img", disable=not progress)):
        data, ext = image_bytes(line["filename"])
        writer.write({"kind": "grounding", **line, "image_id": i + 1, "source": 0}, data, ext)
    return writer.close()
