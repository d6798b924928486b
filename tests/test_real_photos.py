"""The hand-labelled real-photo check set (openglip/shapes/real_photos.json): it loads offline, its labels are
well-formed, its COCO export is valid for pycocotools, and a few labels pass a pixel-level sanity check.

Tolerances: each pytest.approx compares a metric with a value worked out by hand (a perfect detector scores 1.0).
The metric code works in float64: measured equal to those values on 1 and 2 threads, so approx's default
rel=1e-6 only absorbs float64 rounding, far below the smallest real change (one of COCO's 101
recall points moves AP by about 5e-3).
"""

from __future__ import annotations

import importlib.util
from importlib import resources

import numpy as np
import pytest

from openglip.shapes import photos as real_photos
from openglip.shapes.photos import (
    CHECK_SET,
    categories,
    load_check_set,
    load_photo,
    prompt_for,
    to_coco,
)

ENTRIES = load_check_set()
BY_LOADER = {e["loader"]: e for e in ENTRIES}


def _module_of(entry: dict) -> str:
    return entry["loader"].split(".")[0]


def _photo(entry: dict) -> np.ndarray:
    pytest.importorskip(_module_of(entry))
    return load_photo(entry)


def _boxes(entry: dict, phrase: str | None = None) -> list[list[int]]:
    return [o["bbox"] for o in entry["objects"] if phrase is None or o["phrase"] == phrase]


def test_default_path_and_size():
    """The check set ships as package data (read through importlib.resources, never from tests/)."""
    assert resources.files("openglip.shapes").joinpath(CHECK_SET).is_file()
    assert len(ENTRIES) >= 12
    assert sum(len(e["objects"]) for e in ENTRIES) >= 20
    ids = [e["id"] for e in ENTRIES]
    assert len(set(ids)) == len(ids) and all(isinstance(i, int) and i >= 1 for i in ids)
    assert len({e["loader"] for e in ENTRIES}) == len(ENTRIES)  # no photo twice


@pytest.mark.parametrize("entry", ENTRIES, ids=[f"{e['id']}-{e['file_hint']}" for e in ENTRIES])
def test_entry_loads_and_labels_are_well_formed(entry):
    photo = _photo(entry)
    h, w = entry["height"], entry["width"]
    assert photo.shape == (h, w, 3) and photo.dtype == np.uint8
    assert photo.std() > 5  # a real picture, not a blank
    assert entry["source"] in {"scikit-image", "scikit-learn", "matplotlib"}
    assert entry["objects"], "every image has at least one labelled object"
    labelled = {o["phrase"] for o in entry["objects"]}
    negatives = set(entry.get("negatives", []))
    assert labelled <= set(entry["prompt"]) and negatives <= set(entry["prompt"])
    assert not labelled & negatives, "a distractor phrase must be absent from the photo"
    assert prompt_for(entry) == entry["prompt"]
    for obj in entry["objects"]:
        x1, y1, x2, y2 = obj["bbox"]
        assert all(isinstance(v, int) for v in obj["bbox"])
        assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h, obj
        assert x2 - x1 >= 8 and y2 - y1 >= 8, obj
        assert obj["phrase"] == obj["phrase"].strip().lower() and obj["phrase"]


def test_grayscale_and_binary_photos_become_rgb():
    camera = _photo(BY_LOADER["skimage.data.camera"])
    assert np.array_equal(camera[..., 0], camera[..., 1]) and np.array_equal(camera[..., 1], camera[..., 2])
    horse = _photo(BY_LOADER["skimage.data.horse"])
    assert set(np.unique(horse).tolist()) == {0, 255}


def test_missing_package_is_named(monkeypatch):
    with pytest.raises(RuntimeError, match="no_such_pkg_xyz"):
        load_photo({"loader": "no_such_pkg_xyz.data.cat"})

    def fail(name, *args, **kwargs):
        raise ModuleNotFoundError(f"No module named {name!r}")

    monkeypatch.setattr(real_photos.importlib, "import_module", fail)
    with pytest.raises(RuntimeError, match="scikit-learn"):
        load_photo(BY_LOADER["sklearn.datasets.load_sample_image:china.jpg"])
    with pytest.raises(RuntimeError, match="scikit-image"):
        load_photo(BY_LOADER["skimage.data.coins"])


def test_to_coco_structure():
    d = to_coco(ENTRIES)
    names = [c["name"] for c in d["categories"]]
    assert names == sorted(names) == categories(ENTRIES)
    assert [c["id"] for c in d["categories"]] == list(range(1, len(names) + 1))
    assert [im["id"] for im in d["images"]] == [e["id"] for e in ENTRIES]
    anns = d["annotations"]
    assert len(anns) == sum(len(e["objects"]) for e in ENTRIES)
    assert len({a["id"] for a in anns}) == len(anns)
    by_id = {c["id"]: c["name"] for c in d["categories"]}
    flat = [(e["id"], o) for e in ENTRIES for o in e["objects"]]
    for ann, (image_id, obj) in zip(anns, flat):
        x1, y1, x2, y2 = obj["bbox"]
        assert ann["image_id"] == image_id and by_id[ann["category_id"]] == obj["phrase"]
        assert ann["bbox"] == [x1, y1, x2 - x1, y2 - y1] and ann["area"] == (x2 - x1) * (y2 - y1)
        assert ann["iscrowd"] == 0
    crowd = to_coco(ENTRIES, difficult_as_crowd=True)["annotations"]
    assert [a["iscrowd"] for a in crowd] == [int(bool(o.get("difficult"))) for _, o in flat]


def test_to_coco_is_valid_for_pycocotools():
    pytest.importorskip("pycocotools")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    coco = COCO()
    coco.dataset = to_coco(ENTRIES)
    coco.createIndex()
    assert len(coco.getImgIds()) == len(ENTRIES)
    assert len(coco.getAnnIds(catIds=coco.getCatIds(catNms=["coin"]))) == 24
    # the labels scored as perfect detections must give AP = 1
    dets = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
        for a in coco.dataset["annotations"]
    ]
    ev = COCOeval(coco, coco.loadRes(dets), "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0) and ev.stats[1] == pytest.approx(1.0)


# ------------------------------------------------------------------------------ pixel-level sanity checks


def test_every_coin_is_boxed_tightly():
    entry = BY_LOADER["skimage.data.coins"]
    gray = _photo(entry)[..., 0].astype(float)
    boxes = _boxes(entry, "coin")
    assert len(boxes) == 24 and _boxes(entry) == boxes
    inside = np.zeros(gray.shape, bool)
    for x1, y1, x2, y2 in boxes:
        assert not inside[y1:y2, x1:x2].any(), "coin boxes do not overlap"
        inside[y1:y2, x1:x2] = True
    background = gray[~inside]
    bright = np.percentile(background, 95)
    for x1, y1, x2, y2 in boxes:
        assert gray[y1:y2, x1:x2].mean() > background.mean() + 40  # a coin is brighter than the backdrop
        sides = [
            gray[y1 : y1 + 3, x1:x2],
            gray[y2 - 3 : y2, x1:x2],
            gray[y1:y2, x1 : x1 + 3],
            gray[y1:y2, x2 - 3 : x2],
        ]
        assert all(s.max() > bright for s in sides), "the coin reaches all four sides of its box"
    from skimage import measure

    left_over = (gray > 150) & ~inside  # nothing coin-sized is left unlabelled
    assert max((r.area for r in measure.regionprops(measure.label(left_over))), default=0) < 30


def test_horse_box_is_the_silhouette_extent():
    entry = BY_LOADER["skimage.data.horse"]
    ys, xs = np.nonzero(_photo(entry)[..., 0] == 0)
    assert _boxes(entry) == [[int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]]


def test_flowers_are_orange_against_green():
    entry = BY_LOADER["sklearn.datasets.load_sample_image:flower.jpg"]
    rgb = _photo(entry).astype(float)
    orange = rgb[..., 0] - rgb[..., 2]
    inside = np.zeros(orange.shape, bool)
    for x1, y1, x2, y2 in _boxes(entry, "flower"):
        inside[y1:y2, x1:x2] = True
        assert orange[y1:y2, x1:x2].mean() > orange[~inside].mean() + 60
    assert len(_boxes(entry, "flower")) == 2


def test_rocket_is_brighter_than_the_sky_beside_it():
    entry = BY_LOADER["skimage.data.rocket"]
    gray = _photo(entry).astype(float).mean(axis=2)
    ((x1, y1, x2, y2),) = _boxes(entry, "rocket")
    assert (y2 - y1) > 8 * (x2 - x1)  # tall and thin
    rocket = gray[y1:y2, x1:x2].mean()
    assert (
        rocket > gray[y1:y2, x1 - 30 : x1 - 10].mean() + 30
        and rocket > gray[y1:y2, x2 + 10 : x2 + 30].mean() + 30
    )


def test_camera_image_person_is_dark_and_camera_light():
    entry = BY_LOADER["skimage.data.camera"]
    gray = _photo(entry)[..., 0].astype(float)
    ((px1, py1, px2, py2),) = _boxes(entry, "person")
    ((cx1, cy1, cx2, cy2),) = _boxes(entry, "camera")
    assert (gray[py1:py2, px1:px2] < 40).mean() > 0.4  # the dark coat fills much of the person box
    assert gray[cy1:cy2, cx1:cx2].mean() > gray[py1:py2, px1:px2].mean() + 50
    assert px1 <= cx1 and cx2 <= px2 + 5  # the camera is held in front of the face


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="matplotlib not installed")
def test_grace_hopper_glasses_below_hat_inside_person():
    entry = BY_LOADER["matplotlib.cbook.get_sample_data:grace_hopper.jpg"]
    (person,), (hat,), (glasses,) = (_boxes(entry, p) for p in ("person", "hat", "glasses"))
    for box in (hat, glasses):
        assert person[0] <= box[0] and person[1] <= box[1] and box[2] <= person[2] and box[3] <= person[3]
    assert hat[1] < glasses[1] and hat[3] <= glasses[3]
