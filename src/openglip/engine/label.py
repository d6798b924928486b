"""GLIP's teacher step: ground the noun phrases of image-caption pairs with a teacher and write the boxes
above a threshold as ODVG grounding records (pseudo labels for a student).

Resumable: every finished pair is appended to the output as one complete JSON line and flushed; a rerun
reads what is there (dropping a half-written last line) and labels only the rest, so a killed run loses at
most the batch in flight and never labels a pair twice. Under ``torchrun`` each rank labels its own shard into
``OUT.rankN.part`` and rank 0 merges the parts into ``OUT`` at the end (atomically, without duplicates).

A pair listed twice is labelled once. A second run on the same output while one is going is refused: the
writer holds ``OUT.lock`` (``flock``). A caption in which no noun phrase is found is skipped with one line
naming the image and the caption.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..data.shard_writing import odvg_to_shards
from ..data.shards import MANIFEST
from ..distributed import DistInfo, barrier
from ..errors import UsageError
from ..files import write_text_atomic
from ..images import ImageError, load_image
from ..prompts import normalize_phrase
from ..structures import Detections, Predictor


@dataclass
class LabelStats:
    labelled: int = 0  # pairs labelled by this run
    skipped_done: int = 0  # pairs already in the output
    boxes: int = 0  # pseudo boxes written by this run
    unreadable: int = 0  # images that could not be read (skipped, listed in the log)
    no_phrase: int = 0  # captions without a noun phrase (skipped, listed in the log)
    duplicates: int = 0  # pairs listed more than once in the input (labelled once)


def _warn(message: str) -> None:
    print(message, file=sys.stderr)


@contextlib.contextmanager
def output_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` for the block, or refuse at once when another process has it.

    The lock file is removed at the end (while still locked). A run that opened it just before that finds,
    once it holds the lock, that ``path`` is no longer its file, and refuses as if the lock were held.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on POSIX: no lock
        yield
        return
    busy = UsageError(
        f"another openglip label run is writing {path.name.removesuffix('.lock')} (it holds {path}); "
        "wait for it to finish, or give another --out"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise busy from None
        try:
            if not path.exists() or not os.path.samestat(os.fstat(handle.fileno()), path.stat()):
                raise busy  # the previous holder removed the file we opened: another run may hold the new one
            yield
        finally:
            if path.exists() and os.path.samestat(os.fstat(handle.fileno()), path.stat()):
                path.unlink()
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def pair_key(file_name: str, caption: str) -> str:
    return f"{os.path.normpath(file_name)}\x00{caption}"


def _name_key(rec: dict, root: Path | None) -> str:
    """The pair key of an output record: image names are relative to ``root``, or opaque (shard input) names."""
    name = rec["filename"] if root is None else str(root / rec["filename"])
    return pair_key(name, rec["grounding"]["caption"])


def _read_done(path: Path, root: Path | None) -> set[str]:
    """Keys of the complete records in ``path``; a truncated last line (a kill mid-write) is cut off."""
    if not path.exists():
        return set()
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        data = data[: data.rfind(b"\n") + 1]
        with open(path, "r+b") as f:
            f.truncate(len(data))
    done = set()
    for line in data.decode("utf-8").splitlines():
        try:
            done.add(_name_key(json.loads(line), root))
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    return done


def _in_original_pixels(dets: Detections, seen_size: tuple[int, int], size: tuple[int, int]) -> Detections:
    """Boxes found on the image as the predictor saw it (huge images are reduced when read) in the pixels of
    the original image of ``size`` (height, width)."""
    if seen_size == size:
        return dets
    (sh, sw), (h, w) = seen_size, size
    scale = np.array([w / sw, h / sh, w / sw, h / sh], dtype=np.float32)
    return Detections(
        dets.xyxy * scale, dets.scores, dets.labels, dets.phrases, None, dets.prompt_phrases, size
    )


def _phrases(caption: str, spans: Sequence[tuple[int, int]]) -> tuple[list[str], list[tuple[int, int]]]:
    """Each distinct noun phrase once, with the span of its first occurrence (a repeated phrase would only
    compete with itself for the same boxes)."""
    phrases, kept, seen = [], [], set()
    for s, e in spans:
        key = normalize_phrase(caption[s:e])
        if key and key not in seen:
            seen.add(key)
            phrases.append(caption[s:e])
            kept.append((s, e))
    return phrases, kept


def _record(file_name: str, root: Path | None, size, caption: str, spans, dets, threshold: float) -> dict:
    try:
        name = file_name if root is None else os.path.relpath(file_name, root)
    except ValueError:
        name = file_name
    regions = []
    for box, label, score in zip(dets.xyxy.tolist(), dets.labels.tolist(), dets.scores.tolist()):
        if score < threshold:
            continue
        s, e = spans[label]
        regions.append(
            {
                "bbox": [round(v, 2) for v in box],
                "phrase": caption[s:e],
                "tokens_positive": [[s, e]],
                "score": round(score, 4),
            }
        )
    return {
        "filename": name,
        "height": size[0],
        "width": size[1],
        "grounding": {"caption": caption, "regions": regions},
    }


def label_pairs(
    pairs: Sequence[tuple[str, str]],
    teacher: Predictor,
    out_path: str | os.PathLike,
    *,
    extractor: Callable[[str], list[tuple[int, int]]],
    threshold: float = 0.5,
    batch_size: int = 4,
    dist: DistInfo | None = None,
    log: Callable[[str], object] = _warn,
    open_image: Callable[[str], tuple] | None = None,
) -> LabelStats:
    """Label ``(image path, caption)`` pairs into the ODVG file ``out_path`` (see the module docstring).

    ``open_image(name) -> (image, (h, w))`` reads images named otherwise than by a path (e.g. inside shards);
    those names are then written to the output as they are.

    Raises:
        UsageError: another process is labelling into ``out_path``.
    """
    dist = dist or DistInfo()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    root = out.parent if open_image is None else None
    open_image = open_image or load_image
    target = out if not dist.enabled else out.with_name(f"{out.name}.rank{dist.rank}.part")
    # rank 0 (or the only process) locks OUT itself, the other ranks their part: two runs never share a file
    lock = out.with_name(out.name + ".lock") if dist.is_main else target.with_name(target.name + ".lock")
    with output_lock(lock):
        return _label_locked(
            pairs, teacher, out, target, root, extractor, threshold, batch_size, dist, log, open_image
        )


def _label_locked(
    pairs, teacher, out, target, root, extractor, threshold, batch_size, dist, log, open_image
) -> LabelStats:
    unique, seen = [], set()  # a pair listed twice is labelled once
    for file_name, caption in pairs:
        if pair_key(file_name, caption) not in seen:
            seen.add(pair_key(file_name, caption))
            unique.append((file_name, caption))
    done = _read_done(out, root) | (_read_done(target, root) if target != out else set())
    mine = [p for i, p in enumerate(unique) if i % dist.world_size == dist.rank]
    todo = [p for p in mine if pair_key(*p) not in done]
    stats = LabelStats(skipped_done=len(mine) - len(todo), duplicates=len(pairs) - len(unique))
    bar = tqdm(
        total=len(todo), desc="label", unit="img", disable=not dist.is_main or len(todo) < 2, file=sys.stderr
    )
    with open(target, "a", encoding="utf-8") as f:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            images, sizes, keep, spans, phrases = [], [], [], [], []
            for file_name, caption in batch:
                found, kept = _phrases(caption, extractor(caption))
                if not found:
                    stats.no_phrase += 1
                    log(f"openglip: warning: {file_name}: no noun phrase in the caption {caption!r}; skipped")
                    continue
                try:
                    image, size = open_image(file_name)
                except ImageError as err:
                    stats.unreadable += 1
                    log(f"openglip: warning: {err}")
                    continue
                images.append(image)
                sizes.append(size)
                keep.append((file_name, caption))
                spans.append(kept)
                phrases.append(found)
            results = teacher.predict(images, prompts=phrases, box_threshold=0.0) if images else []
            lines = []
            for (file_name, caption), image, size, sp, dets in zip(keep, images, sizes, spans, results):
                dets = _in_original_pixels(dets, (image.height, image.width), size)
                rec = _record(file_name, root, size, caption, sp, dets, threshold)
                stats.boxes += len(rec["grounding"]["regions"])
                lines.append(json.dumps(rec) + "\n")
            f.write("".join(lines))  # whole lines only: a kill can cut at most this write
            f.flush()
            os.fsync(f.fileno())
            stats.labelled += len(lines)
            bar.update(len(batch))
    bar.close()
    if dist.enabled:
        barrier(dist)
        if dist.is_main:
            _merge(out, [out.with_name(f"{out.name}.rank{r}.part") for r in range(dist.world_size)], root)
        barrier(dist)
    return stats


def _merge(out: Path, parts: list[Path], root: Path | None) -> None:
    """Append the shard files to ``out`` without duplicates (atomically) and remove them."""
    seen, lines = set(), []
    for path in [out, *parts]:
        if not path.exists():
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                key = _name_key(json.loads(line), root)
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
            if key not in seen:
                seen.add(key)
                lines.append(line + "\n")
    write_text_atomic(out, "".join(lines))
    for path in parts:
        path.unlink(missing_ok=True)


def labels_to_shards(
    labels_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    image_bytes: Callable[[str], tuple[bytes, str]],
    *,
    shard_size: int = 1000,
) -> dict:
    """Write the labelled ODVG file as shards in ``out_dir`` (pseudo labels + image bytes).

    The ODVG file stays the resumable record of the run; the shards are rebuilt from it (an older manifest
    is removed first, so that a kill mid-way leaves no manifest naming half-written shards).
    """

    out = Path(out_dir)
    (out / MANIFEST).unlink(missing_ok=True)
    for old in out.glob("shard-*.tar"):
        old.unlink()
    lines = [json.loads(line) for line in Path(labels_path).read_text(encoding="utf-8").splitlines() if line]
    return odvg_to_shards(lines, out, image_bytes, shard_size=shard_size)
