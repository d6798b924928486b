"""The shapes world written in the layouts of the papers' benchmarks, so every protocol runs offline:

* :func:`write_odinw`: several Roboflow-style datasets (``<name>/{train,valid,test}/_annotations.coco.json``
  with Roboflow's extra category 0), each with its own category subset and background tint;
* :func:`write_lvis`: an LVIS-style federated file (``coco_url`` image names, ``neg_category_ids``,
  ``not_exhaustive_category_ids``, category ``frequency``: the 8 novel combinations are "rare");
* :func:`write_flickr`: MDETR's ``final_flickr_separateGT_test.json`` from the listing captions;
* :func:`write_refcoco`: MDETR's ``final_refcoco_val.json`` from the referring captions;
* :func:`write_ovcoco`: a COCO file without split fields plus a base/novel split file;
* :func:`write_dataset` (``openglip data shapes``): PNG images, a COCO json and ODVG detection / grounding files
  (:func:`to_coco`, :func:`to_odvg`).

Only the shapes world's public API is used (the renderers, the samples, the category lists).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..data.coco import coco_ground_truth
from ..data.odvg import write_label_map
from ..errors import UsageError
from ..files import write_text_atomic
from ..structures import mask_to_rle
from .render import ShapesWorld
from .renderers import get_renderer
from .world import BASE, CATEGORIES, NOVEL, ShapesSample


def _coco_image(sample: ShapesSample, image_id: int, file_name: str) -> dict[str, Any]:
    """A sample as :func:`~openglip.data.coco.coco_ground_truth` takes it: the image entry (with the referring
    caption), its boxes, category ids (label + 1) and masks (RLE, area = mask pixels)."""
    h, w = sample.image.shape[:2]
    return {"id": image_id, "file_name": file_name, "height": h, "width": w,
            "caption": sample.captions[0].caption if sample.captions else "",
            "boxes": sample.boxes.tolist(), "category_ids": [int(label) + 1 for label in sample.labels.tolist()],
            "extras": [{"area": int(m.sum()), "segmentation": mask_to_rle(m)} for m in sample.masks]}  # fmt: skip


def _coco_categories() -> list[dict[str, Any]]:
    split = ["novel" if n in NOVEL else "base" for n in CATEGORIES]
    return [
        {"id": i + 1, "name": n, "supercategory": n.split()[1], "split": split[i]}
        for i, n in enumerate(CATEGORIES)
    ]


def to_coco(samples: list[ShapesSample], file_names: list[str]) -> dict[str, Any]:
    """COCO detection dictionary (boxes, RLE masks, the 48 categories with ``"split"``).

    Args:
        samples: the samples.
        file_names: one image file name per sample.

    Returns:
        ``{"images", "annotations", "categories"}``; image ids start at 1 and carry the referring caption,
        ``category_id`` is the label + 1.
    """
    if len(samples) != len(file_names):
        raise ValueError("need one file name per sample")
    images = [_coco_image(sample, k + 1, name) for k, (sample, name) in enumerate(zip(samples, file_names))]
    return coco_ground_truth(images, _coco_categories())


def _odvg_records(sample: ShapesSample, file_name: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    h, w = sample.image.shape[:2]
    head = {"filename": file_name, "height": h, "width": w}
    boxes = sample.boxes.tolist()
    instances = [
        {"bbox": box, "label": int(label), "category": CATEGORIES[int(label)]}
        for box, label in zip(boxes, sample.labels.tolist())
    ]
    detection = {**head, "detection": {"instances": instances}}
    grounding = []
    for cap in sample.captions:
        regions = [
            {
                "bbox": boxes[r["box_index"]],
                "phrase": r["phrase"],
                "tokens_positive": [list(t) for t in r["tokens_positive"]],
            }
            for r in cap.regions
        ]
        grounding.append({**head, "grounding": {"caption": cap.caption, "regions": regions}})
    return detection, grounding


def to_odvg(
    samples: list[ShapesSample], file_names: list[str]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """ODVG records: one detection record per image and one grounding record per caption.

    Args:
        samples: the samples.
        file_names: one image file name per sample.

    Returns:
        ``(detection_records, grounding_records)``; boxes are ``[x1, y1, x2, y2]``, ``label`` is the category index.
    """
    if len(samples) != len(file_names):
        raise ValueError("need one file name per sample")
    detection, grounding = [], []
    for sample, name in zip(samples, file_names):
        det, grd = _odvg_records(sample, name)
        detection.append(det)
        grounding.extend(grd)
    return detection, grounding


def write_dataset(
    out_dir: str | os.PathLike,
    *,
    num_images: int,
    split: str = "train",
    image_size: int | tuple[int, int] = 128,
    seed: int = 0,
    min_objects: int = 1,
    max_objects: int = 5,
    renderer: str = "shapes",
) -> dict[str, Path]:
    """Render a dataset to disk: PNG images, a COCO json and ODVG detection / grounding jsonl files.

    Args:
        out_dir: output folder (created if missing).
        num_images: number of images (samples ``0 .. num_images - 1``).
        split: see :class:`ShapesWorld`.
        image_size: side length, or ``(height, width)``.
        seed: random seed.
        min_objects: fewest objects per image.
        max_objects: most objects per image.
        renderer: a key of :data:`~openglip.shapes.renderers.RENDERERS`: ``"shapes"`` (:class:`ShapesWorld`) or
            ``"alt"`` (the second renderer, :class:`~openglip.shapes.render_alt.AltShapesWorld`, whose canvases
            vary in size).

    Returns:
        Paths under keys ``"images"`` (folder), ``"coco"``, ``"detection"``, ``"label_map"`` (the detection
        file's 48 categories, also those no image shows) and ``"grounding"``; file names in the records are
        relative to ``out_dir`` (``"images/000000.png"``).
    """

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} is a file; give a directory for the dataset")
    (out / "images").mkdir(parents=True, exist_ok=True)
    world = get_renderer(renderer)(
        split=split, image_size=image_size, min_objects=min_objects, max_objects=max_objects, seed=seed
    )
    images, det_lines, grd_lines = [], [], []
    for index in tqdm(range(num_images), desc=f"{renderer}/{split}", disable=num_images <= 200):
        sample = world.sample(index)
        name = f"images/{index:06d}.png"
        Image.fromarray(sample.image).save(out / name, compress_level=1)
        images.append(_coco_image(sample, index + 1, name))
        det, grd = _odvg_records(sample, name)
        det_lines.append(json.dumps(det))
        grd_lines.extend(json.dumps(g) for g in grd)
    names = {
        "coco": "annotations.coco.json",
        "detection": "detection.odvg.jsonl",
        "grounding": "grounding.odvg.jsonl",
    }
    paths = {"images": out / "images", **{k: out / v for k, v in names.items()}}
    paths["label_map"] = write_label_map(paths["detection"], CATEGORIES)
    info = {"description": "OpenGLIP shapes world", "split": split, "seed": seed, "renderer": renderer}
    write_text_atomic(paths["coco"], json.dumps(coco_ground_truth(images, _coco_categories(), info=info)))
    write_text_atomic(paths["detection"], "".join(line + "\n" for line in det_lines))
    write_text_atomic(paths["grounding"], "".join(line + "\n" for line in grd_lines))
    return paths


# name -> (categories, background tint): different vocabularies and looks, as ODinW's datasets differ
ODINW_DATASETS: dict[str, tuple[tuple[str, ...], tuple[float, float, float]]] = {
    "Circles": (("red circle", "green circle", "blue circle", "yellow circle"), (1.0, 1.0, 1.0)),
    "WarmShapes": (("red square", "orange star", "yellow triangle"), (1.08, 1.0, 0.9)),
    "Monochrome": (("white cross", "black hexagon", "white square", "black circle"), (0.9, 0.95, 1.08)),
    "Stars": (("red star", "blue star", "purple star", "white star", "yellow star"), (0.95, 1.06, 0.95)),
    "NovelPairs": (NOVEL, (1.05, 0.95, 1.05)),
}
ODINW_SPLIT_SIZES = {"train": 40, "valid": 8, "test": 24}


def _tinted(sample: ShapesSample, tint: tuple[float, float, float]) -> np.ndarray:
    """The image with its background pixels (no object mask) multiplied by ``tint``."""
    image = sample.image.astype(np.float32)
    background = ~sample.masks.any(axis=0) if len(sample.masks) else np.ones(image.shape[:2], bool)
    image[background] *= np.asarray(tint, dtype=np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def _keep(sample: ShapesSample, keep: list[int]) -> ShapesSample:
    return ShapesSample(sample.image, sample.boxes[keep], sample.labels[keep], sample.masks[keep],
                        [sample.sizes[k] for k in keep], sample.captions)  # fmt: skip


def _roboflow_coco(
    samples: list[ShapesSample], names: list[str], categories: tuple[str, ...], super_name: str
) -> dict:
    """COCO dict in Roboflow's export: category 0 is the supercategory itself, real categories from 1."""
    coco = to_coco(samples, names)
    index = {CATEGORIES.index(n) + 1: i + 1 for i, n in enumerate(categories)}  # shapes id -> dataset id
    for a in coco["annotations"]:
        a["category_id"] = index[a["category_id"]]
        a.pop("segmentation", None)
    for im in coco["images"]:
        im.pop("caption", None)
    coco["categories"] = [{"id": 0, "name": super_name, "supercategory": "none"}] + [
        {"id": i + 1, "name": n, "supercategory": super_name} for i, n in enumerate(categories)
    ]
    return coco


def write_odinw(out_dir: str | Path, *, image_size: int = 128, seed: int = 0, sizes: dict[str, int] | None = None,
                datasets: dict | None = None) -> list[Path]:  # fmt: skip
    """Write ODinW-layout datasets of the shapes world.

    Args:
        out_dir: the ODinW root to create.
        image_size: rendered image side.
        seed: world seed (each dataset and split draws its own images).
        sizes: images per split (default :data:`ODINW_SPLIT_SIZES`).
        datasets: name -> (categories, background tint) (default :data:`ODINW_DATASETS`).

    Returns:
        The dataset folders.
    """
    out = Path(out_dir)
    sizes = sizes or ODINW_SPLIT_SIZES
    folders = []
    for d, (name, (cats, tint)) in enumerate((datasets or ODINW_DATASETS).items()):
        wanted = {CATEGORIES.index(c) for c in cats}
        for s, (split, count) in enumerate(sizes.items()):
            world = ShapesWorld(split="all", image_size=image_size, seed=seed + 1000 * d + 100 * s + 7)
            folder = out / name / split
            folder.mkdir(parents=True, exist_ok=True)
            samples, names, i = [], [], 0
            with tqdm(total=count, desc=f"odinw/{name}/{split}", disable=count < 50) as bar:
                while len(samples) < count:
                    sample = world.sample(i)
                    i += 1
                    keep = [k for k, lab in enumerate(sample.labels) if int(lab) in wanted]
                    if not keep:
                        continue
                    file_name = f"{len(samples):05d}_png.rf.{d}{s}.png"
                    Image.fromarray(_tinted(sample, tint)).save(folder / file_name, compress_level=1)
                    samples.append(_keep(sample, keep))
                    names.append(file_name)
                    bar.update(1)
            coco = _roboflow_coco(samples, names, tuple(cats), name.lower())
            write_text_atomic(folder / "_annotations.coco.json", json.dumps(coco))
        folders.append(out / name)
    return folders


def _frequency(name: str) -> str:
    if name in NOVEL:
        return "r"
    return "c" if BASE.index(name) % 2 else "f"


def write_lvis(out_dir: str | Path, *, num_images: int = 40, image_size: int = 128, seed: int = 0) -> Path:
    """Write ``lvis_v1_val.json`` and its images (``val2017/<id>.png``, named through ``coco_url`` as LVIS v1 does).

    Federated labels: every image lists as negatives 12 categories it does not contain, and (on every third
    image with two boxes of one category) marks that category not exhaustive and drops one of its boxes.
    Frequencies: the 8 novel combinations are rare, the base ones alternate common / frequent.
    """
    out = Path(out_dir)
    (out / "val2017").mkdir(parents=True, exist_ok=True)
    world = ShapesWorld(split="val", image_size=image_size, seed=seed + 11)
    rng = np.random.default_rng(seed)
    images, anns = [], []
    for i in tqdm(range(num_images), desc="lvis", disable=num_images < 100):
        sample = world.sample(i)
        image_id = i + 1
        Image.fromarray(sample.image).save(out / "val2017" / f"{image_id:012d}.png", compress_level=1)
        present = sorted({int(x) + 1 for x in sample.labels})
        absent = [c for c in range(1, len(CATEGORIES) + 1) if c not in present]
        neg = sorted(int(c) for c in rng.choice(absent, size=min(12, len(absent)), replace=False))
        not_exhaustive = []
        labels = sample.labels.tolist()
        drop = set()
        repeated = [lab for lab in set(labels) if labels.count(lab) > 1]
        if repeated and i % 3 == 0:
            lab = repeated[0]
            not_exhaustive.append(lab + 1)
            drop.add(labels.index(lab))
        for k, (box, lab) in enumerate(zip(sample.boxes.tolist(), labels)):
            if k in drop:
                continue
            x1, y1, x2, y2 = box
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": lab + 1,
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1)})  # fmt: skip
        images.append({"id": image_id, "height": sample.image.shape[0], "width": sample.image.shape[1],
                       "coco_url": f"http://images.cocodataset.org/val2017/{image_id:012d}.png",
                       "neg_category_ids": neg, "not_exhaustive_category_ids": not_exhaustive})  # fmt: skip
    cats = [{"id": i + 1, "name": n.replace(" ", "_"), "synonyms": [n], "frequency": _frequency(n)}
            for i, n in enumerate(CATEGORIES)]  # fmt: skip
    path = out / "lvis_v1_val.json"
    write_text_atomic(path, json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


def _save_images(out: Path, world: ShapesWorld, num_images: int, desc: str) -> list[tuple[ShapesSample, str]]:
    (out / "images").mkdir(parents=True, exist_ok=True)
    pairs = []
    for i in tqdm(range(num_images), desc=desc, disable=num_images < 100):
        sample = world.sample(i)
        name = f"images/{i:06d}.png"
        Image.fromarray(sample.image).save(out / name, compress_level=1)
        pairs.append((sample, name))
    return pairs


def _xywh(box) -> list[float]:
    x1, y1, x2, y2 = (float(v) for v in box)
    return [x1, y1, x2 - x1, y2 - y1]


def write_flickr(out_dir: str | Path, *, num_images: int = 40, image_size: int = 128, seed: int = 0) -> Path:
    """Write ``final_flickr_separateGT_test.json`` (MDETR's fields) from the listing captions, one entry per image."""
    out = Path(out_dir)
    pairs = _save_images(
        out, ShapesWorld(split="val", image_size=image_size, seed=seed + 21), num_images, "flickr"
    )
    images, anns = [], []
    for image_id, (sample, name) in enumerate(pairs):
        cap = sample.captions[1]  # the listing caption: every object is a phrase
        h, w = sample.image.shape[:2]
        images.append({"file_name": name, "height": h, "width": w, "id": image_id, "caption": cap.caption,
                       "dataset_name": "flickr", "tokens_negative": [[0, len(cap.caption)]], "sentence_id": 0,
                       "original_img_id": image_id,
                       "tokens_positive_eval": [r["tokens_positive"] for r in cap.regions]})  # fmt: skip
        for r in cap.regions:
            box = _xywh(sample.boxes[r["box_index"]])
            anns.append({"area": box[2] * box[3], "iscrowd": 0, "image_id": image_id, "category_id": 1,
                         "id": len(anns), "bbox": box, "tokens_positive": r["tokens_positive"]})  # fmt: skip
    path = out / "final_flickr_separateGT_test.json"
    categories = [{"supercategory": "object", "id": 1, "name": "object"}]
    write_text_atomic(path, json.dumps({"info": [], "licenses": [], "images": images, "annotations": anns,
                                        "categories": categories}))  # fmt: skip
    return path


def write_refcoco(out_dir: str | Path, *, num_images: int = 40, image_size: int = 128, seed: int = 0) -> Path:
    """Write ``final_refcoco_val.json`` (MDETR's fields) from the referring captions: the referent is the
    caption's first phrase ("the small green triangle" in "the small green triangle left of the red circle")."""
    out = Path(out_dir)
    pairs = _save_images(
        out, ShapesWorld(split="val", image_size=image_size, seed=seed + 31), num_images, "refcoco"
    )
    images, anns = [], []
    for image_id, (sample, name) in enumerate(pairs):
        cap = sample.captions[0]
        referent = cap.regions[0]
        h, w = sample.image.shape[:2]
        images.append({"file_name": name, "height": h, "width": w, "id": image_id, "original_id": image_id,
                       "caption": cap.caption, "dataset_name": "refcoco",
                       "tokens_negative": [r["tokens_positive"][0] for r in cap.regions[1:]]})  # fmt: skip
        box = _xywh(sample.boxes[referent["box_index"]])
        anns.append({"area": box[2] * box[3], "iscrowd": 0, "image_id": image_id,
                     "category_id": int(sample.labels[referent["box_index"]]) + 1, "id": image_id, "bbox": box,
                     "original_id": image_id, "tokens_positive": referent["tokens_positive"]})  # fmt: skip
    path = out / "final_refcoco_val.json"
    cats = [{"id": i + 1, "name": n} for i, n in enumerate(CATEGORIES)]
    write_text_atomic(path, json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


def write_ovcoco(
    out_dir: str | Path, *, num_images: int = 40, image_size: int = 128, seed: int = 0
) -> dict[str, Path]:
    """Write ``annotations.coco.json`` (categories without ``split``) and ``split.json`` (base / novel names)."""
    out = Path(out_dir)
    pairs = _save_images(
        out, ShapesWorld(split="val", image_size=image_size, seed=seed + 41), num_images, "ovcoco"
    )
    coco = to_coco([s for s, _ in pairs], [n for _, n in pairs])
    for c in coco["categories"]:
        c.pop("split", None)
    for a in coco["annotations"]:
        a.pop("segmentation", None)
    paths = {"coco": out / "annotations.coco.json", "split": out / "split.json"}
    write_text_atomic(paths["coco"], json.dumps(coco))
    write_text_atomic(paths["split"], json.dumps({"base": list(BASE), "novel": list(NOVEL)}, indent=1))
    return paths


WRITERS = {"odinw": write_odinw, "lvis": write_lvis, "flickr": write_flickr, "refcoco": write_refcoco,
           "ovcoco": write_ovcoco}  # fmt: skip
