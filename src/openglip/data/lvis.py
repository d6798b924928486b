"""LVIS annotation files (v0.5 / v1, and GLIP's MiniVal): a COCO-like JSON with federated labels.

What makes LVIS different from COCO, and what :func:`read_lvis` checks:

* every image lists ``neg_category_ids`` (categories verified absent) and ``not_exhaustive_category_ids``
  (categories present but not all instances boxed); a detection of a category that is neither annotated in
  the image nor in its negative list is not evaluated (federated evaluation);
* every category has a ``frequency``: ``"r"`` (rare, 1-10 training images), ``"c"`` (common, 11-100) or
  ``"f"`` (frequent, >100), which give AP_r / AP_c / AP_f;
* LVIS v1 images have no ``file_name`` but a ``coco_url`` (``.../val2017/000000397133.jpg``); the image is
  looked up as ``<image_root>/val2017/000000397133.jpg`` (GLIP's "inserted image name" files add the
  ``file_name``; either works).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError
from .coco import load_json

FREQUENCIES = ("r", "c", "f")


@dataclass
class LvisData:
    """An LVIS split ready to evaluate: the (validated) annotation dict and each image's path, in order."""

    gt: dict
    image_paths: list[str]

    @property
    def categories(self) -> list[dict]:
        """Categories sorted by id."""
        return sorted(self.gt["categories"], key=lambda c: c["id"])


def lvis_file_name(image: dict) -> str:
    """The image's path relative to the image root: ``file_name``, else the last two parts of ``coco_url``."""
    if isinstance(image.get("file_name"), str) and image["file_name"]:
        return image["file_name"]
    url = image.get("coco_url")
    if isinstance(url, str) and url:
        return "/".join(url.rstrip("/").split("/")[-2:])
    raise DataError(f"LVIS image {image.get('id')!r} has neither 'file_name' nor 'coco_url'")


def validate_lvis(gt: dict, where: str) -> None:
    """Raise :class:`DataError` unless ``gt`` carries LVIS's federated fields and category frequencies."""
    if not isinstance(gt, dict) or not all(
        isinstance(gt.get(k), list) for k in ("images", "annotations", "categories")
    ):
        raise DataError(
            f"{where}: not an LVIS file (expected 'images', 'annotations' and 'categories' lists)"
        )
    for c in gt["categories"]:
        if c.get("frequency") not in FREQUENCIES:
            raise DataError(
                f"{where}: category {c.get('id')!r} ({c.get('name')!r}) has frequency {c.get('frequency')!r}; "
                "LVIS categories need 'frequency' r, c or f (is this a COCO file? use openglip evaluate)"
            )
    cat_ids = {c["id"] for c in gt["categories"]}
    for img in gt["images"]:
        for key in ("neg_category_ids", "not_exhaustive_category_ids"):
            if not isinstance(img.get(key), list):
                raise DataError(
                    f"{where}: image {img.get('id')!r} has no {key!r} list (LVIS's federated labels)"
                )
            unknown = set(img[key]) - cat_ids
            if unknown:
                raise DataError(
                    f"{where}: image {img.get('id')!r} lists unknown category ids {sorted(unknown)[:5]} in {key}"
                )
    image_ids = {img["id"] for img in gt["images"]}
    for a in gt["annotations"]:
        if (
            a.get("image_id") not in image_ids
            or a.get("category_id") not in cat_ids
            or len(a.get("bbox", [])) != 4
        ):
            raise DataError(
                f"{where}: annotation {a.get('id')!r} has an unknown image/category or no 4-number bbox"
            )


def read_lvis(
    path: str | os.PathLike, image_root: str | os.PathLike | None = None, *, check_images: bool = True
) -> LvisData:
    """Read and validate an LVIS annotation file.

    Args:
        path: the LVIS JSON.
        image_root: folder the image names are relative to (default: the JSON's folder).
        check_images: raise if an image file is missing.

    Raises:
        DataError: the file is missing, not JSON, not LVIS, or (with ``check_images``) an image is missing.
    """
    try:
        gt = load_json(path)
    except (FileNotFoundError, ValueError) as err:
        raise DataError(str(err)) from None
    validate_lvis(gt, str(path))
    root = Path(path).parent if image_root is None else Path(image_root)
    paths = [str(root / lvis_file_name(img)) for img in gt["images"]]
    if check_images:
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            raise DataError(
                f"{path}: {len(missing)} of {len(paths)} images not found, e.g. {missing[0]} (set --image-root)"
            )
    for a in gt["annotations"]:
        a.setdefault("iscrowd", 0)
        a.setdefault("area", float(a["bbox"][2]) * float(a["bbox"][3]))
    return LvisData(gt, paths)
