"""Category splits of open-vocabulary benchmarks: which categories are *base* (boxes seen in training) and which
*novel* (evaluated only), and LVIS's frequency groups (``r``/``c``/``f``).

A split comes either with the COCO categories themselves (``"split": "base" | "novel"``, LVIS's ``"frequency"``)
or from a separate split file that names the novel categories (e.g. the OV-COCO 48/17 split). A split file is
JSON (a list of novel names, or ``{"novel": [...]}`` with an optional ``"base"`` list) or plain text (one novel
name a line; ``#`` starts a comment).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from ..errors import DataError

SPLITS = ("base", "novel")
FREQUENCIES = ("r", "c", "f")


def read_category_split(path: str | os.PathLike) -> dict[str, list[str]]:
    """``{"novel": [...], "base": [...]}`` from a split file (``"base"`` empty when the file names only novel ones).

    Raises:
        DataError: the file is missing, malformed, or names no novel category.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"category split file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: not valid JSON ({err})") from None
        if isinstance(data, list):
            data = {"novel": data}
        if not isinstance(data, dict) or not isinstance(data.get("novel"), list):
            raise DataError(
                f'{path}: expected a list of novel category names or {{"novel": [...], "base": [...]}}'
            )
        split = {"novel": data["novel"], "base": data.get("base", [])}
    else:
        names = [line.split("#", 1)[0].strip() for line in text.splitlines()]
        split = {"novel": [n for n in names if n], "base": []}
    for key, names in split.items():
        bad = [n for n in names if not isinstance(n, str) or not n.strip()]
        if bad or not isinstance(names, list):
            raise DataError(f"{path}: the {key!r} entries must be non-empty category names, got {bad[:3]}")
    if not split["novel"]:
        raise DataError(f"{path}: names no novel category")
    return {k: [n.strip() for n in v] for k, v in split.items()}


def apply_category_split(
    categories: Sequence[dict], split: dict[str, list[str]], *, where: str
) -> list[dict]:
    """Copies of ``categories`` whose ``"split"`` is set from ``split`` (novel names -> ``"novel"``, every other
    category -> ``"base"``, or only those listed when the split file lists base names too; unlisted ones then get
    no split and are evaluated in "all" only).

    Raises:
        DataError: the split names a category that ``categories`` does not have (``where`` names the split file).
    """
    known = {c["name"] for c in categories}
    for key in SPLITS:
        unknown = sorted(set(split.get(key, [])) - known)
        if unknown:
            raise DataError(
                f"{where}: {key} categor{'y' if len(unknown) == 1 else 'ies'} {unknown[:5]} not in the "
                f"annotation file's categories; fix the name (categories are e.g. {sorted(known)[:5]})"
            )
    novel, base = set(split["novel"]), set(split.get("base", []))
    both = sorted(novel & base)
    if both:
        raise DataError(f"{where}: {both[:5]} listed as both base and novel")
    out = []
    for c in categories:
        c = dict(c)
        if c["name"] in novel:
            c["split"] = "novel"
        elif not base or c["name"] in base:
            c["split"] = "base"
        else:
            c.pop("split", None)
        out.append(c)
    return out


def check_category_split(categories: Sequence[dict], *, where: str) -> None:
    """A split is usable: every ``"split"`` is base or novel, at least one category is base, every
    ``"frequency"`` is r, c or f.

    Raises:
        DataError: naming the file (``where``) and the first bad category.
    """
    for c in categories:
        if "split" in c and c["split"] not in SPLITS:
            raise DataError(
                f"{where}: category {c['name']!r} has split {c['split']!r}; use 'base' or 'novel'"
            )
        if "frequency" in c and c["frequency"] not in FREQUENCIES:
            raise DataError(
                f"{where}: category {c['name']!r} has frequency {c['frequency']!r}; use 'r', 'c' or 'f'"
            )
    if any("split" in c for c in categories) and not any(c.get("split") == "base" for c in categories):
        raise DataError(
            f"{where}: no base category (every category is novel); mark the categories with training boxes "
            "'split': 'base' or give a split file that names only the novel ones"
        )


def category_splits(categories: Sequence[dict]) -> dict[str, list[int]]:
    """Category ids by split for :func:`openglip.metrics.coco_detection_metrics`: ``base``/``novel`` (from
    ``"split"``) and ``r``/``c``/``f`` (from LVIS's ``"frequency"``), each only when some category has it."""
    out: dict[str, list[int]] = {}
    for c in categories:
        for key in ("split", "frequency"):
            if key in c:
                out.setdefault(c[key], []).append(c["id"])
    return out
