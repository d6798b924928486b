"""WebDataset shards for data at scale: their layout, reading them by rank and data-loader worker, resuming.

A shard folder holds ``shard-000000.tar``, ``shard-000001.tar``, ... and ``manifest.json``. Each sample is two tar
members sharing a key (the sample's global index, ``000000123``): the image file's bytes as they were
(``000000123.jpg``) and one JSON record (``000000123.json``) in the project's line formats:

* detection: an ODVG detection line, labels indexing the manifest's ``categories``;
* grounding: an ODVG grounding line (from ODVG or MDETR input);
* caption: ``{"filename", "caption"}`` (image-caption pairs for ``openglip label``).

Every record also carries ``kind``, ``image_id`` and ``source`` (index into the manifest's ``sources``), and COCO
``masks`` when the input has segmentations. The manifest lists every shard with its sample count (so a global
index finds its shard without opening any), the merged category names and the counts per kind. The tars are
plain WebDataset shards: ``webdataset.WebDataset(urls)`` reads them too.

Training reads shards through :class:`ShardDataset` and :class:`ShardSampler`: per epoch a seeded order of the
shards, split by rank and then by data-loader worker, so that each worker reads whole shards of its own (the
samples of a shard in a seeded order); the order is a pure function of ``(seed, position)``, so a resumed run
continues the same sample sequence from the number of items it had consumed.
"""

from __future__ import annotations

import bisect
import io
import json
import os
import tarfile
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Sampler

from ..errors import DataError
from ..images import load_image
from .datasets import GroundingDataset
from .odvg import parse_detection_line, parse_grounding_line
from .records import ImageRecord, SkipReport

MANIFEST = "manifest.json"
FORMAT = "openglip-shards/1"
KINDS = ("detection", "grounding", "caption")


# ---------------------------------------------------------------------------------------------- reading


def is_shard_dir(path: str | os.PathLike) -> bool:
    return Path(path).is_dir() and (Path(path) / MANIFEST).is_file()


class ShardSet:
    """A shard folder read by global sample index (the tar member offsets are indexed on first use of a shard).

    Args:
        root: the folder holding ``manifest.json``.

    Raises:
        DataError: no manifest, a manifest of another format, or a listed shard missing or of another size
            (checked here, before any work, not when training first reaches the shard).
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        path = self.root / MANIFEST
        if not path.is_file():
            raise DataError(
                f"{self.root}: no {MANIFEST}; write shards with: openglip data shard INPUT --out DIR"
            )
        try:
            self.manifest = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: not valid JSON ({err})") from None
        if self.manifest.get("format") != FORMAT:
            raise DataError(
                f"{path}: not an OpenGLIP shard manifest (format {self.manifest.get('format')!r})"
            )
        self.shards = self.manifest["shards"]
        self.counts = [int(s["count"]) for s in self.shards]
        self.starts = list(np.cumsum([0, *self.counts[:-1]]).tolist())
        self.categories = list(self.manifest.get("categories", []))
        self._check_files()
        self._index: dict[int, list[dict]] = {}
        self._files: OrderedDict[int, Any] = OrderedDict()
        self._pid = os.getpid()

    def _check_files(self) -> None:
        """Every shard the manifest lists is present with the size it was written with (older manifests
        record no size: present and not empty)."""
        bad = []
        for entry in self.shards:
            path = self.root / entry["name"]
            size = path.stat().st_size if path.is_file() else None
            if size is None:
                bad.append(f"{entry['name']} is missing")
            elif size != entry.get("bytes", size) or size == 0:
                bad.append(f"{entry['name']} has {size} bytes, not {entry.get('bytes', 'more than 0')}")
        if bad:
            more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
            raise DataError(
                f"{self.root}: {len(bad)} of the {len(self.shards)} shards listed in {MANIFEST} cannot be read: "
                f"{'; '.join(bad[:3])}{more}; restore them or write the shards again (openglip data shard)"
            )

    def __len__(self) -> int:
        return sum(self.counts)

    def locate(self, index: int) -> tuple[int, int]:
        """Global index -> (shard number, position inside the shard)."""
        if not 0 <= index < len(self):
            raise IndexError(f"sample {index} outside 0..{len(self) - 1}")
        shard = bisect.bisect_right(self.starts, index) - 1
        return shard, index - self.starts[shard]

    def shard_index(self, shard: int) -> list[dict]:
        """Per sample of a shard, in order: ``{"key", ext: (offset, size), ...}`` from the tar headers."""
        if shard not in self._index:
            path = self.root / self.shards[shard]["name"]
            if not path.is_file():
                raise DataError(f"{path}: shard listed in {MANIFEST} is missing")
            samples: dict[str, dict] = {}
            with tarfile.open(path, "r:") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    key, _, ext = member.name.partition(".")
                    samples.setdefault(key, {"key": key})[ext] = (member.offset_data, member.size)
            entries = list(samples.values())
            if len(entries) != self.counts[shard]:
                raise DataError(
                    f"{path}: {len(entries)} samples but {MANIFEST} says {self.counts[shard]} (a damaged shard?)"
                )
            self._index[shard] = entries
        return self._index[shard]

    def _file(self, shard: int):
        if self._pid != os.getpid():  # a forked data-loader worker: never share the parent's file offsets
            self._files, self._pid = OrderedDict(), os.getpid()
        f = self._files.get(shard)
        if f is None:
            f = open(self.root / self.shards[shard]["name"], "rb")  # noqa: SIM115 (kept open for reads)
            self._files[shard] = f
            if len(self._files) > 4:  # a worker reads one shard at a time; keep a few open
                self._files.popitem(last=False)[1].close()
        self._files.move_to_end(shard)
        return f

    def read(self, index: int, image: bool = True) -> tuple[dict, bytes | None, str | None]:
        """``(record, image bytes, image extension)`` of sample ``index`` (no image bytes with ``image=False``)."""
        shard, pos = self.locate(index)
        entry = self.shard_index(shard)[pos]
        f = self._file(shard)
        offset, size = entry["json"]
        f.seek(offset)
        record = json.loads(f.read(size))
        if not image:
            return record, None, None
        ext = next(k for k in entry if k not in ("key", "json"))
        offset, size = entry[ext]
        f.seek(offset)
        return record, f.read(size), ext

    def records(self) -> Iterator[tuple[int, dict]]:
        """``(global index, record)`` of every sample, in order (image bytes are not read)."""
        for shard in range(len(self.shards)):
            for pos in range(self.counts[shard]):
                yield self.starts[shard] + pos, self.read(self.starts[shard] + pos, image=False)[0]

    def open_image(self, index: int) -> Image.Image:
        _, data, _ = self.read(index)
        return Image.open(io.BytesIO(data))

    def __getstate__(self):  # data-loader workers get the manifest, not open files
        state = dict(self.__dict__)
        state["_files"] = OrderedDict()
        return state


def image_record(record: dict, categories: Sequence[str], report: SkipReport) -> ImageRecord | None:
    """An :class:`ImageRecord` from a detection or grounding shard record (None when unusable)."""

    size = (int(record["height"]), int(record["width"]))
    head = {"file_name": record["filename"], "height": size[0], "width": size[1]}
    head["image_id"] = record.get("image_id", 0)
    if record["kind"] == "detection":
        names = dict(enumerate(categories))
        parsed = parse_detection_line(record, size, dict(names), names, report)
        if parsed is None:
            return None
        masks = record.get("masks")
        return ImageRecord(**head, boxes=parsed[0], labels=parsed[1], masks=masks)
    if record["kind"] == "grounding":
        parsed = parse_grounding_line(record, size, report)
        if parsed is None:
            return None
        caption, boxes, spans = parsed
        labels = np.full(len(spans), -1, dtype=np.int64)
        return ImageRecord(**head, boxes=boxes, labels=labels, caption=caption, spans=spans)
    raise DataError(
        f"a {record['kind']!r} record cannot be trained on (caption shards are input to openglip label)"
    )


# ---------------------------------------------------------------------------------------------- training


class ShardSampler(Sampler):
    """``(epoch, index)`` keys in shard-reading order, split by rank, then by data-loader worker.

    Per epoch ``e`` the shards are permuted with ``(seed, e)``; rank ``r`` of ``W`` takes every ``W``-th shard
    from position ``r``, and its reader ``w`` of ``R = max(num_workers, 1)`` every ``R``-th of those. A reader
    goes through its shards one after the other (the samples of each in an order seeded by ``(seed, e, shard)``)
    and on into the next epoch. The data loader hands batch ``j`` to worker ``j % R``, so batch ``j`` is made
    of the next ``batch_size`` keys of reader ``j % R``: every worker reads only its own shards.

    The position is the number of items this rank has consumed (a multiple of ``batch_size``), as for
    :class:`~openglip.engine.sampler.ResumableSampler`: a sampler built with ``start=n`` yields exactly what an
    uninterrupted one yields after its first ``n`` keys.

    Raises:
        DataError: fewer shards than ``world_size * readers`` (some worker would have nothing to read).
    """

    def __init__(
        self,
        counts: Sequence[int],
        *,
        batch_size: int,
        num_workers: int = 0,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        start: int = 0,
        shuffle: bool = True,
    ):
        self.counts = [int(c) for c in counts]
        self.starts = list(np.cumsum([0, *self.counts[:-1]]).tolist())
        self.batch_size = batch_size
        self.readers = max(num_workers, 1)
        self.seed, self.rank, self.world_size, self.shuffle = seed, rank, world_size, shuffle
        if len(self.counts) < world_size * self.readers:
            raise DataError(
                f"{len(self.counts)} shards cannot be split over {world_size} rank(s) x {self.readers} "
                f"data-loader worker(s): write at least {world_size * self.readers} shards (a smaller "
                "--shard-size) or use fewer workers"
            )
        if start % batch_size:
            raise ValueError(f"start {start} is not a multiple of the batch size {batch_size}")
        self.start = start

    def _rng(self, *key: int) -> torch.Generator:
        seed = int(np.random.SeedSequence([self.seed, *key]).generate_state(1, np.uint64)[0] >> 1)
        return torch.Generator().manual_seed(seed)

    def reader_shards(self, epoch: int, reader: int) -> list[int]:
        """The shards reader ``reader`` of this rank reads in ``epoch``, in order."""
        n = len(self.counts)
        order = torch.randperm(n, generator=self._rng(epoch)).tolist() if self.shuffle else list(range(n))
        return order[self.rank :: self.world_size][reader :: self.readers]

    def _stream(self, reader: int, skip: int) -> Iterator[tuple[int, int]]:
        """Reader ``reader``'s endless key sequence, from its ``skip``-th key."""
        epoch = 0
        while True:
            for shard in self.reader_shards(epoch, reader):
                n = self.counts[shard]
                if skip >= n:
                    skip -= n
                    continue
                order = (
                    torch.randperm(n, generator=self._rng(epoch, shard)).tolist()
                    if self.shuffle
                    else range(n)
                )
                for pos in list(order)[skip:]:
                    yield epoch, self.starts[shard] + pos
                skip = 0
            epoch += 1

    def __iter__(self) -> Iterator[tuple[int, int]]:
        done = self.start // self.batch_size  # batches this rank has consumed
        R = self.readers
        streams = [
            self._stream(w, (done // R + (1 if w < done % R else 0)) * self.batch_size) for w in range(R)
        ]
        batch = done
        while True:
            stream = streams[batch % R]
            for _ in range(self.batch_size):
                yield next(stream)
            batch += 1

    def __len__(self) -> int:  # items per epoch for this rank (approximately); iteration never ends
        return -(-sum(self.counts) // self.world_size)


class ShardDataset(GroundingDataset):
    """Detection and grounding samples read from shards (see :class:`GroundingDataset` for the arguments and
    the item format); addressed by ``(epoch, global index)``, sampled with :meth:`sampler`.

    Raises:
        DataError: the shards hold caption-only samples (label them first) or none at all.
    """

    def __init__(self, root: str | os.PathLike, **kwargs):
        self.shards = ShardSet(root)
        kinds = self.shards.manifest.get("kinds", {})
        if kinds.get("caption"):
            raise DataError(
                f"{root}: {kinds['caption']} caption-only samples have no boxes to train on; pseudo-label them "
                "first (openglip label --captions DIR --out OUT/) and train on the labelled shards"
            )
        if len(self.shards) == 0:
            raise DataError(f"{root}: the shards hold no samples")
        super().__init__([], self.shards.categories, **kwargs)
        self.report = SkipReport(source=str(root))

    def __len__(self) -> int:
        return len(self.shards)

    def record(self, index: int) -> ImageRecord:
        record, data, _ = self.shards.read(index)
        self._image_bytes = (index, data)
        rec = image_record(record, self.categories, self.report)
        if rec is None:
            raise DataError(f"{self.shards.root}: sample {index} has no usable annotation")
        return rec

    def image(self, index: int, record: ImageRecord) -> Image.Image:
        cached, data = getattr(self, "_image_bytes", (None, None))
        if cached != index:
            _, data, _ = self.shards.read(index)
        self._image_bytes = (None, None)
        return load_image(Image.open(io.BytesIO(data)), where=f"{self.shards.root} sample {index}")[0]

    def sampler(self, **kwargs) -> ShardSampler:
        """A :class:`ShardSampler` over these shards (``batch_size``, ``num_workers``, ``seed``, ``rank``,
        ``world_size``, ``start``)."""
        return ShardSampler(self.shards.counts, **kwargs)


# ---------------------------------------------------------------------------------------------- labelling


def caption_pairs(shards: ShardSet) -> tuple[list[tuple[str, str]], dict[str, int]]:
    """Image-caption pairs of the caption samples of a shard set: ``(pairs, image name -> global index)``."""
    pairs, where = [], {}
    for index, record in shards.records():
        if record.get("kind") != "caption":
            continue
        pairs.append((record["filename"], record["caption"]))
        where.setdefault(record["filename"], index)
    return pairs, where
