"""What every protocol runner shares: GLIP's name cleaning, prompts with GLIP's caption-prompt entries,
COCO results for one prompt, mean ± std, Markdown tables and reports written atomically."""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import numpy as np

from ..data.splits import read_category_split
from ..engine.evaluate import detect_all
from ..errors import DataError
from ..files import write_text_atomic
from ..prompts import SEPARATOR, Prompt, build_prompt

OVCOCO_SPLIT = resources.files("openglip.protocols") / "data" / "ovcoco_split.json"


def ovcoco_split() -> dict[str, str]:
    """The 48 base / 17 novel COCO categories (OVR-CNN's split): ``{name: "base" | "novel"}``."""
    with resources.as_file(OVCOCO_SPLIT) as path:
        return read_category_split(path)


def clean_name(name: str) -> str:
    """GLIP's category-name cleaning for prompts (``clean_name`` in its inference code): drop ``(...)``,
    underscores become spaces (``"arctic_(type_of_shoe)" -> "arctic"``)."""
    name = re.sub(r"\(.*\)", "", name)
    return " ".join(name.replace("_", " ").split())


def category_names(categories: Sequence[dict]) -> list[str]:
    """One prompt phrase per category, in order: the cleaned name, or, where cleaning makes two categories alike
    (LVIS: ``bow_(weapon)`` and ``bow_(decorative_ribbons)``), the name with only its underscores replaced, so
    every category keeps its own phrase and the phrase index stays the category index."""
    cleaned = [clean_name(c["name"]) or c["name"] for c in categories]
    counts = Counter(cleaned)
    return [
        n if counts[n] == 1 else " ".join(c["name"].replace("_", " ").split())
        for n, c in zip(cleaned, categories)
    ]


def prompt_from_entries(entries: Sequence, where: str = "prompt") -> Prompt:
    """A prompt with one phrase per entry, joined by ". ".

    An entry is a name (``"fish"``) or GLIP's caption-prompt dict ``{"prefix": "there are some ", "name":
    "holes", "suffix": " on the road"}``: the phrase is the name, prefix and suffix are context around it.

    Raises:
        DataError: an entry is neither, or has an empty name.
    """
    caption, phrases, spans = "", [], []
    for i, entry in enumerate(entries):
        if isinstance(entry, str):
            prefix, name, suffix = "", entry, ""
        elif isinstance(entry, dict) and isinstance(entry.get("name"), str):
            prefix, name, suffix = str(entry.get("prefix", "")), entry["name"], str(entry.get("suffix", ""))
        else:
            raise DataError(
                f"{where}: entry #{i} must be a name or {{'prefix', 'name', 'suffix'}}, got {entry!r}"
            )
        name = " ".join(name.split())
        if not name:
            raise DataError(f"{where}: entry #{i} has an empty name")
        caption += prefix
        start = len(caption)
        caption += name
        phrases.append(name)
        spans.append(((start, len(caption)),))
        caption += suffix
        if i < len(entries) - 1:
            caption += SEPARATOR
    if not phrases:
        raise DataError(f"{where}: the prompt has no entry")
    return Prompt(caption, tuple(phrases), tuple(spans))


def category_prompt(
    categories: Sequence[dict], entries: Sequence | None = None, where: str = "prompt"
) -> Prompt:
    """The detection prompt of COCO categories (sorted by id): their cleaned names, or ``entries`` (one per
    category, see :func:`prompt_from_entries`)."""
    if entries is None:
        return build_prompt(category_names(categories))
    if len(entries) != len(categories):
        raise DataError(f"{where}: {len(entries)} prompt entries for {len(categories)} categories")
    return prompt_from_entries(entries, where)


def detect_coco(
    detector, gt: dict, images: Sequence, prompt: Prompt, *, batch_size: int = 8, desc: str = "detect"
) -> list[dict]:
    """COCO results of ``detector`` on ``gt``'s images (``images`` in the same order) with one prompt whose
    phrase ``i`` is the ``i``-th category by id."""

    ids = [c["id"] for c in sorted(gt["categories"], key=lambda c: c["id"])]
    results = []
    for info, dets in zip(
        gt["images"], detect_all(detector, images, prompt, batch_size=batch_size, desc=desc)
    ):
        results.extend(dets.to_coco(info["id"], category_ids=ids))
    return results


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and (population) standard deviation; NaN for no values."""
    arr = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if arr.size == 0:
        return float("nan"), float("nan")
    return float(arr.mean()), float(arr.std())


def fmt(value: float, std: float | None = None, scale: float = 100.0) -> str:
    """``"45.1"`` or ``"45.1 ± 0.3"`` (values in [0, 1] shown in percent, as the papers do); ``n/a`` for NaN."""
    if value is None or math.isnan(value):
        return "n/a"
    text = f"{value * scale:.1f}"
    if std is not None and not math.isnan(std):
        text += f" ± {std * scale:.1f}"
    return text


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]], title: str | None = None) -> str:
    """A Markdown table (with an optional bold title line)."""
    lines = [f"**{title}**", ""] if title else []
    lines.append("| " + " | ".join(headers) + " |")
    lines.append("| " + " | ".join("---" for _ in headers) + " |")
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_report(out_dir: str | Path, name: str, payload: dict, markdown: str) -> dict[str, Path]:
    """Write ``name.json`` and ``name.md`` into ``out_dir`` (atomically); returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{name}.json", "markdown": out / f"{name}.md"}
    write_text_atomic(paths["json"], json.dumps(payload, indent=1, default=_jsonable))
    write_text_atomic(paths["markdown"], markdown + "\n")
    return paths


def _jsonable(obj):
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
