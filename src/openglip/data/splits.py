"""Category splits for open-vocabulary evaluation: which category names are "base" (seen in training) and
which are "novel" (evaluated only).

One reader, :func:`read_category_split`, for every way a split is written down:

* a JSON object ``{"base": [names], "novel": [names]}`` (the packaged OV-COCO split has this form);
* a JSON object ``{name: "base" | "novel"}``;
* a COCO JSON whose categories carry ``"split": "base" | "novel"`` (what ``openglip data shapes`` writes);
* a JSON list or a text file (one name a line) of *novel* names only: every other category is base.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from ..errors import DataError

SPLIT_NAMES = ("base", "novel")
FREQUENCIES = ("r", "c", "f")  # LVIS frequency groups: rare, common, frequent


def _check(mapping: Mapping[str, str], where: str) -> dict[str, str]:
    out = {}
    for name, split in mapping.items():
        if split not in SPLIT_NAMES:
            raise DataError(f"{where}: category {name!r} has split {split!r}; expected 'base' or 'novel'")
        out[str(name)] = split
    if not out:
        raise DataError(f"{where}: the split names no category")
    return out


def parse_category_split(data, where: str = "split") -> dict[str, str]:
    """The ``{name: "base" | "novel"}`` mapping of an already-parsed split (see the module docstring).

    Raises:
        DataError: the object is none of the accepted forms, or a split is neither base nor novel.
    """
    if isinstance(data, dict) and isinstance(data.get("categories"), list):
        tagged = {c["name"]: c["split"] for c in data["categories"] if isinstance(c, dict) and "split" in c}
        if not tagged:
            raise DataError(f"{where}: a COCO file whose categories carry no 'split' field")
        return _check(tagged, where)
    if isinstance(data, dict):  # "_source"-style keys are comments
        data = {k: v for k, v in data.items() if not str(k).startswith("_")}
    if isinstance(data, dict) and set(data) <= set(SPLIT_NAMES) and data:
        mapping = {}
        for split, names in data.items():
            if not isinstance(names, list):
                raise DataError(f"{where}: {split!r} must be a list of category names")
            for name in names:
                if name in mapping:
                    raise DataError(f"{where}: category {name!r} is listed as both base and novel")
                mapping[name] = split
        return _check(mapping, where)
    if isinstance(data, dict):
        return _check(data, where)
    if isinstance(data, list) and all(isinstance(n, str) for n in data):
        return _check(dict.fromkeys(data, "novel"), where)
    raise DataError(
        f"{where}: not a category split; expected {{'base': [...], 'novel': [...]}}, {{name: split}}, "
        "a COCO file with 'split' on its categories, or a list of novel names"
    )


def read_category_split(path: str | os.PathLike) -> dict[str, str]:
    """Read a category split file.

    Args:
        path: a ``.json`` file in one of the forms of the module docstring, or a text file of novel names.

    Returns:
        ``{category name: "base" | "novel"}``. A novel-only list maps only the novel names: use
        :func:`split_of` to read every other name as base.

    Raises:
        DataError: the file is missing, unreadable or not a split.
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
    else:
        data = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return parse_category_split(data, str(path))


def split_of(split: Mapping[str, str], name: str) -> str:
    """The split of category ``name``: as listed, else "base" (a novel-only list names only the novel ones)."""
    return split.get(name, "base")


def split_category_ids(categories: Iterable[dict], split: Mapping[str, str]) -> dict[str, list[int]]:
    """``{"base": [ids], "novel": [ids]}`` of COCO categories (dicts with ``id`` and ``name``) under ``split``."""
    out: dict[str, list[int]] = {"base": [], "novel": []}
    for c in categories:
        out[split_of(split, c["name"])].append(int(c["id"]))
    return out


def apply_category_split(categories: Sequence[dict], split: Mapping[str, str], *, where: str) -> list[dict]:
    """Copies of COCO ``categories`` whose ``"split"`` is set from ``split`` (from :func:`read_category_split`):
    listed names get their split; an unlisted category is base when the split lists only novel names, and gets
    no split (evaluated in "all" only) when it lists base names too.

    Raises:
        DataError: the split names a category that ``categories`` does not have (``where`` names the split file).
    """
    known = {c["name"] for c in categories}
    unknown = sorted(set(split) - known)
    if unknown:
        raise DataError(
            f"{where}: {'/'.join(sorted({split[n] for n in unknown}))} categor{'y' if len(unknown) == 1 else 'ies'} "
            f"{unknown[:5]} not in the annotation file's categories; fix the name (categories are e.g. "
            f"{sorted(known)[:5]})"
        )
    lists_base = "base" in split.values()
    out = []
    for c in categories:
        c = dict(c)
        if c["name"] in split:
            c["split"] = split[c["name"]]
        elif not lists_base:
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
        if "split" in c and c["split"] not in SPLIT_NAMES:
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
