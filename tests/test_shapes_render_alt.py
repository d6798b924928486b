"""Tests of the second shapes-world renderer (openglip.shapes.render_alt) against the world's rules."""

from __future__ import annotations

import json

import numpy as np
import pytest

from openglip.shapes import CATEGORIES, NOVEL, RELATIONS, SIZES, ShapesWorld, to_coco
from openglip.shapes.render_alt import ALT_SHADES, AltShapesWorld

from .shapes_colours import colour_name, core_colour

NOVEL_IDS = {CATEGORIES.index(name) for name in NOVEL}


@pytest.fixture(scope="module")
def alt_val():
    world = AltShapesWorld(split="val", seed=3)
    return [world.sample(i) for i in range(80)]


def test_palette_is_true_to_its_names():
    assert set(ALT_SHADES) == {name.split()[0] for name in CATEGORIES}
    for name, shades in ALT_SHADES.items():
        assert len(set(shades)) >= 3  # several shades per name, unlike shapes.py's one colour
        for rgb in shades:
            assert colour_name(rgb) == name, (name, rgb)


def test_deterministic_and_apart_from_the_first_renderer():
    a, b = AltShapesWorld(split="train", seed=7), AltShapesWorld(split="train", seed=7)
    for index in (4, 0):
        sa, sb = a.sample(index), b[index]
        assert np.array_equal(sa.image, sb.image) and np.array_equal(sa.masks, sb.masks)
        assert [c.caption for c in sa.captions] == [c.caption for c in sb.captions]
    assert not np.array_equal(a.sample(0).image, a.sample(1).image)
    fixed = AltShapesWorld(split="train", seed=7, vary_canvas=False, image_size=(96, 112))
    assert fixed.sample(0).image.shape == (96, 112, 3)
    with pytest.raises(ValueError, match="split"):
        AltShapesWorld(split="nope")


def test_canvases_vary_in_size_and_aspect(alt_val):
    shapes = {s.image.shape[:2] for s in alt_val}
    aspects = [w / h for h, w in shapes]
    assert len(shapes) > 40 and min(aspects) < 0.8 and max(aspects) > 1.25
    assert all(min(h, w) >= 48 for h, w in shapes)


def test_annotations_follow_the_pixels(alt_val):
    for s in alt_val:
        h, w = s.image.shape[:2]
        assert s.image.dtype == np.uint8 and s.masks.shape == (len(s.labels), h, w)
        assert s.boxes.dtype == np.float32 and s.labels.dtype == np.int64 and set(s.sizes) <= set(SIZES)
        assert 1 <= len(s.labels) <= 5
        assert s.masks.any(axis=(1, 2)).all() and (s.masks.sum(axis=0) <= 1).all()
        for box, mask in zip(s.boxes, s.masks):
            ys, xs = np.nonzero(mask)
            assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        for cap in s.captions:
            for region in cap.regions:
                (start, end), k = region["tokens_positive"][0], region["box_index"]
                assert cap.caption[start:end] == region["phrase"] and region["phrase"].endswith(
                    CATEGORIES[s.labels[k]]
                )
        rels = [rel for rel in RELATIONS if f" {rel} the " in s.captions[0].caption]
        if len(s.labels) > 1:  # the relation in the referring caption holds between the box centres
            (r, a) = (s.boxes[reg["box_index"]] for reg in s.captions[0].regions)
            dx, dy = (r[0] + r[2] - a[0] - a[2]) / 2, (r[1] + r[3] - a[1] - a[3]) / 2
            assert {"left of": dx < 0, "right of": dx > 0, "above": dy < 0, "below": dy > 0}[rels[0]]
    coco = to_coco(alt_val[:5], [f"{i}.png" for i in range(5)])  # the same exporters apply
    assert len(coco["annotations"]) == sum(len(s.labels) for s in alt_val[:5])


def test_objects_are_drawn_in_their_colour(alt_val):
    named = wrong = 0
    for s in alt_val:
        for label, mask in zip(s.labels, s.masks):
            if mask.sum() < 40:  # a thin hollow outline of a small object is mostly edge
                continue
            named += 1
            wrong += colour_name(core_colour(s.image, mask)) != CATEGORIES[label].split()[0]
    assert named > 150 and wrong <= 0.01 * named, (wrong, named)


def test_splits_and_sizes(alt_val):
    train = AltShapesWorld(split="train", seed=1)
    labels = np.concatenate([train.sample(i).labels for i in range(150)])
    assert not NOVEL_IDS & set(labels.tolist()) and len(set(labels.tolist())) >= 38
    val_labels = np.concatenate([s.labels for s in alt_val])
    assert 0.3 <= np.isin(val_labels, list(NOVEL_IDS)).mean() <= 0.6
    for s in alt_val:  # "small" and "large" hold within each image
        ext = {
            z: [max(b[2] - b[0], b[3] - b[1]) for b, zz in zip(s.boxes, s.sizes) if zz == z] for z in SIZES
        }
        if ext["small"] and ext["large"]:
            assert max(ext["small"]) < min(ext["large"]) * 1.05, s.sizes


def _rules(samples) -> dict:
    """The world's rules as numbers: objects per image, novel share, large/small extent, colour truth."""
    extents = {z: [] for z in SIZES}
    named = right = 0
    for s in samples:
        for box, size, label, mask in zip(s.boxes, s.sizes, s.labels, s.masks):
            extents[size].append(max(box[2] - box[0], box[3] - box[1]) / min(s.image.shape[:2]))
            if mask.sum() >= 40:
                named += 1
                right += colour_name(core_colour(s.image, mask)) == CATEGORIES[label].split()[0]
    labels = np.concatenate([s.labels for s in samples])
    return {
        "objects": len(labels) / len(samples),
        "novel": float(np.isin(labels, list(NOVEL_IDS)).mean()),
        "large/small": float(np.median(extents["large"]) / np.median(extents["small"])),
        "colour truth": right / named,
    }


def _solidity(samples, shape: str) -> float:
    """Median area / convex-hull area of the whole (holes filled) unoccluded-looking objects of ``shape``."""
    from scipy import ndimage
    from skimage.measure import regionprops

    values = []
    for s in samples:
        for label, mask in zip(s.labels, s.masks):
            filled = ndimage.binary_fill_holes(mask)
            if CATEGORIES[label].endswith(shape) and filled.sum() >= 150:
                values.append(regionprops(filled.astype(np.uint8))[0].solidity)
    return float(np.median(values))


def test_renderers_differ_in_look_but_not_in_rules(alt_val):
    """A cheap guard for both renderers: if one were swapped for the other (or lost its own look), the shape
    geometry and canvases below would agree; if either broke the world's rules, the numbers would not."""
    own_world = ShapesWorld(split="val", seed=3)
    own = [own_world.sample(i) for i in range(80)]
    mine, theirs = _rules(own), _rules(alt_val)
    assert 1.8 <= mine["objects"] <= 4.5 and abs(mine["objects"] - theirs["objects"]) < 1.0
    for rules in (mine, theirs):
        assert 0.3 <= rules["novel"] <= 0.6 and 1.7 <= rules["large/small"] <= 2.8
        assert rules["colour truth"] >= 0.99
    # look: pointier stars and thinner crosses, canvases of their own (shades: test_palette_is_true_to_its_names)
    assert _solidity(alt_val, "star") < _solidity(own, "star") - 0.04
    assert _solidity(alt_val, "cross") < _solidity(own, "cross") - 0.03
    assert len({s.image.shape for s in own}) == 1 and len({s.image.shape for s in alt_val}) > 40


def test_cli_writes_and_evaluates_the_alt_world(tmp_path, tiny_checkpoint, capsys):
    from PIL import Image

    from openglip.cli import main

    out = tmp_path / "alt"
    assert (
        main(["data", "shapes", "--renderer", "alt", "--out", str(out), "--images", "4", "--split", "val"])
        == 0
    )
    coco = json.loads((out / "annotations.coco.json").read_text())
    assert coco["info"]["renderer"] == "alt" and len(coco["images"]) == 4
    world = AltShapesWorld(split="val", seed=0)
    for k, entry in enumerate(coco["images"]):
        with Image.open(out / entry["file_name"]) as im:
            assert (im.height, im.width) == (entry["height"], entry["width"])
            assert np.array_equal(np.asarray(im), world.sample(k).image)
    metrics = tmp_path / "metrics.json"
    args = [
        "evaluate",
        "--weights",
        str(tiny_checkpoint),
        "--renderer",
        "alt",
        "--images",
        "3",
        "--out",
        str(metrics),
    ]
    assert main(args) == 0
    values = json.loads(metrics.read_text())["metrics"]
    assert 0.0 <= values["AP50"] <= 1.0 and 0.0 <= values["R@1"] <= 1.0
    with pytest.raises(SystemExit) as bad:  # argparse's exit code for a bad choice
        main(["evaluate", "--weights", str(tiny_checkpoint), "--renderer", "oil-paint"])
    assert bad.value.code == 2
