"""GLIP's teacher step: ground the noun phrases of image-caption pairs with a teacher and write the boxes
above a threshold as ODVG grounding records (pseudo labels for a student).

Resumable: every finished pair is appended to the output as one complete JSON line and flushed; a rerun
reads what is there (dropping a half-written last line) and labels only the rest, so a killed run loses at
most the batch in flight and never labels a pair twice. Under ``torchrun`` each rank labels its own shard into
``OUT.rankN.part`` and rank 0 merges the parts into ``OUT`` at the end (atomically, without duplicates).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from ..files import write_text_atomic
from ..images import ImageError, load_image
from .distributed import DistInfo, barrier


@dataclass
class LabelStats:
    labelled: int = 0  # pairs labelled by this run
    skipped_done: int = 0  # pairs already in the output
    boxes: int = 0  # pseudo boxes written by this run
    unreadable: int = 0  # images that could not be read (skipped, listed in the log)


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
    teacher,
    out_path: str | os.PathLike,
    *,
    extractor: Callable[[str], list[tuple[int, int]]],
    threshold: float = 0.5,
    batch_size: int = 4,
    dist: DistInfo | None = None,
    log=print,
    open_image: Callable[[str], tuple] | None = None,
) -> LabelStats:
    """Label ``(image path, caption)`` pairs into the ODVG file ``out_path`` (see the module docstring).

    ``open_image(name) -> (image, (h, w))`` reads images named otherwise than by a path (e.g. inside shards);
    those names are then written to the output as they are.
    """
    dist = dist or DistInfo()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    root = out.parent if open_image is None else None
    open_image = open_image or load_image
    target = out if not dist.enabled else out.with_name(f"{out.name}.rank{dist.rank}.part")
    done = _read_done(out, root) | (_read_done(target, root) if target != out else set())
    mine = [p for i, p in enumerate(pairs) if i % dist.world_size == dist.rank]
    todo = [p for p in mine if pair_key(*p) not in done]
    stats = LabelStats(skipped_done=len(mine) - len(todo))
    bar = tqdm(total=len(todo), desc="label", unit="img", disable=not dist.is_main or len(todo) < 2)
    with open(target, "a", encoding="utf-8") as f:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            images, sizes, keep = [], [], []
            for file_name, caption in batch:
                try:
                    image, size = open_image(file_name)
                except ImageError as err:
                    stats.unreadable += 1
                    log(f"openglip: warning: {err}")
                    continue
                images.append(image)
                sizes.append(size)
                keep.append((file_name, caption))
            spans = [extractor(caption) for _, caption in keep]
            phrases = [[caption[s:e] for s, e in sp] for (_, caption), sp in zip(keep, spans)]
            results = teacher.ground(images, phrases) if images else []
            lines = []
            for (file_name, caption), size, sp, dets in zip(keep, sizes, spans, results):
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
    from ..data.shards import MANIFEST, odvg_to_shards

    out = Path(out_dir)
    (out / MANIFEST).unlink(missing_ok=True)
    for old in out.glob("shard-*.tar"):
        old.unlink()
    lines = [json.loads(line) for line in Path(labels_path).read_text(encoding="utf-8").splitlines() if line]
    return odvg_to_shards(lines, out, image_bytes, shard_size=shard_size)
