"""Tests of the dataset readers and writers (COCO, ODVG, MDETR, captions)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from PIL import Image

from openglip.data.captions import read_captions, write_captions
from openglip.data.coco import coco_category_info, read_coco, write_coco
from openglip.data.mdetr import read_mdetr, write_mdetr
from openglip.data.odvg import read_odvg, write_odvg
from openglip.data.records import ImageRecord
from openglip.errors import DataError
from openglip.shapes import CATEGORIES, NOVEL, write_dataset


def _image(folder, name, size=(60, 80)):
    """A small RGB PNG of ``size`` (h, w); returns its path."""
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size[1], size[0]), (100, 120, 140)).save(path)
    return str(path)


def _det(path, boxes, labels, image_id, masks=None):
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    return ImageRecord(
        path, 60, 80, boxes, np.asarray(labels, dtype=np.int64), image_id=image_id, masks=masks
    )


def _grd(path, caption, boxes, spans, image_id):
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    labels = np.full(len(boxes), -1, dtype=np.int64)
    return ImageRecord(path, 60, 80, boxes, labels, caption=caption, spans=spans, image_id=image_id)


def _assert_same(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.file_name == w.file_name and (g.height, g.width) == (w.height, w.width)
        assert g.boxes.dtype == np.float32 and g.boxes.shape == w.boxes.shape
        # float32 boxes parsed two ways from the same numbers: measured 0 px; 1e-4 px for float32 rounding
        np.testing.assert_allclose(g.boxes, w.boxes, atol=1e-4)
        assert g.labels.dtype == np.int64 and g.labels.tolist() == w.labels.tolist()
        assert g.caption == w.caption
        assert [[tuple(s) for s in sp] for sp in g.spans] == [[tuple(s) for s in sp] for sp in w.spans]
        assert g.image_id == w.image_id


@pytest.fixture
def images(tmp_path):
    return [_image(tmp_path, f"img/{k}.png") for k in range(3)]


def test_coco_round_trip(tmp_path, images):
    rle = {"counts": [10, 5, 4785], "size": [60, 80]}
    records = [
        _det(images[0], [[1, 2, 30, 40], [10.5, 5, 20, 25]], [2, 0], 1, masks=[rle, [[1, 2, 3, 4, 5, 2]]]),
        _det(images[1], [], [], 2),  # a negative image is kept
        _det(images[2], [[0, 0, 80, 60]], [1], 7),
    ]
    cats = [{"name": "cat", "split": "base"}, {"name": "dog", "split": "novel"}, {"name": "red ball"}]
    write_coco(tmp_path / "ann.json", records, cats)
    got, names, report = read_coco(tmp_path / "ann.json")
    _assert_same(got, records)
    assert names == ["cat", "dog", "red ball"] and report.total == 0
    assert got[0].masks == [rle, [[1, 2, 3, 4, 5, 2]]] and got[1].masks is None
    info = coco_category_info(tmp_path / "ann.json")
    assert [c["id"] for c in info] == [1, 2, 3] and info[1]["split"] == "novel"
    assert json.loads((tmp_path / "ann.json").read_text())["images"][0]["file_name"] == "img/0.png"


def test_coco_category_order_and_bad_records(tmp_path, images, caplog):
    data = {
        "images": [
            {"id": 1, "file_name": "img/0.png", "height": 60, "width": 80},
            {"id": 2, "file_name": "img/missing.png", "height": 60, "width": 80},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 30, "bbox": [10, 10, 20, 20]},  # good
            {"id": 2, "image_id": 1, "category_id": 5, "bbox": [10, 10, 0, 20]},  # zero area
            {"id": 3, "image_id": 1, "category_id": 5, "bbox": [100, 10, 20, 20]},  # outside
            {"id": 4, "image_id": 1, "category_id": 5, "bbox": [70, 50, 20, 20]},  # clipped
            {"id": 5, "image_id": 1, "category_id": 5, "bbox": [1, 1, 5, 5], "iscrowd": 1},
            {"id": 6, "image_id": 1, "category_id": 5, "bbox": [float("nan"), 1, 5, 5]},
            {"id": 7, "image_id": 2, "category_id": 5, "bbox": [1, 1, 5, 5]},
        ],
        "categories": [{"id": 30, "name": "zebra"}, {"id": 5, "name": "apple"}],
    }
    (tmp_path / "ann.json").write_text(json.dumps(data))  # NaN is written as the bare word NaN
    with caplog.at_level(logging.WARNING, logger="openglip.data"):
        records, names, report = read_coco(tmp_path / "ann.json")
    assert names == ["apple", "zebra"]  # sorted by id: category index = position in that order
    assert len(records) == 1 and records[0].image_id == 1
    # integer coordinates: measured exact (0), assert_allclose's default rtol 1e-7
    np.testing.assert_allclose(records[0].boxes, [[10, 10, 30, 30], [70, 50, 80, 60]])
    assert records[0].labels.tolist() == [1, 0]
    assert dict(report.counts) == {"empty_box": 2, "box_outside": 1, "crowd": 1, "missing_image": 1}
    assert "skipped 5 bad entries" in caplog.text
    # without the image check the record of the missing image is kept
    records, _, _ = read_coco(tmp_path / "ann.json", check_images=False)
    assert [r.image_id for r in records] == [1, 2]


def test_unreadable_files_raise(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("this is not json {")
    for reader in (read_coco, read_mdetr, read_odvg):
        with pytest.raises(ValueError, match=r"bad\.json"):
            reader(bad)
    with pytest.raises(ValueError, match=r"bad\.json"):
        read_captions(bad)
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"list\.json.*COCO"):
        read_coco(tmp_path / "list.json")
    (tmp_path / "coco.jsonl").write_text(json.dumps({"images": [], "categories": []}) + "\n")
    with pytest.raises(ValueError, match=r"coco\.jsonl.*ODVG"):
        read_odvg(tmp_path / "coco.jsonl")
    with pytest.raises(DataError, match=r"nope\.json"):
        read_coco(tmp_path / "nope.json")
    with pytest.raises(DataError):
        read_odvg(tmp_path / "nope.jsonl")


def test_odvg_round_trip_mixed(tmp_path, images):
    caption = "the red ball left of the big dog"
    records = [
        _det(images[0], [[1, 2, 30, 40], [10, 5, 20, 25]], [2, 0], 1),
        _grd(images[1], caption, [[1, 1, 10, 10], [20, 20, 40, 50]], [[(4, 12)], [(25, 28), (29, 32)]], 2),
        _det(images[2], [], [], 3),
    ]
    write_odvg(tmp_path / "a.jsonl", records, ["cat", "dog", "red ball"])
    got, names, report = read_odvg(tmp_path / "a.jsonl")
    _assert_same(got, records)
    assert names == ["cat", "dog", "red ball"] and report.total == 0  # "dog" (never used) from the label map
    assert json.loads((tmp_path / "a.label_map.json").read_text()) == {
        "0": "cat",
        "1": "dog",
        "2": "red ball",
    }
    lines = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert lines[1]["grounding"]["regions"][1]["phrase"] == "big dog"
    assert lines[0]["detection"]["instances"][0]["category"] == "red ball"


def test_odvg_bad_lines(tmp_path, images, caplog):
    root = tmp_path / "img"
    lines = [
        {
            "filename": "0.png",
            "height": 60,
            "width": 80,
            "detection": {
                "instances": [
                    {"bbox": [1, 1, 10, 10], "label": 0, "category": "cat"},
                    {"bbox": [5, 5, 5, 10], "label": 0, "category": "cat"},  # zero width
                    {"bbox": [-20, -20, -5, -5], "label": 1, "category": "dog"},  # outside
                    {"bbox": [-5, 50, 10, 70], "label": 1, "category": "doggo"},  # clipped, name conflict
                ]
            },
        },
        "{not json",
        {"filename": "gone.png", "height": 60, "width": 80, "detection": {"instances": []}},
        {
            "filename": "1.png",
            "height": 60,
            "width": 80,
            "grounding": {
                "caption": "a cat and a dog",
                "regions": [
                    {
                        "bbox": [1, 1, 9, 9],
                        "phrase": "cat",
                        "tokens_positive": [[2, 5], [10, 40]],
                    },  # one span bad
                    {"bbox": [2, 2, 9, 9], "phrase": "dog", "tokens_positive": [[12, 99]]},  # no valid span
                    {"bbox": [3, 3, 3, 9], "phrase": "a", "tokens_positive": [[0, 1]]},  # empty box
                ],
            },
        },
        {
            "filename": "2.png",
            "height": 60,
            "width": 80,
            "grounding": {
                "caption": "x",
                "regions": [
                    {"bbox": [1, 1, 9, 9], "phrase": "y", "tokens_positive": [[3, 2]]},
                ],
            },
        },
        "",
        "[1, 2]",
    ]
    text = "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines)
    (tmp_path / "a.jsonl").write_text(text + "\n")
    with caplog.at_level(logging.WARNING, logger="openglip.data"):
        records, names, report = read_odvg(tmp_path / "a.jsonl", image_root=root)
    assert names == ["cat", "dog"]
    assert [r.image_id for r in records] == [1, 4]  # line numbers
    # integer coordinates: measured exact (0), assert_allclose's default rtol 1e-7
    np.testing.assert_allclose(records[0].boxes, [[1, 1, 10, 10], [0, 50, 10, 60]])
    assert records[0].labels.tolist() == [0, 1]
    assert records[1].caption == "a cat and a dog" and records[1].spans == [[(2, 5)]]
    assert records[1].labels.tolist() == [-1]
    assert dict(report.counts) == {
        "empty_box": 2, "box_outside": 1, "label_name_conflict": 1, "bad_json": 2, "missing_image": 1,
        "bad_span": 2, "bad_span_partial": 1, "no_regions": 1,
    }  # fmt: skip
    assert "a.jsonl:2: skipped malformed line" in caplog.text and "a.jsonl:7:" in caplog.text


def test_mdetr_round_trip_and_bad_spans(tmp_path, images):
    records = [
        _grd(images[0], "a small red ball", [[1, 1, 10, 10]], [[(2, 16)]], 3),
        _grd(images[1], "two dogs", [[1, 1, 10, 10], [5, 5, 70, 50]], [[(0, 8)], [(4, 8), (0, 3)]], 4),
    ]
    write_mdetr(tmp_path / "m.json", records)
    got, cats, report = read_mdetr(tmp_path / "m.json")
    _assert_same(got, records)
    assert cats == [] and report.total == 0

    data = json.loads((tmp_path / "m.json").read_text())
    data["annotations"][0]["tokens_positive"] = [[10, 30]]  # beyond the caption: image 3 has no region left
    data["annotations"][1]["bbox"] = [100, 100, 5, 5]  # outside
    (tmp_path / "m.json").write_text(json.dumps(data))
    got, _, report = read_mdetr(tmp_path / "m.json")
    assert [r.image_id for r in got] == [4] and got[0].spans == [[(4, 8), (0, 3)]]
    assert dict(report.counts) == {"bad_span": 1, "box_outside": 1, "no_regions": 1}
    with pytest.raises(ValueError, match="caption"):
        read_mdetr(_coco_file(tmp_path))


def _coco_file(tmp_path):
    path = tmp_path / "plain.json"
    path.write_text(
        json.dumps({"images": [{"id": 1, "file_name": "x.png"}], "annotations": [], "categories": []})
    )
    return path


def test_captions_round_trip(tmp_path, images):
    pairs = [(images[0], "a dog on the left"), (images[2], "ünïcode caption")]
    write_captions(tmp_path / "c.jsonl", pairs)
    got, report = read_captions(tmp_path / "c.jsonl")
    assert got == pairs and report.total == 0
    with (tmp_path / "c.jsonl").open("a") as f:
        f.write('{"filename": "img/gone.png", "caption": "x"}\n{"filename": "img/0.png"}\noops\n')
    got, report = read_captions(tmp_path / "c.jsonl")
    assert got == pairs
    assert dict(report.counts) == {"missing_image": 1, "bad_record": 1, "bad_json": 1}


def test_shapes_dataset_reads_back(tmp_path):
    paths = write_dataset(tmp_path, num_images=6)
    coco = json.loads(paths["coco"].read_text())
    num_boxes = len(coco["annotations"])

    records, cats, report = read_coco(paths["coco"])
    assert cats == CATEGORIES and len(records) == 6 and report.total == 0
    assert sum(len(r.boxes) for r in records) == num_boxes
    assert all(len(r.masks) == len(r.boxes) for r in records)
    info = coco_category_info(paths["coco"])
    assert [c["name"] for c in info if c["split"] == "novel"] == [c for c in CATEGORIES if c in NOVEL]

    det, det_cats, report = read_odvg(paths["detection"])
    assert len(det) == 6 and report.total == 0
    assert det_cats == CATEGORIES  # the whole vocabulary (label map), not just the labels 6 images use
    assert paths["label_map"] == tmp_path / "detection.odvg.label_map.json"
    for a, b in zip(records, det):
        # float32 boxes parsed two ways from the same numbers: measured 0 px; 1e-4 px for float32 rounding
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-4)
        assert a.labels.tolist() == b.labels.tolist() and a.file_name == b.file_name

    grd, _, report = read_odvg(paths["grounding"])
    assert len(grd) == 12 and report.total == 0  # two captions per image
    lines = [json.loads(line)["grounding"] for line in paths["grounding"].read_text().splitlines()]
    for r, line in zip(grd, lines):
        assert r.caption == line["caption"] and r.labels.tolist() == [-1] * len(r.boxes)
        assert [r.caption[s:e] for (s, e), *_ in r.spans] == [g["phrase"] for g in line["regions"]]


def _odvg_line(name, instances):
    return json.dumps({"filename": name, "height": 60, "width": 80, "detection": {"instances": instances}})


def test_odvg_categories_do_not_depend_on_the_labels_that_occur(tmp_path, images, caplog):
    """Bug: categories came from the label ids that happen to occur ("" for the others), which broke train
    ("span (32, 32) of phrase ''") and evaluate ("class name #3 is empty")."""
    from openglip.data.datasets import GroundingDataset
    from openglip.prompts import build_prompt

    box = [1, 1, 10, 10]
    lines = [
        _odvg_line("img/0.png", [{"bbox": box, "label": 3, "category": "dog"}, {"bbox": box, "label": 5}]),
        _odvg_line("img/1.png", [{"bbox": box, "label": 0, "category": "cat"}]),
    ]
    (tmp_path / "a.jsonl").write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING, logger="openglip.data"):
        records, names, report = read_odvg(tmp_path / "a.jsonl")
    assert names == ["cat", "dog"]  # ids 0 and 3, renumbered; id 5 has no name anywhere
    assert [r.labels.tolist() for r in records] == [[1], [0]]
    assert report.counts["unnamed_label"] == 1 and "labels [5] have no category name" in caplog.text
    build_prompt(names)  # every class has a name
    ds = GroundingDataset(records, names, transform=None, to_tensor=lambda im: im, num_negatives=5)
    _, target = ds[(0, 0)]
    assert [target["caption"][s:e] for (s, e), *_ in target["spans"]] == ["dog"]

    # GroundingDINO's label map beside the file names ids no line uses (and labels without a 'category')
    (tmp_path / "label_map.json").write_text(json.dumps({"0": "cat", "3": "dog", "5": "bird", "7": "fish"}))
    records, names, report = read_odvg(tmp_path / "a.jsonl")
    assert names == ["cat", "dog", "bird", "fish"] and report.total == 0
    assert [r.labels.tolist() for r in records] == [[1, 2], [0]]
    (tmp_path / "label_map.json").write_text("[1, 2")
    with pytest.raises(DataError, match=r"label_map\.json"):
        read_odvg(tmp_path / "a.jsonl")
