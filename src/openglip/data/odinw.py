"""ODinW (Object Detection in the Wild): a folder of datasets in Roboflow's COCO export layout.

Each dataset is a folder holding ``train/``, ``valid/`` and ``test/`` sub-folders, each with an
``_annotations.coco.json`` and its images (``ROOT/<name>/{train,valid,test}/_annotations.coco.json``; the
official download nests some datasets one level deeper, e.g. ``Aquarium/Aquarium Combined.v2-raw-1024.coco/``,
and such folders are found too, named by their path under ROOT).

Roboflow writes one extra category, id 0, named after the dataset's supercategory (``{"id": 0, "name":
"fish", "supercategory": "none"}``), that no box uses; GLIP drops it (its ``annotations_without_background``
files and ``OVERRIDE_CATEGORY`` lists start at id 1), and so does :func:`read_odinw_split`.

Few-shot training sets are drawn as GLIP draws them (:func:`glip_few_shot`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError
from .coco import load_json

ANNOTATION_FILE = "_annotations.coco.json"
SPLITS = ("train", "valid", "test")
# the 13 datasets GLIP reports (configs/odinw_13), by their folder under the official download's root
ODINW13: tuple[str, ...] = (
    "AerialMaritimeDrone/large",
    "Aquarium/Aquarium Combined.v2-raw-1024.coco",
    "CottontailRabbits",
    "EgoHands/generic",
    "NorthAmericaMushrooms/North American Mushrooms.v1-416x416.coco",
    "Packages/Raw",
    "PascalVOC",
    "Raccoon/Raccoon.v2-raw.coco",
    "ShellfishOpenImages/raw",
    "VehiclesOpenImages/416x416",
    "pistols/export",
    "pothole",
    "thermalDogsAndPeople",
)
# GLIP's ODinW configs use 3, 30 and 300 as the shuffle seeds of the 1/3/5/10-shot training sets
GLIP_SEEDS = (3, 30, 300)


@dataclass
class OdinwDataset:
    """One ODinW dataset: its name (path under the root) and the annotation file of each split it has."""

    name: str
    folder: Path
    splits: dict[str, Path] = field(default_factory=dict)

    def split_file(self, split: str) -> Path:
        """The annotation file of ``split``; ``test`` falls back to ``valid`` (GLIP evaluates PascalVOC, which
        has no test split, on valid).

        Raises:
            DataError: the dataset has neither.
        """
        return self.splits[self.split_used(split)]

    def split_used(self, split: str) -> str:
        """The split :meth:`split_file` reads for ``split``: itself, or ``valid`` for a missing ``test``.

        Raises:
            DataError: the dataset has neither.
        """
        if split in self.splits:
            return split
        if split == "test" and "valid" in self.splits:
            return "valid"
        raise DataError(f"ODinW dataset {self.name!r} ({self.folder}) has no {split!r} split")


def find_odinw_datasets(root: str | Path, names: Sequence[str] | None = None) -> list[OdinwDataset]:
    """The datasets under an ODinW root, sorted by name.

    Args:
        root: the folder holding the datasets.
        names: keep only these datasets (by name, or by the last part of the name); ``"odinw13"`` stands for
            GLIP's 13 (:data:`ODINW13`).

    Raises:
        DataError: the root does not exist, holds no dataset, or a requested name is not found.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"ODinW root not found: {root} (expected <name>/{{train,valid,test}}/{ANNOTATION_FILE})"
        )
    found: dict[Path, OdinwDataset] = {}
    for ann in sorted(root.rglob(ANNOTATION_FILE)):
        split_dir = ann.parent
        if split_dir.name not in SPLITS:
            continue
        folder = split_dir.parent
        name = folder.relative_to(root).as_posix()
        found.setdefault(folder, OdinwDataset(name if name != "." else root.name, folder)).splits[
            split_dir.name
        ] = ann
    datasets = sorted(found.values(), key=lambda d: d.name)
    if not datasets:
        raise DataError(
            f"{root}: no ODinW dataset found (expected <name>/{{train,valid,test}}/{ANNOTATION_FILE})"
        )
    if names:
        names = [n for name in names for n in (ODINW13 if name.lower() == "odinw13" else (name,))]
        wanted = []
        for n in names:
            hits = [d for d in datasets if n in (d.name, d.name.rsplit("/", 1)[-1])]
            if not hits:
                raise DataError(
                    f"{root}: no ODinW dataset named {n!r}; found {', '.join(d.name for d in datasets)}"
                )
            wanted.extend(h for h in hits if h not in wanted)
        datasets = wanted
    return datasets


def drop_background_category(coco: dict) -> dict:
    """``coco`` without Roboflow's unused category 0 (the dataset's supercategory name), if it is there.

    Category 0 is dropped when no annotation uses it; a dataset whose boxes do use id 0 keeps it.
    """
    used = {a.get("category_id") for a in coco.get("annotations", [])}
    cats = [c for c in coco["categories"] if not (c.get("id") == 0 and 0 not in used)]
    return {**coco, "categories": cats}


def read_odinw_split(dataset: OdinwDataset, split: str) -> tuple[dict, Path]:
    """The COCO dict of one split without the background category, and the folder its images are in.

    Raises:
        DataError: the file is not a COCO detection file.
    """
    path = dataset.split_file(split)
    try:
        coco = load_json(path)
    except (FileNotFoundError, ValueError) as err:
        raise DataError(str(err)) from None
    if not isinstance(coco, dict) or not all(isinstance(coco.get(k), list) for k in ("images", "categories")):
        raise DataError(f"{path}: not a COCO detection file (expected 'images' and 'categories' lists)")
    coco.setdefault("annotations", [])
    coco = drop_background_category(coco)
    if not coco["categories"]:
        raise DataError(f"{path}: no categories besides Roboflow's background entry")
    return coco, path.parent


def _has_valid_box(anns: list[dict]) -> bool:
    """maskrcnn-benchmark's ``has_valid_annotation``: some box wider and taller than 1 px."""
    return any(len(a.get("bbox", [])) == 4 and a["bbox"][2] > 1 and a["bbox"][3] > 1 for a in anns)


def glip_few_shot(coco: dict, shots: int, seed: int) -> list:
    """Image ids of a k-shot training set, drawn as GLIP draws it (``COCODataset(few_shot=k, shuffle_seed=s)``).

    Images without a valid box are dropped, the ids sorted and shuffled with Python's ``random.Random(seed)``;
    then, in that order, an image is taken if any of its categories still has fewer than ``shots`` images,
    and every category it holds counts it. Every category thus gets at least ``shots`` images (when the split
    has them), and frequent ones may get more.

    Args:
        coco: the split's COCO dict (background category already dropped).
        shots: images per category (k).
        seed: GLIP's shuffle seed (3, 30, 300 in its configs); 0 keeps the sorted order, as in GLIP.

    Returns:
        The chosen image ids, in the order they were taken.
    """
    if shots < 1:
        raise ValueError("shots must be at least 1")
    by_image: dict = {img["id"]: [] for img in coco["images"]}
    for a in coco.get("annotations", []):
        if not a.get("iscrowd", 0) and a.get("image_id") in by_image:
            by_image[a["image_id"]].append(a)
    ids = sorted(i for i, anns in by_image.items() if _has_valid_box(anns))
    if seed:
        random.Random(seed).shuffle(ids)
    need = {c["id"]: shots for c in coco["categories"]}
    chosen = []
    for image_id in ids:
        cats = {a["category_id"] for a in by_image[image_id]} & set(need)
        if any(need[c] > 0 for c in cats):
            chosen.append(image_id)
            for c in cats:
                need[c] -= 1
    return chosen


def subset_coco(coco: dict, image_ids: Sequence) -> dict:
    """The images ``image_ids`` of ``coco`` (in that order) with their annotations."""
    keep = set(image_ids)
    order = {i: k for k, i in enumerate(image_ids)}
    images = sorted((im for im in coco["images"] if im["id"] in keep), key=lambda im: order[im["id"]])
    anns = [a for a in coco.get("annotations", []) if a.get("image_id") in keep]
    return {**coco, "images": images, "annotations": anns}
