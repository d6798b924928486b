"""Running a predictor over a list of image files: batches, per-image failures, progress, output names.

This is the loop behind ``openglip detect``; the command only parses arguments, checks its outputs and
writes files. One unreadable image never stops the others: it comes back as a result with an ``error``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from .errors import UsageError
from .images import ImageError
from .structures import Detections, Predictor


@dataclass
class ImageResult:
    """What happened to one input image.

    Attributes:
        index: position of the image in the input list (0-based).
        path: the image file.
        detections: its detections, or None when it could not be used.
        error: why it could not be used (one line naming the file), else None.
    """

    index: int
    path: Path
    detections: Detections | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.detections is not None


def detect_paths(
    predictor: Predictor,
    paths: Sequence[str | os.PathLike],
    prompt,
    *,
    box_threshold: float = 0.3,
    batch_size: int = 4,
    progress: bool = True,
) -> Iterator[ImageResult]:
    """Detect ``prompt`` in every image file of ``paths``, in order, one :class:`ImageResult` per image.

    Images are run ``batch_size`` at a time; when a batch holds an image that cannot be read
    (:class:`~openglip.images.ImageError`), its images are retried one by one so that only the bad ones fail.

    Args:
        predictor: anything with the :class:`~openglip.structures.Predictor` ``predict`` call.
        paths: image files.
        prompt: the prompt shared by every image (caption, phrase list or :class:`~openglip.prompts.Prompt`).
        box_threshold: minimum score of a returned box.
        batch_size: images per ``predict`` call.
        progress: show a progress bar (stderr) when there are at least two images.

    Yields:
        :class:`ImageResult` in the order of ``paths``.
    """

    if batch_size < 1:
        raise UsageError(f"batch_size must be at least 1, got {batch_size}")
    paths = [Path(p) for p in paths]
    bar = tqdm(
        total=len(paths), desc="detect", unit="img", disable=not progress or len(paths) < 2, file=sys.stderr
    )
    try:
        for start in range(0, len(paths), batch_size):
            batch = paths[start : start + batch_size]
            try:
                outputs = predictor.predict(
                    [str(p) for p in batch], prompt, box_threshold=box_threshold, batch_size=len(batch)
                )
                results = [ImageResult(start + k, p, d) for k, (p, d) in enumerate(zip(batch, outputs))]
            except ImageError:
                results = []
                for k, p in enumerate(batch):
                    try:
                        dets = predictor.predict(str(p), prompt, box_threshold=box_threshold)
                        results.append(ImageResult(start + k, p, dets))
                    except ImageError as err:
                        results.append(ImageResult(start + k, p, None, str(err)))
            for result in results:
                bar.update(1)
                yield result
    finally:
        bar.close()


_KEEP_SUFFIXES = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG"}


def output_names(paths: Sequence[str | os.PathLike], suffix_for_others: str = ".png") -> list[Path]:
    """Unique relative output names for drawn copies of ``paths``, mirroring their input paths.

    Names are the inputs' paths relative to the deepest folder that holds them all (``a/x.jpg`` and
    ``a/sub/x.jpg`` -> ``x.jpg`` and ``sub/x.jpg``). JPEG and PNG inputs keep their names; other formats get
    ``suffix_for_others`` appended (``x.tif`` -> ``x.tif.png``), so ``x.jpg`` and ``x.png`` never meet. The
    rare name that still repeats (an input literally called ``x.tif.png``) gets ``_2``, ``_3``, ... The result
    depends only on the list of paths, not on what is on disk.
    """
    absolute = [Path(os.path.abspath(p)) for p in paths]
    if not absolute:
        return []
    root = Path(os.path.commonpath([str(p.parent) for p in absolute]))
    names, taken = [], set()
    for p in absolute:
        rel = p.relative_to(root)
        if rel.suffix.lower() not in _KEEP_SUFFIXES:
            rel = rel.with_name(rel.name + suffix_for_others)
        candidate, n = rel, 1
        while str(candidate).lower() in taken:  # case-insensitive file systems too
            n += 1
            candidate = rel.with_name(f"{rel.stem}_{n}{rel.suffix}")
        taken.add(str(candidate).lower())
        names.append(candidate)
    return names


def image_format(name: str | os.PathLike) -> str:
    """The PIL format a drawn image named ``name`` is written in (JPEG for .jpg/.jpeg, else PNG)."""
    return _KEEP_SUFFIXES.get(Path(name).suffix.lower(), "PNG")
