"""The benchmark protocols' numbers against hand-computed cases and a second implementation: LVIS fixed AP
(faster-coco-eval vs the lvis API), ODinW's few-shot draw, Flickr / RefCOCO recall, OV-COCO splits, readers.

Tolerances: each pytest.approx compares a metric with a value worked out by hand or by the second implementation.
The metric code works in float64: measured at most 4e-16 (APr = 2/352, held to rel=1e-3: measured 1.5e-16) from
those values on 1 and 2 threads, so approx's default rel=1e-6 and the abs=1e-6 bars only absorb float64 rounding,
far below the smallest real change (one of COCO's 101 recall points moves AP by about 5e-3).
"""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest

from openglip.data.lvis import read_lvis, validate_lvis
from openglip.data.mdetr_final import read_mdetr_final
from openglip.data.odinw import drop_background_category, find_odinw_datasets, glip_few_shot
from openglip.data.splits import parse_category_split, read_category_split
from openglip.errors import DataError
from openglip.protocols.common import clean_name, ovcoco_split, prompt_from_entries
from openglip.protocols.flickr import run_flickr
from openglip.protocols.lvis import limit_per_class, lvis_fixed_ap
from openglip.protocols.ovcoco import run_ovcoco
from openglip.protocols.refcoco import run_refcoco
from openglip.structures import Detections

BACKENDS = ("faster", "lvis")


# -- LVIS fixed AP ----------------------------------------------------------------------------------------------
def _lvis_gt(neg=None, not_exhaustive=None):
    """Two images, categories 1 (rare), 2 (common), 3 (frequent); one box of each present category."""
    neg = neg or {}
    not_exhaustive = not_exhaustive or {}
    images = [{"id": i, "height": 100, "width": 100, "neg_category_ids": neg.get(i, []),
               "not_exhaustive_category_ids": not_exhaustive.get(i, [])} for i in (1, 2)]  # fmt: skip
    boxes = {
        (1, 1): [10, 10, 30, 30],
        (1, 3): [50, 50, 20, 20],
        (2, 1): [5, 5, 40, 40],
        (2, 2): [60, 10, 30, 30],
    }
    anns = [{"id": k + 1, "image_id": i, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
            for k, ((i, c), b) in enumerate(boxes.items())]  # fmt: skip
    cats = [{"id": 1, "name": "a", "frequency": "r"}, {"id": 2, "name": "b", "frequency": "c"},
            {"id": 3, "name": "c", "frequency": "f"}]  # fmt: skip
    return {"images": images, "annotations": anns, "categories": cats}, boxes


def _det(image_id, cat, box, score):
    return {"image_id": image_id, "category_id": cat, "bbox": list(box), "score": score}


@pytest.mark.parametrize("backend", BACKENDS)
def test_lvis_perfect_predictions_score_one(backend):
    gt, boxes = _lvis_gt()
    m = lvis_fixed_ap(gt, [_det(i, c, b, 0.9) for (i, c), b in boxes.items()], backend=backend)
    for key in ("AP", "AP50", "AP75", "APr", "APc", "APf"):
        assert m[key] == pytest.approx(1.0), key


@pytest.mark.parametrize("backend", BACKENDS)
def test_lvis_hand_computed_federated_case(backend):
    # category 1: TP (0.9) in image 1, a false positive (0.8) in image 2 far from its box, TP (0.7) in image 2.
    # precision is 1 up to recall 0.5, then 2/3: COCO's 101-point AP = (51 * 1 + 50 * 2/3) / 101
    gt, boxes = _lvis_gt(neg={1: [2]}, not_exhaustive={2: [3]})
    dets = [_det(1, 1, boxes[(1, 1)], 0.9), _det(2, 1, [70, 70, 20, 20], 0.8), _det(2, 1, boxes[(2, 1)], 0.7)]
    dets += [_det(i, c, b, 0.9) for (i, c), b in boxes.items() if c != 1]
    dets.append(
        _det(2, 3, [0, 60, 30, 30], 0.95)
    )  # category 3 is neither annotated nor negative in image 2: ignored
    dets.append(
        _det(1, 2, [0, 0, 99, 99], 0.99)
    )  # category 2 is negative in image 1: a counted false positive
    m = lvis_fixed_ap(gt, dets, backend=backend)
    expected_r = (51 + 50 * 2 / 3) / 101
    assert m["APr"] == pytest.approx(expected_r, abs=1e-6)
    assert m["APf"] == pytest.approx(1.0)  # the unverified detection did not count
    assert m["APc"] == pytest.approx(
        0.5, abs=1e-6
    )  # a counted FP at 0.99, then the TP: precision 1/2 throughout
    assert m["AP"] == pytest.approx((m["APr"] + m["APc"] + m["APf"]) / 3, abs=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fixed_ap_has_no_per_image_cap(backend):
    gt, boxes = _lvis_gt()
    # 350 confident false positives of category 1 in image 1, then the two true positives: a 300-per-image cap
    # would drop image 1's true positive; fixed AP keeps it (precision 2/352 at full recall)
    dets = [_det(1, 1, [60 + (k % 30), 60, 5, 5], 0.99 - k * 1e-4) for k in range(350)]
    dets += [_det(1, 1, boxes[(1, 1)], 0.5), _det(2, 1, boxes[(2, 1)], 0.5)]
    m = lvis_fixed_ap(gt, dets, backend=backend)
    assert m["APr"] == pytest.approx(2 / 352, rel=1e-3)
    assert lvis_fixed_ap(gt, dets, topk=100, backend=backend)["APr"] == 0.0  # per-class cap of 100 drops them


def test_lvis_backends_agree_on_random_detections():
    rng = np.random.default_rng(0)
    gt, boxes = _lvis_gt(neg={1: [2], 2: [3]}, not_exhaustive={1: [1]})
    dets = []
    for (i, c), b in boxes.items():
        for _ in range(6):
            jitter = rng.normal(0, 4, size=4)
            box = [b[0] + jitter[0], b[1] + jitter[1], max(2, b[2] + jitter[2]), max(2, b[3] + jitter[3])]
            dets.append(
                _det(i, int(rng.integers(1, 4)) if rng.random() < 0.3 else c, box, float(rng.random()))
            )
    a, b = lvis_fixed_ap(gt, dets, backend="faster"), lvis_fixed_ap(gt, dets, backend="lvis")
    for key in ("AP", "AP50", "AP75", "APr", "APc", "APf"):
        assert not math.isnan(a[key]) and a[key] == pytest.approx(b[key], abs=1e-6), key
    assert 0.0 < a["AP"] < 1.0


def test_limit_per_class_keeps_the_best_of_each_category():
    dets = [_det(1, c, [0, 0, 1, 1], s) for c in (1, 2) for s in (0.1, 0.5, 0.9)]
    kept = limit_per_class(dets, 2)
    assert sorted((d["category_id"], d["score"]) for d in kept) == [(1, 0.5), (1, 0.9), (2, 0.5), (2, 0.9)]


def test_lvis_reader_requires_federated_fields(tmp_path):
    gt, _ = _lvis_gt()
    validate_lvis(gt, "ok")
    bad = json.loads(json.dumps(gt))
    bad["categories"][0].pop("frequency")
    with pytest.raises(DataError, match="frequency"):
        validate_lvis(bad, "x.json")
    bad = json.loads(json.dumps(gt))
    del bad["images"][0]["neg_category_ids"]
    with pytest.raises(DataError, match="neg_category_ids"):
        validate_lvis(bad, "x.json")
    gt["images"][0]["coco_url"] = "http://images.cocodataset.org/val2017/000000000001.jpg"
    gt["images"][1]["file_name"] = "other/2.jpg"
    (tmp_path / "lvis.json").write_text(json.dumps(gt))
    data = read_lvis(tmp_path / "lvis.json", tmp_path / "coco", check_images=False)
    assert data.image_paths == [
        str(tmp_path / "coco/val2017/000000000001.jpg"),
        str(tmp_path / "coco/other/2.jpg"),
    ]
    with pytest.raises(DataError, match="images not found"):
        read_lvis(tmp_path / "lvis.json", tmp_path / "coco")


# -- ODinW ----------------------------------------------------------------------------------------------------
def _odinw_coco():
    cats = [{"id": 0, "name": "animals", "supercategory": "none"},
            {"id": 1, "name": "cat", "supercategory": "animals"}, {"id": 2, "name": "dog", "supercategory": "animals"}]  # fmt: skip
    labels = {1: [1], 2: [1, 2], 3: [2], 4: [1], 5: [2], 6: []}
    images = [{"id": i, "file_name": f"{i}.jpg", "height": 50, "width": 50} for i in labels]
    anns = [{"id": 10 * i + k, "image_id": i, "category_id": c, "bbox": [1, 1, 10, 10]}
            for i, cs in labels.items() for k, c in enumerate(cs)]  # fmt: skip
    return {"images": images, "annotations": anns, "categories": cats}


def test_roboflow_background_category_is_dropped():
    coco = drop_background_category(_odinw_coco())
    assert [c["id"] for c in coco["categories"]] == [1, 2]
    used = _odinw_coco()
    used["annotations"][0]["category_id"] = 0
    assert [c["id"] for c in drop_background_category(used)["categories"]] == [0, 1, 2]  # used: kept


def test_glip_few_shot_draw_by_hand():
    coco = drop_background_category(_odinw_coco())
    # seed 0 keeps the sorted order: image 1 (cat), 2 (cat+dog; both still needed at 2 shots), 3 (dog) ... at
    # 1 shot: 1 gives the cat, 2 still needs nothing for cat but dog -> taken, 3 not needed
    assert glip_few_shot(coco, 1, 0) == [1, 2]
    assert glip_few_shot(coco, 2, 0) == [1, 2, 3]
    assert glip_few_shot(coco, 5, 0) == [1, 2, 3, 4, 5]  # image 6 has no box
    order = [1, 2, 3, 4, 5]
    random.Random(30).shuffle(order)  # GLIP: Python's random.Random(shuffle_seed).shuffle of the sorted ids
    need, expect = {1: 1, 2: 1}, []
    labels = {1: [1], 2: [1, 2], 3: [2], 4: [1], 5: [2]}
    for i in order:
        if any(need[c] > 0 for c in labels[i]):
            expect.append(i)
            for c in labels[i]:
                need[c] -= 1
    assert glip_few_shot(coco, 1, 30) == expect


def test_odinw_layout_and_valid_fallback(tmp_path):
    for name, splits in (("A", ("train", "valid", "test")), ("nested/B", ("train", "valid"))):
        for split in splits:
            (tmp_path / name / split).mkdir(parents=True)
            (tmp_path / name / split / "_annotations.coco.json").write_text(json.dumps(_odinw_coco()))
    found = find_odinw_datasets(tmp_path)
    assert [d.name for d in found] == ["A", "nested/B"]
    assert found[1].split_file("test").parent.name == "valid"  # no test split: GLIP evaluates on valid
    assert [d.name for d in find_odinw_datasets(tmp_path, ["B"])] == ["nested/B"]
    with pytest.raises(DataError, match="no ODinW dataset named 'C'"):
        find_odinw_datasets(tmp_path, ["C"])


def test_prompt_entries_and_name_cleaning():
    p = prompt_from_entries([{"prefix": "there are some ", "name": "holes", "suffix": " on the road"}, "car"])
    assert p.caption == "there are some holes on the road. car"
    assert [p.caption[s[0][0] : s[0][1]] for s in p.spans] == ["holes", "car"]
    assert clean_name("arctic_(type_of_shoe)") == "arctic" and clean_name("traffic_light") == "traffic light"
    with pytest.raises(DataError, match="entry #0"):
        prompt_from_entries([3])


# -- splits -----------------------------------------------------------------------------------------------------
def test_category_split_forms(tmp_path):
    split = ovcoco_split()
    assert sum(v == "base" for v in split.values()) == 48 and sum(v == "novel" for v in split.values()) == 17
    assert split["cat"] == "novel" and split["person"] == "base" and "traffic light" not in split
    assert parse_category_split({"a": "base", "b": "novel"}) == {"a": "base", "b": "novel"}
    coco = {"categories": [{"id": 1, "name": "a", "split": "base"}, {"id": 2, "name": "b", "split": "novel"}]}
    assert parse_category_split(coco) == {"a": "base", "b": "novel"}
    (tmp_path / "novel.txt").write_text("# novel\nb\n")
    assert read_category_split(tmp_path / "novel.txt") == {"b": "novel"}
    with pytest.raises(DataError, match="both base and novel"):
        parse_category_split({"base": ["a"], "novel": ["a"]})
    with pytest.raises(DataError, match="expected 'base' or 'novel'"):
        parse_category_split({"a": "seen"})


# -- grounding and OV-COCO with an oracle detector --------------------------------------------------------------
class Oracle:
    """Answers with given boxes: ``answers[(image, phrase index)] = [box, ...]`` best first."""

    def __init__(self, answers):
        self.answers = answers

    def predict(self, images, prompt=None, *, prompts=None, box_threshold=0.0, **_):
        out = []
        for k, image in enumerate(images):
            phrases = (prompts[k] if prompts is not None else prompt).phrases
            boxes, scores, labels = [], [], []
            for p in range(len(phrases)):
                for rank, box in enumerate(self.answers.get((image, p), [])):
                    boxes.append(box)
                    scores.append(0.9 - 0.1 * rank)
                    labels.append(p)
            out.append(
                Detections(
                    np.array(boxes).reshape(-1, 4),
                    scores,
                    labels,
                    [phrases[i] for i in labels],
                    None,
                    phrases,
                )
            )
        return out


def _flickr_file(tmp_path):
    caption = "a man and two dogs"
    images = [{"id": 0, "file_name": "0.jpg", "height": 100, "width": 100, "caption": caption,
               "tokens_positive_eval": [[[0, 5]], [[10, 18]]], "dataset_name": "flickr"}]  # fmt: skip
    anns = [{"id": 1, "image_id": 0, "bbox": [10, 10, 20, 40], "tokens_positive": [[0, 5]]},
            {"id": 2, "image_id": 0, "bbox": [50, 60, 20, 20], "tokens_positive": [[10, 18]]},
            {"id": 3, "image_id": 0, "bbox": [75, 60, 20, 20], "tokens_positive": [[10, 18]]}]  # fmt: skip
    (tmp_path / "final_flickr_separateGT_test.json").write_text(
        json.dumps({"images": images, "annotations": anns})
    )
    return read_mdetr_final(tmp_path / "final_flickr_separateGT_test.json", check_images=False)


def test_flickr_recall_any_and_merged_box(tmp_path):
    records = _flickr_file(tmp_path)
    image = records[0].file_name
    assert [len(b) for b in records[0].phrase_boxes] == [1, 2]
    perfect = Oracle({(image, 0): [[10, 10, 30, 50]], (image, 1): [[50, 60, 70, 80]]})
    assert run_flickr(perfect, records)[0] == {"R@1": 1.0, "R@5": 1.0, "R@10": 1.0}
    # one dog's box matches ANY-box but not the union of both dogs (IoU 400/900 < 0.5)
    assert run_flickr(perfect, records, protocol="merged")[0]["R@1"] == 0.5
    union = Oracle({(image, 0): [[10, 10, 30, 50]], (image, 1): [[0, 0, 5, 5], [50, 60, 95, 80]]})
    assert run_flickr(union, records, protocol="merged")[0] == {"R@1": 0.5, "R@5": 1.0, "R@10": 1.0}


def test_refcoco_accuracy(tmp_path):
    images = [{"id": i, "file_name": f"{i}.jpg", "caption": "the red cup on the left", "dataset_name": "refcoco"}
              for i in range(4)]  # fmt: skip
    anns = [
        {"id": i, "image_id": i, "bbox": [10, 10, 20, 20], "tokens_positive": [[4, 11]]} for i in range(4)
    ]
    (tmp_path / "final_refcoco_val.json").write_text(json.dumps({"images": images, "annotations": anns}))
    records = read_mdetr_final(tmp_path / "final_refcoco_val.json", check_images=False)
    assert records[0].phrase_spans == [((4, 11),)]
    right, wrong = [10, 10, 30, 30], [40, 40, 60, 60]
    answers = {(r.file_name, 0): [right] if k < 3 else [wrong, right] for k, r in enumerate(records)}
    metrics, table = run_refcoco(Oracle(answers), records, split="val")
    assert metrics == {"refcoco/P@1": 0.75, "refcoco/P@5": 1.0, "refcoco/P@10": 1.0}
    assert "| refcoco | val | 4 | 75.0 |" in table
    anns.append({"id": 9, "image_id": 0, "bbox": [0, 0, 1, 1], "tokens_positive": []})
    (tmp_path / "final_refcoco_val.json").write_text(json.dumps({"images": images, "annotations": anns}))
    with pytest.raises(DataError, match="exactly one"):
        read_mdetr_final(tmp_path / "final_refcoco_val.json", check_images=False)


def test_ovcoco_novel_base_all(tmp_path):
    names = ["person", "cat", "car", "dog", "traffic light"]  # base, novel, base, novel, not in the split
    cats = [{"id": i + 1, "name": n} for i, n in enumerate(names)]
    images = [{"id": i + 1, "file_name": f"{i}.jpg", "height": 100, "width": 100} for i in range(5)]
    anns = [{"id": i + 1, "image_id": i + 1, "category_id": i + 1, "bbox": [10, 10, 30, 30], "area": 900, "iscrowd": 0}
            for i in range(5)]  # fmt: skip
    gt = {"images": images, "annotations": anns, "categories": cats}
    box = [10, 10, 40, 40]
    # the prompt holds the 4 split categories in id order; the oracle finds only the base ones
    base_only = Oracle({(str(tmp_path / "0.jpg"), 0): [box], (str(tmp_path / "2.jpg"), 2): [box]})
    m, table = run_ovcoco(base_only, gt, tmp_path, ovcoco_split())
    assert (
        m["base/AP50"] == pytest.approx(1.0)
        and m["novel/AP50"] == 0.0
        and m["all/AP50"] == pytest.approx(0.5)
    )
    assert "2 base / 2 novel" in table
    everything = Oracle({(str(tmp_path / f"{i}.jpg"), i): [box] for i in range(4)})
    assert run_ovcoco(everything, gt, tmp_path, ovcoco_split())[0]["novel/AP50"] == pytest.approx(1.0)


def test_mode_overrides_apply_to_their_mode_only():
    from openglip.protocols.odinw import mode_overrides

    items = ["max_steps=5", "prompt.lr=0.01", "full.lr=1e-4", "train_min_sizes=(64,)"]
    assert mode_overrides(items, "prompt") == ["max_steps=5", "lr=0.01", "train_min_sizes=(64,)"]
    assert mode_overrides(items, "linear") == ["max_steps=5", "train_min_sizes=(64,)"]


def test_split_coco_metrics_agree_between_pycocotools_and_faster_coco_eval():
    from openglip.metrics import coco_detection_metrics

    rng = np.random.default_rng(1)
    cats = [{"id": i, "name": n} for i, n in enumerate(["person", "cat", "car", "dog"], start=1)]
    images = [{"id": i, "height": 200, "width": 200} for i in range(1, 7)]
    anns, dets = [], []
    for img in images:
        for _ in range(3):
            x, y, c = *rng.uniform(0, 150, size=2), int(rng.integers(1, 5))
            anns.append({"id": len(anns) + 1, "image_id": img["id"], "category_id": c, "bbox": [x, y, 40, 40],
                         "area": 1600, "iscrowd": 0})  # fmt: skip
            for _ in range(2):
                j = rng.normal(0, 6, size=2)
                dets.append({"image_id": img["id"], "category_id": c if rng.random() < 0.8 else int(rng.integers(1, 5)),
                             "bbox": [x + j[0], y + j[1], 40, 40], "score": float(rng.random())})  # fmt: skip
    gt = {"images": images, "annotations": anns, "categories": cats}
    splits = {"base": [1, 3], "novel": [2, 4]}
    a = coco_detection_metrics(gt, dets, splits=splits)
    b = coco_detection_metrics(gt, dets, splits=splits, backend="faster")
    for key in ("AP", "AP50", "base/AP50", "novel/AP50"):
        assert 0.0 < a[key] < 1.0 and a[key] == pytest.approx(b[key], abs=1e-6), key


def test_lvis_names_that_clean_alike_keep_their_own_phrases():
    """LVIS has categories whose cleaned names collide (bow_(weapon) / bow_(decorative_ribbons)); a prompt that
    merged them would shift every later category's index in the chunk."""
    from openglip.protocols.common import category_names, category_prompt

    cats = [
        {"id": 1, "name": "bow_(weapon)"},
        {"id": 2, "name": "hot_dog"},
        {"id": 3, "name": "bow_(decorative_ribbons)"},
    ]
    assert category_names(cats) == ["bow (weapon)", "hot dog", "bow (decorative ribbons)"]
    assert category_prompt(cats).phrases == ("bow (weapon)", "hot dog", "bow (decorative ribbons)")
