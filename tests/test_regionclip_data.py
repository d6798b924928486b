"""RegionCLIP's readers of the user's files: caption JSONL and COCO Captions pairs, COCO detection JSON with a
base/novel split (in the categories or in a split file) and LVIS frequencies; bad input gives one clear line and
exit code 2 with nothing written, bad records are skipped and counted."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from PIL import Image

from openglip.cli import main
from openglip.data.captions import read_caption_pairs
from openglip.data.splits import category_splits, read_category_split
from openglip.errors import DataError
from openglip.regionclip.data import BoxDataset, read_caption_data, read_detection_data


def _image(path, colour=(200, 30, 30), size=(48, 64)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*size, 3), colour, dtype=np.uint8)).save(path)


def _coco(tmp_path, categories, name="train.json"):
    _image(tmp_path / "img" / "a.png")
    _image(tmp_path / "img" / "b.png", (20, 200, 20))
    data = {
        "images": [{"id": 1, "file_name": "img/a.png", "height": 48, "width": 64},
                   {"id": 2, "file_name": "img/b.png", "height": 48, "width": 64},
                   {"id": 3, "file_name": "img/gone.png", "height": 48, "width": 64}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [4, 4, 20, 20]},
                        {"id": 2, "image_id": 1, "category_id": 2, "bbox": [30, 10, 20, 30]},
                        {"id": 3, "image_id": 2, "category_id": 3, "bbox": [0, 0, 10, 10]}],
        "categories": categories,
    }  # fmt: skip
    (tmp_path / name).write_text(json.dumps(data))
    return tmp_path / name


CATS = [
    {"id": 1, "name": "cat", "split": "base", "frequency": "f"},
    {"id": 2, "name": "dog", "split": "base", "frequency": "c"},
    {"id": 3, "name": "okapi", "split": "novel", "frequency": "r"},
]


def test_caption_jsonl_and_coco_captions_give_the_same_pairs_and_count_bad_records(tmp_path, caplog):
    _image(tmp_path / "img" / "a.png")
    _image(tmp_path / "img" / "b.png")
    lines = [{"filename": "img/a.png", "caption": "a red cat."}, {"filename": "img/b.png", "caption": "  "},
             {"filename": "img/gone.png", "caption": "a dog."}, {"filename": "img/b.png", "caption": "two dogs."}]  # fmt: skip
    (tmp_path / "caps.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    coco = {"images": [{"id": 1, "file_name": "img/a.png"}, {"id": 2, "file_name": "img/b.png"},
                       {"id": 3, "file_name": "img/gone.png"}],
            "annotations": [{"image_id": 1, "caption": "a red cat."}, {"image_id": 2, "caption": ""},
                            {"image_id": 3, "caption": "a dog."}, {"image_id": 2, "caption": "two dogs."},
                            {"image_id": 9, "caption": "nowhere"}]}  # fmt: skip
    (tmp_path / "captions_train2017.json").write_text(json.dumps(coco))
    with caplog.at_level(logging.WARNING, logger="openglip.data"):
        a, ra = read_caption_pairs(tmp_path / "caps.jsonl")
        b, rb = read_caption_pairs(tmp_path / "captions_train2017.json")
    assert a == b == [(str(tmp_path / "img/a.png"), "a red cat."), (str(tmp_path / "img/b.png"), "two dogs.")]
    assert ra.counts == {"empty_caption": 1, "missing_image": 1}
    assert rb.counts == {"empty_caption": 1, "missing_image": 1, "unknown_image": 1}
    assert "line 3" in ra.first["missing_image"] and "gone.png" in ra.first["missing_image"]
    assert "annotations[1]" in rb.first["empty_caption"]
    assert "gone.png" in caplog.text and "empty_caption: 1" in caplog.text  # the stage's log names them
    records = read_caption_data(tmp_path / "caps.jsonl")
    assert [r.caption for r in records] == ["a red cat.", "two dogs."]


def test_a_caption_file_without_one_usable_pair_is_one_clear_error(tmp_path):
    (tmp_path / "caps.jsonl").write_text(json.dumps({"filename": "nope.png", "caption": "a cat."}) + "\n")
    with pytest.raises(
        DataError, match=r"caps\.jsonl: no usable image-caption pair \(missing_image: 1 \(first: line 1"
    ):
        read_caption_pairs(tmp_path / "caps.jsonl")


def test_detection_data_with_splits_in_the_categories_or_in_a_split_file(tmp_path):
    data = read_detection_data(_coco(tmp_path, CATS))
    assert data.split_names("base") == ["cat", "dog"] and data.split_names("novel") == ["okapi"]
    assert len(data.records) == 2 and data.skipped == {"missing_image": 1}
    assert category_splits(data.categories) == {"base": [1, 2], "f": [1], "c": [2], "novel": [3], "r": [3]}
    gt, images = data.coco()
    assert [a["category_id"] for a in gt["annotations"]] == [1, 2, 3] and images[0].endswith("a.png")
    # base boxes only (novel boxes are background for the RPN and transfer)
    items = [BoxDataset(data, image_size=32)[(0, i)] for i in range(2)]
    assert [len(it.boxes) for it in items] == [2, 0] and items[0].boxes[0].tolist() == [2.0, 2.0, 12.0, 12.0]

    plain = [{"id": c["id"], "name": c["name"]} for c in CATS]
    path = _coco(tmp_path, plain, "plain.json")
    for text, name in (("okapi\n# a comment\n", "novel.txt"), (json.dumps(["okapi"]), "novel.json"),
                       (json.dumps({"novel": ["okapi"], "base": ["cat"]}), "split.json")):  # fmt: skip
        (tmp_path / name).write_text(text)
        split = read_detection_data(path, split_file=tmp_path / name)
        assert split.split_names("novel") == ["okapi"]
        assert split.split_names("base") == (["cat"] if name == "split.json" else ["cat", "dog"])
    assert read_category_split(tmp_path / "novel.txt") == {"okapi": "novel"}
    # no split at all: every category trains (closed set)
    assert read_detection_data(path).split_names("base") == ["cat", "dog", "okapi"]


def test_training_on_data_without_a_split_says_every_box_is_used(tmp_path, capsys):
    """Issue 23.8: ``regionclip rpn`` (and transfer) on a file with no split information warn that every box,
    novel categories included, is trained on; with a split they say nothing."""
    from openglip.regionclip.config import RPNConfig
    from openglip.regionclip.train import detection_data

    plain = _coco(tmp_path, [{"id": c["id"], "name": c["name"]} for c in CATS], "plain.json")
    assert detection_data(RPNConfig(data=str(plain))).split_names("base") == ["cat", "dog", "okapi"]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "plain.json has no base/novel split" in err[0] and "every box" in err[0]
    detection_data(RPNConfig(data=str(_coco(tmp_path, CATS))))
    assert capsys.readouterr().err == ""


def test_detection_data_ground_truth_is_the_coco_dict_of_its_records():
    """``DetectionData.coco`` (through the core's ``coco_ground_truth``): xywh boxes, areas, ids 1..n, the
    categories' own ids, array images named by index, the size without opening a file."""
    from openglip.regionclip.data import BoxRecord, DetectionData

    cats = [{"id": 7, "name": "cat", "split": "base"}, {"id": 9, "name": "okapi", "split": "novel"}]
    boxes = np.array([[2, 3, 12, 8], [0, 0, 5, 5]], np.float32)
    records = [
        BoxRecord(np.zeros((20, 30, 3), np.uint8), boxes, np.array([1, 0]), 1, (20, 30)),
        BoxRecord(np.zeros((10, 10, 3), np.uint8), np.zeros((0, 4), np.float32), np.zeros(0, np.int64), 2),
        BoxRecord(np.zeros((10, 10, 3), np.uint8), boxes[:1], np.array([0]), 3, (10, 10)),
    ]
    gt, sources = DetectionData(records, cats, "memory").coco(num_images=2)
    assert gt == {
        "images": [
            {"id": 1, "file_name": "000000.png", "height": 20, "width": 30},
            {"id": 2, "file_name": "000001.png", "height": 10, "width": 10},
        ],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 9,
                "bbox": [2.0, 3.0, 10.0, 5.0],
                "area": 50.0,
                "iscrowd": 0,
            },
            {
                "id": 2,
                "image_id": 1,
                "category_id": 7,
                "bbox": [0.0, 0.0, 5.0, 5.0],
                "area": 25.0,
                "iscrowd": 0,
            },
        ],
        "categories": cats,
    }
    assert len(sources) == 2 and sources[0] is records[0].image


@pytest.mark.parametrize(
    ("categories", "split", "message"),
    [
        (CATS, "zebra\n", r"novel\.txt: novel category \['zebra'\] not in the annotation file's categories"),
        ([{**c, "split": "novel"} for c in CATS], None, r"train\.json: no base category"),
        ([{"id": 1, "name": "cat"}], "cat\n", r"novel\.txt: no base category"),
        ([{**CATS[0], "split": "seen"}], None, r"train\.json: category 'cat' has split 'seen'"),
        ([{**CATS[0], "frequency": "x"}], None, r"train\.json: category 'cat' has frequency 'x'"),
    ],
)
def test_bad_category_splits_are_one_clear_error(tmp_path, categories, split, message):
    path = _coco(tmp_path, categories)
    split_file = ""
    if split is not None:
        (tmp_path / "novel.txt").write_text(split)
        split_file = tmp_path / "novel.txt"
    with pytest.raises(DataError, match=message):
        read_detection_data(path, split_file=split_file)


def test_cli_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys):
    (tmp_path / "caps.jsonl").write_text(json.dumps({"filename": "x.png", "caption": ""}) + "\n")
    out = tmp_path / "run"
    assert main(["regionclip", "concepts", "--out", str(out), "--data", str(tmp_path / "caps.jsonl")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "caps.jsonl" in err and "empty_caption: 1 (first: line 1)" in err
    path = _coco(tmp_path, [{**c, "split": "novel"} for c in CATS])
    assert main(["regionclip", "rpn", "--out", str(out), "--data", str(path), "max_steps=1"]) == 2
    assert "no base category" in capsys.readouterr().err
    (tmp_path / "novel.txt").write_text("zebra\n")
    args = ["--data", str(_coco(tmp_path, CATS)), "--split-file", str(tmp_path / "novel.txt")]
    assert main(["regionclip", "evaluate", "--detector", "d.safetensors", *args]) == 2
    assert "zebra" in capsys.readouterr().err
    assert not out.exists()  # nothing half-written
