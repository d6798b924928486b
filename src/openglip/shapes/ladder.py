"""The shapes world as a stand-in for GLIP's pre-training corpora, to climb the paper's ablation ladder.

GLIP-T (A) and (B) pre-train on detection data (Objects365), (C) adds gold grounding data (GoldG: Flickr30k,
VG/GQA captions with boxes), and GLIP-T adds image-caption pairs (Cap4M) labelled by teacher (C). What each
step can add is vocabulary: grounding data name concepts the detection vocabulary lacks, and captions name
even more. :func:`write_ladder` builds the same structure from the shapes world (the train split, so the 8
:data:`~openglip.data.shapes.NOVEL` colour-shape combinations are in no image of any corpus):

==================  ===========================  ===========================================================
GLIP corpus         shapes ladder file           what it holds
==================  ===========================  ===========================================================
Objects365          ``detection.coco.json``      boxes of the base categories of the :data:`DETECTION_SHAPES`
                                                 (circle, square, triangle, star); its images hold no other
                                                 shape; trained with class prompts and sampled negatives
GoldG               ``grounding.odvg.jsonl``     referring ("the small red star left of the blue square") and
                                                 listing captions with a box per phrase, over images that may
                                                 also hold hexagons: :data:`GROUNDING_SHAPES` are boxed only here
Cap4M               ``captions.jsonl``           listing captions ("a red cross, a blue circle and ...")
                                                 without boxes, over images of every base category: crosses
                                                 (:data:`CAPTION_SHAPES`) appear in no boxed corpus
held out            (none)                       the 8 novel combinations: red hexagon, green star, blue
                                                 triangle, yellow cross, purple circle, orange square, white
                                                 triangle, black star (evaluated zero-shot on the val split)
==================  ===========================  ===========================================================

So zero-shot novel AP50 on the shapes val split (48-category prompt) can grow at each step: "red hexagon" needs
the grounding data's hexagons, "yellow cross" a model that learned "cross" from captions through a teacher's
pseudo boxes. ``captions.truth.odvg.jsonl`` keeps the true boxes of the caption corpus, never to train on: it
measures the teacher's pseudo labels. ``ladder.json`` is the training recipe (glip_nano as the shapes demo
trains it) that every rung of the ladder uses, with the detection data as its ``data``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.ops import box_iou
from tqdm import tqdm

from ..config import config_to_dict, get_preset
from ..data.coco import coco_ground_truth
from ..files import write_text_atomic
from .recipe import demo_configs
from .render import ShapesWorld
from .world import BASE, CATEGORIES, ShapesSample

DETECTION_SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")  # boxed by the detection data
GROUNDING_SHAPES: tuple[str, ...] = ("hexagon",)  # boxed only by the grounding data
CAPTION_SHAPES: tuple[str, ...] = ("cross",)  # named only by the captions (never boxed)
DETECTION_CATEGORIES: list[str] = [n for n in BASE if n.split()[1] in DETECTION_SHAPES]
GROUNDING_CATEGORIES: list[str] = [n for n in BASE if n.split()[1] in DETECTION_SHAPES + GROUNDING_SHAPES]
CAPTION_CATEGORIES: list[str] = list(BASE)
_SEED_OFFSETS = {"detection": 11, "grounding": 23, "captions": 37}  # one world stream per corpus


def corpus_samples(kind: str, count: int, *, seed: int = 0, image_size: int = 128) -> list[ShapesSample]:
    """The first ``count`` train-split samples whose objects all belong to the corpus ``kind`` ("detection",
    "grounding" or "captions"), from a world stream of its own (so the corpora share no image)."""
    allowed = {
        "detection": DETECTION_CATEGORIES,
        "grounding": GROUNDING_CATEGORIES,
        "captions": CAPTION_CATEGORIES,
    }[kind]
    ids = {CATEGORIES.index(n) for n in allowed}
    world = ShapesWorld(split="train", image_size=image_size, seed=seed * 101 + _SEED_OFFSETS[kind])
    out, index = [], 0
    while len(out) < count:
        sample = world.sample(index)
        index += 1
        if len(sample.labels) and all(int(label) in ids for label in sample.labels):
            out.append(sample)
    return out


def _grounding_record(sample: ShapesSample, name: str, caption) -> dict:
    h, w = sample.image.shape[:2]
    regions = [
        {
            "bbox": [float(v) for v in sample.boxes[r["box_index"]]],
            "phrase": r["phrase"],
            "tokens_positive": [list(t) for t in r["tokens_positive"]],
        }
        for r in caption.regions
    ]
    return {
        "filename": name,
        "height": h,
        "width": w,
        "grounding": {"caption": caption.caption, "regions": regions},
    }


def ladder_recipe(data: str, preset: str = "glip_nano") -> dict:
    """The run config (``{"model", "train", "task"}``, as ``openglip train CONFIG.json`` reads it) of every
    rung: the shapes demo's recipe (:func:`openglip.shapes.recipe.demo_configs`) without its time budget, on
    ``data``."""

    model_cfg, train_cfg, task_cfg = demo_configs(budget=0.0, out="runs/ladder")
    if preset != model_cfg.name:
        model_cfg = dataclasses.replace(
            get_preset(preset), min_size=model_cfg.min_size, max_size=model_cfg.max_size
        )
    train_cfg = dataclasses.replace(train_cfg, data=data, checkpoint_every=0)
    return {
        "model": config_to_dict(model_cfg),
        "train": config_to_dict(train_cfg),
        "task": config_to_dict(task_cfg),
    }


def _detection_coco(samples, names: list[str], seed: int) -> dict:
    """The detection corpus (Objects365 stand-in) as COCO: its categories only, numbered 1..n."""
    cat_id = {n: i + 1 for i, n in enumerate(DETECTION_CATEGORIES)}
    images = [
        {"id": k + 1, "file_name": name, "height": s.image.shape[0], "width": s.image.shape[1],
         "boxes": s.boxes.tolist(), "category_ids": [cat_id[CATEGORIES[label]] for label in s.labels.tolist()]}
        for k, (s, name) in enumerate(zip(samples, names))
    ]  # fmt: skip
    categories = [{"id": i, "name": n, "supercategory": n.split()[1]} for n, i in cat_id.items()]
    info = {"description": "OpenGLIP shapes ladder: detection corpus (Objects365 stand-in)", "seed": seed}
    return coco_ground_truth(images, categories, info=info)


def write_ladder(
    out_dir: str | os.PathLike,
    *,
    detection_images: int = 3000,
    grounding_images: int = 1500,
    caption_images: int = 2000,
    seed: int = 0,
    image_size: int = 128,
    preset: str = "glip_nano",
) -> dict[str, Path]:
    """Write the three corpora (see the module docstring) and the recipe ``ladder.json``.

    Args:
        out_dir: output folder; images go to ``out_dir/images/`` and file names in the records are relative to
            ``out_dir``.
        detection_images, grounding_images, caption_images: images per corpus (a grounding image gives two
            records: its referring and its listing caption).
        seed: seed of the three world streams.
        image_size: image side in pixels.
        preset: model preset of the recipe.

    Returns:
        Paths under ``"detection"``, ``"grounding"``, ``"captions"``, ``"captions_truth"``, ``"recipe"`` and
        ``"images"``.
    """

    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    counts = {"detection": detection_images, "grounding": grounding_images, "captions": caption_images}
    if min(counts.values()) < 1:
        raise ValueError(f"every corpus needs at least one image, got {counts}")
    corpora = {
        kind: corpus_samples(kind, n, seed=seed, image_size=image_size)
        for kind, n in tqdm(counts.items(), desc="ladder corpora", disable=sum(counts.values()) < 500)
    }
    names: dict[str, list[str]] = {}
    for kind, samples in corpora.items():
        names[kind] = [f"images/{kind}_{i:06d}.png" for i in range(len(samples))]
        for sample, name in zip(samples, names[kind]):
            Image.fromarray(sample.image).save(out / name, compress_level=1)

    paths = {
        "images": out / "images",
        "detection": out / "detection.coco.json",
        "grounding": out / "grounding.odvg.jsonl",
        "captions": out / "captions.jsonl",
        "captions_truth": out / "captions.truth.odvg.jsonl",
        "recipe": out / "ladder.json",
    }
    write_text_atomic(
        paths["detection"], json.dumps(_detection_coco(corpora["detection"], names["detection"], seed))
    )
    lines = [
        json.dumps(_grounding_record(s, name, cap))
        for s, name in zip(corpora["grounding"], names["grounding"])
        for cap in s.captions
    ]
    write_text_atomic(paths["grounding"], "".join(line + "\n" for line in lines))
    listing = [(s, name, s.captions[-1]) for s, name in zip(corpora["captions"], names["captions"])]
    write_text_atomic(
        paths["captions"],
        "".join(json.dumps({"filename": name, "caption": cap.caption}) + "\n" for _, name, cap in listing),
    )
    write_text_atomic(
        paths["captions_truth"],
        "".join(json.dumps(_grounding_record(s, name, cap)) + "\n" for s, name, cap in listing),
    )
    recipe = ladder_recipe(str(paths["detection"]), preset)
    write_text_atomic(paths["recipe"], json.dumps(recipe, indent=1))
    return paths


def concept_counts(path: str | os.PathLike) -> dict[str, int]:
    """How many boxes (COCO) or phrases with a box (ODVG grounding) name each shape word in an annotation file:
    what a corpus teaches."""
    path = Path(path)
    counts: dict[str, int] = {}

    def add(text: str) -> None:
        for shape in DETECTION_SHAPES + GROUNDING_SHAPES + CAPTION_SHAPES:
            if shape in text.split():
                counts[shape] = counts.get(shape, 0) + 1

    if path.suffix == ".json":
        coco = json.loads(path.read_text())
        name = {c["id"]: c["name"] for c in coco["categories"]}
        for a in coco["annotations"]:
            add(name[a["category_id"]])
    else:
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            for r in rec.get("grounding", {}).get("regions", []):
                add(r["phrase"])
    return counts


def pseudo_label_quality(pseudo: str | os.PathLike, truth: str | os.PathLike, iou: float = 0.5) -> dict:
    """Precision and recall of pseudo boxes against the caption corpus' true boxes, overall and for the
    caption-only concept (a pseudo box is right when it has IoU >= ``iou`` with a true box of the same phrase
    text)."""

    def read(path):
        out = {}
        for line in Path(path).read_text().splitlines():
            rec = json.loads(line)
            out[rec["filename"]] = rec["grounding"]["regions"]
        return out

    pred, gt = read(pseudo), read(truth)
    # (right pseudo boxes, pseudo boxes, true boxes found by a right pseudo box, true boxes)
    stats = {k: np.zeros(4, dtype=np.int64) for k in ("all", "caption-only")}
    for name, true_regions in gt.items():
        mine = pred.get(name, [])
        for key, keep in (("all", lambda p: True), ("caption-only", _caption_only)):
            t = [r for r in true_regions if keep(r["phrase"])]
            p = [r for r in mine if keep(r["phrase"])]
            stats[key][1] += len(p)
            stats[key][3] += len(t)
            if not (t and p):
                continue
            same = torch.tensor([[_norm(u["phrase"]) == _norm(r["phrase"]) for u in t] for r in p])  # (P, T)
            overlap = box_iou(torch.tensor([r["bbox"] for r in p]), torch.tensor([u["bbox"] for u in t]))
            right = same & (overlap >= iou)
            stats[key][0] += int(right.any(1).sum())  # a duplicate of a found box is still a right box
            stats[key][2] += int(right.any(0).sum())  # ... but finds that true box only once
    out = {}
    for key, (hits, n_pred, found, n_true) in stats.items():
        out[f"{key}/precision"] = hits / n_pred if n_pred else 0.0
        out[f"{key}/recall"] = found / n_true if n_true else 0.0
        out[f"{key}/boxes"] = int(n_pred)
    return out


def _norm(phrase: str) -> str:
    return " ".join(w for w in phrase.lower().split() if w not in ("a", "an", "the", "small", "large"))


def _caption_only(phrase: str) -> bool:
    return any(shape in phrase.split() for shape in CAPTION_SHAPES)
