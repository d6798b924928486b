"""Tests of the synthetic "shapes" grounding world."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from openglip.shapes import (
    BASE,
    CATEGORIES,
    COLOUR_RGB,
    COLOURS,
    NOVEL,
    RELATIONS,
    SHAPES,
    SIZES,
    ShapesWorld,
    to_coco,
    to_odvg,
    write_dataset,
)
from openglip.shapes.look import camera, dilate

from .shapes_colours import colour_name, core_colour

NOVEL_IDS = {CATEGORIES.index(name) for name in NOVEL}


@pytest.fixture(scope="module")
def val_samples():
    world = ShapesWorld(split="val", seed=3)
    return [world.sample(i) for i in range(120)]


def _centre(box):
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def test_vocabulary():
    assert len(COLOURS) == 8 and len(SHAPES) == 6 and SIZES == ("small", "large")
    assert RELATIONS == ("left of", "right of", "above", "below")
    assert len(CATEGORIES) == 48 and CATEGORIES[0] == "red circle" and CATEGORIES[6 + 2] == "green triangle"
    assert CATEGORIES[-1] == "black cross"
    assert len(NOVEL) == 8 and set(NOVEL) <= set(CATEGORIES)
    assert len(BASE) == 40 and not set(BASE) & set(NOVEL)
    assert set(COLOUR_RGB) == set(COLOURS)


def test_determinism_and_seeds():
    a = ShapesWorld(split="train", seed=7)
    b = ShapesWorld(split="train", seed=7)
    for index in (5, 0, 11):  # call order must not matter
        sa, sb = a.sample(index), b[index]
        assert np.array_equal(sa.image, sb.image)
        assert np.array_equal(sa.boxes, sb.boxes) and np.array_equal(sa.labels, sb.labels)
        assert np.array_equal(sa.masks, sb.masks)
        assert [c.caption for c in sa.captions] == [c.caption for c in sb.captions]
    c = ShapesWorld(split="train", seed=8)
    assert not np.array_equal(a.sample(0).image, c.sample(0).image)
    assert not np.array_equal(a.sample(0).image, a.sample(1).image)
    val = ShapesWorld(split="val", seed=7)
    assert not np.array_equal(a.sample(0).image, val.sample(0).image)


def test_train_has_no_novel_and_val_has_both(val_samples):
    world = ShapesWorld(split="train", seed=1)
    train_labels = np.concatenate([world.sample(i).labels for i in range(300)])
    assert train_labels.size >= 300
    assert not NOVEL_IDS & set(train_labels.tolist())
    assert len(set(train_labels.tolist())) == 40  # every base category shows up

    val_labels = np.concatenate([s.labels for s in val_samples])
    novel_frac = np.isin(val_labels, list(NOVEL_IDS)).mean()
    assert 0.3 <= novel_frac <= 0.6
    assert set(val_labels.tolist()) >= NOVEL_IDS


def test_object_counts_sizes_and_image_size():
    world = ShapesWorld(split="all", image_size=(96, 160), min_objects=2, max_objects=4, seed=2)
    counts = []
    for i in range(40):
        s = world.sample(i)
        assert s.image.shape == (96, 160, 3) and s.image.dtype == np.uint8
        assert s.masks.shape == (len(s.labels), 96, 160)
        assert s.boxes.dtype == np.float32 and s.labels.dtype == np.int64
        assert len(s.sizes) == len(s.labels) and set(s.sizes) <= set(SIZES)
        counts.append(len(s.labels))
    assert min(counts) >= 1 and max(counts) <= 4 and np.mean(counts) >= 2


def test_size_classes_are_distinct(val_samples):
    extent = {"small": [], "large": []}
    for s in val_samples:
        for box, size in zip(s.boxes, s.sizes):
            extent[size].append(max(box[2] - box[0], box[3] - box[1]))
    assert np.median(extent["large"]) > 1.6 * np.median(extent["small"])
    assert np.percentile(extent["small"], 90) < np.percentile(extent["large"], 10)


def test_boxes_tight_masks_disjoint(val_samples):
    for s in val_samples:
        h, w = s.image.shape[:2]
        assert s.masks.any(axis=(1, 2)).all()
        assert (s.masks.sum(axis=0) <= 1).all()  # no pixel shared
        for box, mask in zip(s.boxes, s.masks):
            ys, xs = np.nonzero(mask)
            assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            assert 0 <= box[0] < box[2] <= w and 0 <= box[1] < box[3] <= h


def test_objects_have_their_colour(val_samples):
    for name, rgb in COLOUR_RGB.items():
        assert colour_name(rgb) == name
    checked = 0
    for s in val_samples[:40]:
        for label, mask in zip(s.labels, s.masks):
            colour = core_colour(s.image, mask)  # shaded, blurred, JPEG-compressed, yet its own colour
            assert colour_name(colour) == CATEGORIES[label].split()[0], (colour, CATEGORIES[label])
            checked += 1
    assert checked > 80


def test_the_look_varies(val_samples):
    from scipy import ndimage

    hollow = total = 0
    tints, sats = [], []
    for s in val_samples:
        for mask in s.masks:  # a hollow object's filled outline has much more area than its pixels
            hollow += mask.sum() < 0.75 * ndimage.binary_fill_holes(mask).sum()
            total += 1
        taken = s.masks.any(axis=0)
        for mask in s.masks:
            taken |= ndimage.binary_fill_holes(mask)
        bg = s.image[~dilate(taken, 3)].astype(np.float32)
        tints.append(np.median(bg.max(axis=1) - bg.min(axis=1)))
        sats.append(np.median((bg.max(axis=1) - bg.min(axis=1)) / np.maximum(bg.max(axis=1), 1)))
    assert 0.1 <= hollow / total <= 0.35
    assert min(tints) < 8 and max(tints) > 25  # grey and tinted backgrounds
    assert max(sats) < 0.4  # never a vivid colour: colour words name objects only


def test_camera_blurs_sometimes():
    step = np.full((48, 48, 3), 60.0, dtype=np.float32)
    step[:, 24:] = 200.0
    widths = []
    for seed in range(60):
        profile = camera(np.random.default_rng(seed), step.copy()).astype(np.float32).mean(axis=(0, 2))
        widths.append(int(((profile > 75) & (profile < 185)).sum()))  # columns inside the edge
    blurred = np.mean([w >= 2 for w in widths])
    assert min(widths) == 0 and 0.15 <= blurred <= 0.5


def test_vary_canvas_and_zoom():
    world = ShapesWorld(split="val", image_size=100, seed=6, vary_canvas=True)
    sizes = {world.sample(i).image.shape[:2] for i in range(20)}
    assert len(sizes) > 10 and all(80 <= h <= 125 and 80 <= w <= 125 for h, w in sizes)
    assert any(h != w for h, w in sizes)
    assert ShapesWorld(split="val", image_size=100, seed=6).sample(0).image.shape == (100, 100, 3)


def test_captions_spans_and_relations(val_samples):
    for s in val_samples:
        referring, listing = s.captions[:2]
        for cap in s.captions:
            for region in cap.regions:
                assert 0 <= region["box_index"] < len(s.labels)
                for start, end in region["tokens_positive"]:
                    assert cap.caption[start:end] == region["phrase"]
                obj = region["box_index"]
                assert region["phrase"].endswith(CATEGORIES[s.labels[obj]])
                words = region["phrase"].split()
                assert len(words) == 2 or words[0] == s.sizes[obj]
        assert sorted(r["box_index"] for r in listing.regions) == list(range(len(s.labels)))
        assert referring.caption.startswith("the ")
        rels = [rel for rel in RELATIONS if f" {rel} the " in referring.caption]
        if len(s.labels) > 1:
            assert len(rels) == 1 and len(referring.regions) == 2
            (cx_r, cy_r), (cx_a, cy_a) = (_centre(s.boxes[r["box_index"]]) for r in referring.regions)
            holds = {
                "left of": cx_r < cx_a,
                "right of": cx_r > cx_a,
                "above": cy_r < cy_a,
                "below": cy_r > cy_a,
            }
            assert holds[rels[0]], referring.caption
        else:
            assert referring.caption == "the " + referring.regions[0]["phrase"]


def test_referring_phrases_are_unambiguous(val_samples):
    for s in val_samples:
        for region in s.captions[0].regions:
            words = region["phrase"].split()
            matches = [
                k
                for k in range(len(s.labels))
                if CATEGORIES[s.labels[k]] == " ".join(words[-2:])
                and (len(words) == 2 or s.sizes[k] == words[0])
            ]
            assert matches == [region["box_index"]]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools' own numpy-2 warning
def test_to_coco_loads_in_pycocotools(val_samples):
    pytest.importorskip("pycocotools")
    from pycocotools.coco import COCO

    samples = val_samples[:10]
    names = [f"images/{i:06d}.png" for i in range(len(samples))]
    d = to_coco(samples, names)
    json.dumps(d)  # serialisable
    coco = COCO()
    coco.dataset = d
    coco.createIndex()
    assert len(coco.getImgIds()) == 10 and len(coco.getCatIds()) == 48
    assert sum(c["split"] == "novel" for c in d["categories"]) == 8
    assert d["images"][0]["caption"] == samples[0].captions[0].caption
    for k, sample in enumerate(samples):
        ann_ids = coco.getAnnIds(imgIds=[k + 1])
        anns = coco.loadAnns(ann_ids)
        assert len(anns) == len(sample.labels)
        for j, ann in enumerate(anns):
            assert ann["category_id"] == sample.labels[j] + 1
            mask = coco.annToMask(ann).astype(bool)
            assert np.array_equal(mask, sample.masks[j])
            assert ann["area"] == mask.sum()
            x, y, w, h = ann["bbox"]
            assert [x, y, x + w, y + h] == sample.boxes[j].tolist()


def test_to_odvg_schema(val_samples):
    samples = val_samples[:5]
    det, grd = to_odvg(samples, [f"{i}.png" for i in range(5)])
    assert len(det) == 5 and len(grd) == sum(len(s.captions) for s in samples)
    assert det[0]["filename"] == "0.png"
    inst = det[0]["detection"]["instances"][0]
    assert inst["bbox"] == samples[0].boxes[0].tolist() and inst["category"] == CATEGORIES[inst["label"]]


def test_write_dataset_round_trip(tmp_path):
    paths = write_dataset(tmp_path / "ds", num_images=6, split="val", image_size=64, seed=4, max_objects=3)
    assert set(paths) == {"images", "coco", "detection", "label_map", "grounding"}
    for key in ("coco", "detection", "label_map", "grounding"):
        assert paths[key].is_file() and paths[key].parent == tmp_path / "ds"
    assert not list((tmp_path / "ds").glob("*.tmp"))

    det = [json.loads(line) for line in paths["detection"].read_text().splitlines()]
    grd = [json.loads(line) for line in paths["grounding"].read_text().splitlines()]
    assert [r["filename"] for r in det] == [f"images/{i:06d}.png" for i in range(6)]
    assert len(grd) >= 12
    for rec in det:
        assert (rec["height"], rec["width"]) == (64, 64)
        with Image.open(tmp_path / "ds" / rec["filename"]) as im:
            assert im.size == (64, 64) and im.mode == "RGB"
        for inst in rec["detection"]["instances"]:
            assert set(inst) == {"bbox", "label", "category"} and len(inst["bbox"]) == 4
            assert inst["category"] == CATEGORIES[inst["label"]]
            x1, y1, x2, y2 = inst["bbox"]
            assert 0 <= x1 < x2 <= 64 and 0 <= y1 < y2 <= 64
    for rec in grd:
        g = rec["grounding"]
        assert set(rec) == {"filename", "height", "width", "grounding"} and g["regions"]
        for region in g["regions"]:
            assert set(region) == {"bbox", "phrase", "tokens_positive"}
            assert all(g["caption"][s:e] == region["phrase"] for s, e in region["tokens_positive"])

    coco = json.loads(paths["coco"].read_text())
    assert len(coco["images"]) == 6 and len(coco["categories"]) == 48
    assert len(coco["annotations"]) == sum(len(r["detection"]["instances"]) for r in det)
    assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"])
    world = ShapesWorld(split="val", image_size=64, seed=4, max_objects=3)
    with Image.open(tmp_path / "ds" / "images" / "000002.png") as im:
        assert np.array_equal(np.asarray(im), world.sample(2).image)  # PNG is lossless
