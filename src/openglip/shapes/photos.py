"""A tiny hand-labelled check set of real photos that ship inside installed PyPI packages.

The labels live in ``real_photos.json``, package data next to this module; the pixels come from
scikit-image, scikit-learn and matplotlib, so the set works offline without downloading anything.
Boxes are ``[x1, y1, x2, y2]`` in pixels of the image exactly as its loader returns it.
"""

from __future__ import annotations

import importlib
import json
import os
import re
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..data.coco import coco_ground_truth

CHECK_SET = "real_photos.json"  # package data of openglip.shapes

# import name -> the name to ``pip install``
_PACKAGES = {"skimage": "scikit-image", "sklearn": "scikit-learn", "matplotlib": "matplotlib"}
_LOADER = re.compile(r"^(?P<func>[A-Za-z_][\w.]*)(?::(?P<arg>[^\[\]]+))?(?:\[(?P<index>\d+)\])?$")


def load_check_set(path: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """The entries of the check set (default: the ``real_photos.json`` shipped with the package)."""
    if path is None:
        path = CHECK_SET
        text = resources.files(__package__).joinpath(CHECK_SET).read_text(encoding="utf-8")
    else:
        text = Path(path).read_text(encoding="utf-8")
    doc = json.loads(text)
    if doc.get("version") != 1:
        raise ValueError(f"{path}: unsupported check-set version {doc.get('version')!r}")
    return list(doc["images"])


def prompt_for(entry: dict[str, Any]) -> list[str]:
    """The phrases to ask for in this image: the labelled ones plus the absent distractors."""
    phrases = list(entry.get("prompt") or [])
    for obj in entry["objects"]:  # an object's phrase is always asked for
        if obj["phrase"] not in phrases:
            phrases.append(obj["phrase"])
    return phrases


def _call_loader(loader: str) -> Any:
    m = _LOADER.match(loader)
    if m is None:
        raise ValueError(f"unparsable loader {loader!r}")
    module_name, _, func_name = m["func"].rpartition(".")
    package = _PACKAGES.get(module_name.split(".")[0], module_name.split(".")[0])
    try:
        func = getattr(importlib.import_module(module_name), func_name)
        args = (m["arg"],) if m["arg"] else ()
        if m["func"] == "matplotlib.cbook.get_sample_data":
            value = Image.open(func(*args, asfileobj=False))
        else:
            value = func(*args)
    except (ImportError, AttributeError, FileNotFoundError, OSError) as err:
        raise RuntimeError(
            f"check-set photo {loader!r} is not available offline: install the {package!r} package "
            f"(pip install {package}) with its bundled sample data ({type(err).__name__}: {err})"
        ) from err
    if m["index"] is not None:
        value = value[int(m["index"])]
    return value


def load_photo(entry: dict[str, Any]) -> np.ndarray:
    """The entry's image as an ``(H, W, 3)`` uint8 RGB array (grayscale and binary images are expanded).

    Raises:
        RuntimeError: the package that ships the photo (named in the message) is missing.
    """
    value = _call_loader(entry["loader"])
    if isinstance(value, Image.Image):
        value = np.asarray(value.convert("RGB"))
    arr = np.asarray(value)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating) and arr.max() <= 1.0:
            arr = arr * 255.0
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    elif arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[:, :, :3]
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"{entry['loader']}: unexpected image shape {arr.shape}")
    return np.ascontiguousarray(arr)


def categories(entries: list[dict[str, Any]]) -> list[str]:
    """Sorted union of every phrase the set uses (labelled objects and distractors)."""
    names = {o["phrase"] for e in entries for o in e["objects"]}
    names.update(p for e in entries for p in prompt_for(e))
    return sorted(names)


def to_coco(entries: list[dict[str, Any]], difficult_as_crowd: bool = False) -> dict[str, Any]:
    """A COCO ground-truth dict (xywh boxes) for the entries.

    Categories are the sorted union of all phrases (distractors included, so detections for them can be
    mapped to an id), numbered from 1; image ids are the entry ids. Every annotation has ``iscrowd`` 0,
    unless ``difficult_as_crowd`` is set: then objects marked ``"difficult"`` get ``iscrowd`` 1 and
    pycocotools ignores detections that match them instead of counting a miss.
    """
    cat_ids = {name: i for i, name in enumerate(categories(entries), start=1)}
    images = [
        {"id": int(e["id"]), "file_name": e["file_hint"], "height": int(e["height"]), "width": int(e["width"]),
         "boxes": [o["bbox"] for o in e["objects"]], "category_ids": [cat_ids[o["phrase"]] for o in e["objects"]],
         "extras": [{"iscrowd": int(bool(difficult_as_crowd and o.get("difficult")))} for o in e["objects"]]}
        for e in entries
    ]  # fmt: skip
    info = {"description": "OpenGLIP real-photo check set (photos bundled with PyPI packages)"}
    cats = [{"id": i, "name": name} for name, i in cat_ids.items()]
    return coco_ground_truth(images, cats, info=info)
