"""Tests for openglip.metrics (COCO AP wrappers, grounding recall, referring mIoU).

Tolerances: each pytest.approx compares a metric with a value worked out by hand. The metric code works in float64:
measured at most 3.3e-16 from those values on 1 and 2 threads, so approx's default rel=1e-6 and the abs=1e-6 bars
only absorb float64 rounding, far below the smallest real change (one of COCO's 101 recall points moves AP by about
5e-3).
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest

from openglip.metrics import (
    coco_detection_metrics,
    format_table,
    grounding_recall,
    mask_iou,
    referring_miou,
)

pytest.importorskip("pycocotools")


def _ann(ann_id: int, image_id: int, cat: int, bbox: list[float]) -> dict:
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": cat,
        "bbox": bbox,
        "area": bbox[2] * bbox[3],
        "iscrowd": 0,
    }


def _small_coco() -> dict:
    """3 images, 3 categories, boxes spanning small (<32^2), medium and large (>96^2) areas."""
    images = [{"id": i, "width": 640, "height": 480, "file_name": f"{i}.jpg"} for i in (1, 2, 3)]
    cats = [{"id": c, "name": n} for c, n in ((1, "cat"), (2, "dog"), (3, "zebra"))]
    anns = [
        _ann(1, 1, 1, [10, 10, 20, 20]),  # small (400)
        _ann(2, 1, 2, [100, 100, 50, 60]),  # medium (3000)
        _ann(3, 2, 3, [200, 50, 150, 120]),  # large (18000)
        _ann(4, 2, 1, [20, 300, 80, 70]),  # medium (5600)
        _ann(5, 3, 2, [300, 200, 120, 110]),  # large (13200)
        _ann(6, 3, 3, [5, 5, 25, 30]),  # small (750)
    ]
    return {"images": images, "annotations": anns, "categories": cats}


def _perfect(gt: dict, cats: set[int] | None = None) -> list[dict]:
    return [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "bbox": list(a["bbox"]),
            "score": 1.0,
            "phrase": "an extra key that must be ignored",
        }
        for a in gt["annotations"]
        if cats is None or a["category_id"] in cats
    ]


def _one_cat(gt_boxes: list[list[float]]) -> dict:
    return {
        "images": [{"id": 1, "width": 400, "height": 400}],
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": [_ann(i + 1, 1, 1, b) for i, b in enumerate(gt_boxes)],
    }


def _dets(boxes_scores: list[tuple[list[float], float]]) -> list[dict]:
    return [{"image_id": 1, "category_id": 1, "bbox": b, "score": s} for b, s in boxes_scores]


GT_A = [10.0, 10.0, 40.0, 40.0]
GT_B = [100.0, 100.0, 40.0, 40.0]
FAR = [300.0, 300.0, 40.0, 40.0]  # IoU 0 with both GT boxes


def test_perfect_predictions_give_ap_one() -> None:
    gt = _small_coco()
    gt_before = copy.deepcopy(gt)
    m = coco_detection_metrics(gt, _perfect(gt), splits={"base": [1, 2], "novel": [3]})
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100"):
        assert m[key] == pytest.approx(1.0), key
    for key in ("base/AP", "base/AP50", "base/AP75", "novel/AP", "novel/AP50", "novel/AP75"):
        assert m[key] == pytest.approx(1.0), key
    assert gt == gt_before  # input is not mutated


def test_hand_computed_ap_false_positive_first() -> None:
    # 2 GT, detections by score: FP (0.9), TP (0.8), TP (0.7).
    # precision = [0/1, 1/2, 2/3], recall = [0, 0.5, 1.0]
    # envelope (running max from the right) = [2/3, 2/3, 2/3]
    # every one of the 101 recall thresholds 0.00..1.00 maps to precision 2/3  ->  AP50 = 2/3
    gt = _one_cat([GT_A, GT_B])
    m = coco_detection_metrics(gt, _dets([(FAR, 0.9), (GT_A, 0.8), (GT_B, 0.7)]))
    assert m["AP50"] == pytest.approx(2 / 3, abs=1e-6)
    assert m["AP"] == pytest.approx(2 / 3, abs=1e-6)  # exact boxes: same at every IoU threshold


def test_hand_computed_ap_envelope() -> None:
    # 2 GT, detections: TP (0.9), FP (0.8), TP (0.7).
    # precision = [1, 1/2, 2/3], recall = [0.5, 0.5, 1.0], envelope = [1, 2/3, 2/3]
    # recall thresholds 0.00..0.50 (51 points) -> 1.0, 0.51..1.00 (50 points) -> 2/3
    # AP50 = (51 * 1 + 50 * 2/3) / 101
    gt = _one_cat([GT_A, GT_B])
    m = coco_detection_metrics(gt, _dets([(GT_A, 0.9), (FAR, 0.8), (GT_B, 0.7)]))
    assert m["AP50"] == pytest.approx((51 + 50 * 2 / 3) / 101, abs=1e-6)


def test_hand_computed_ap_missed_gt() -> None:
    # 2 GT, detections: FP (0.9), TP (0.8); GT_B is never detected so recall caps at 0.5.
    # precision = [0, 1/2], recall = [0, 0.5], envelope = [1/2, 1/2]
    # recall thresholds 0.00..0.50 (51 points) -> 0.5, 0.51..1.00 (50 points) -> 0
    # AP50 = 51 * 0.5 / 101 = 25.5 / 101 ~= 0.252475
    gt = _one_cat([GT_A, GT_B])
    m = coco_detection_metrics(gt, _dets([(FAR, 0.9), (GT_A, 0.8)]))
    assert m["AP50"] == pytest.approx(25.5 / 101, abs=1e-6)
    assert m["AR100"] == pytest.approx(0.5)
    # all GT boxes are 40x40 = 1600 (medium): no small / large GT -> nan, not -1
    assert math.isnan(m["APs"]) and math.isnan(m["APl"])


def test_iou_06_passes_ap50_fails_ap75() -> None:
    # 100x100 box shifted by 25 px: IoU = 75*100 / (2*100*100 - 75*100) = 0.6
    gt = _one_cat([[0.0, 0.0, 100.0, 100.0]])
    m = coco_detection_metrics(gt, _dets([([25.0, 0.0, 100.0, 100.0], 1.0)]))
    assert m["AP50"] == pytest.approx(1.0)
    assert m["AP75"] == 0.0


def test_split_metrics_base_perfect_novel_missed() -> None:
    gt = _small_coco()
    m = coco_detection_metrics(gt, _perfect(gt, cats={1, 2}), splits={"base": [1, 2], "novel": [3]})
    assert m["base/AP50"] == pytest.approx(1.0)
    assert m["novel/AP50"] == 0.0
    assert 0.0 < m["AP50"] < 1.0
    assert m["AP50"] == pytest.approx(2 / 3)  # mean of per-category AP: (1 + 1 + 0) / 3


def test_split_without_gt_is_nan() -> None:
    gt = _small_coco()
    m = coco_detection_metrics(gt, _perfect(gt), splits={"unseen": [99], "empty": []})
    assert all(math.isnan(m[f"{s}/{k}"]) for s in ("unseen", "empty") for k in ("AP", "AP50", "AP75"))


def test_images_without_predictions_are_misses() -> None:
    gt = _small_coco()
    preds = [p for p in _perfect(gt) if p["image_id"] != 3]
    m = coco_detection_metrics(gt, preds)
    assert m["AR100"] < 1.0
    assert m["AP50"] < 1.0


def test_empty_predictions_give_zero() -> None:
    gt = _small_coco()
    m = coco_detection_metrics(gt, [], splits={"base": [1, 2], "novel": [3]})
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100", "base/AP", "novel/AP50"):
        assert m[key] == 0.0, key


def test_unknown_image_id_raises() -> None:
    gt = _small_coco()
    preds = [*_perfect(gt), {"image_id": 999, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.5}]
    with pytest.raises(ValueError, match="999"):
        coco_detection_metrics(gt, preds)


def test_bad_iou_type_raises() -> None:
    with pytest.raises(ValueError):
        coco_detection_metrics(_small_coco(), [], iou_type="keypoints")


def test_quiet_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    gt = _small_coco()
    coco_detection_metrics(gt, _perfect(gt))
    assert capsys.readouterr().out == ""
    coco_detection_metrics(gt, _perfect(gt), verbose=True)
    assert "Average Precision" in capsys.readouterr().out


def test_segm_perfect_masks() -> None:
    from pycocotools import mask as mask_utils

    h, w = 64, 80
    shapes = [(1, 1, (slice(5, 15), slice(5, 25))), (2, 1, (slice(20, 60), slice(10, 70)))]
    shapes.append((3, 2, (slice(0, 30), slice(40, 80))))
    images = [{"id": 1, "width": w, "height": h}, {"id": 2, "width": w, "height": h}]
    anns, preds = [], []
    for ann_id, image_id, sl in shapes:
        m = np.zeros((h, w), dtype=np.uint8)
        m[sl] = 1
        rle = mask_utils.encode(np.asfortranarray(m))
        rle_json = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
        bbox = [float(v) for v in mask_utils.toBbox(rle)]
        anns.append(
            {
                "id": ann_id,
                "image_id": image_id,
                "category_id": 1,
                "segmentation": rle_json,
                "area": float(mask_utils.area(rle)),
                "bbox": bbox,
                "iscrowd": 0,
            }
        )
        preds.append(
            {
                "image_id": image_id,
                "category_id": 1,
                "segmentation": dict(rle_json),
                "bbox": bbox,
                "score": 0.9,
                "phrase": "blob",
            }
        )
    gt = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "blob"}]}
    m = coco_detection_metrics(gt, preds, iou_type="segm")
    assert m["AP"] == pytest.approx(1.0)
    assert m["AP50"] == pytest.approx(1.0) and m["AP75"] == pytest.approx(1.0)
    # masks shifted down by half their height (clipped at the border) have IoU < 0.5 -> AP50 = 0
    shifted = []
    for p, (_, _, (rows, cols)) in zip(preds, shapes):
        m2 = np.zeros((h, w), dtype=np.uint8)
        half = (rows.stop - rows.start) // 2
        m2[rows.start + half : rows.stop + half, cols] = 1
        rle = mask_utils.encode(np.asfortranarray(m2))
        shifted.append({**p, "segmentation": rle})  # bytes counts are accepted too
    assert coco_detection_metrics(gt, shifted, iou_type="segm")["AP50"] == 0.0


def test_faster_backend_matches_hand_value() -> None:
    pytest.importorskip("faster_coco_eval")
    gt = _one_cat([GT_A, GT_B])
    m = coco_detection_metrics(gt, _dets([(FAR, 0.9), (GT_A, 0.8)]), backend="faster")
    assert m["AP50"] == pytest.approx(25.5 / 101, abs=1e-6)
    assert coco_detection_metrics(gt, [], backend="faster")["AP50"] == 0.0


def _xyxy(x: float, y: float, size: float = 10.0) -> list[float]:
    return [x, y, x + size, y + size]


def test_grounding_recall_ranks() -> None:
    target = np.array([_xyxy(0, 0)])
    decoys = [_xyxy(100 + 20 * i, 100) for i in range(10)]  # IoU 0 with target

    def ranked(rank: int | None) -> np.ndarray:
        boxes = list(decoys)
        if rank is not None:
            boxes[rank - 1] = _xyxy(1, 0)  # IoU 9*10 / (2*100 - 90) = 0.818 with target
        return np.array(boxes)

    gts = [target, target, target, target]
    preds = [ranked(1), ranked(3), ranked(7), ranked(None)]
    r = grounding_recall(gts, preds)
    assert r == pytest.approx({"R@1": 0.25, "R@5": 0.5, "R@10": 0.75})


def test_grounding_recall_any_gt_box_and_edge_cases() -> None:
    gts = [
        np.array([_xyxy(0, 0), _xyxy(50, 50)]),  # matched through its second GT box
        np.array([_xyxy(0, 0)]),  # no predictions -> miss
        np.zeros((0, 4)),  # no GT -> skipped
    ]
    preds = [np.array([_xyxy(50, 50)]), np.zeros((0, 4)), np.array([_xyxy(0, 0)])]
    assert grounding_recall(gts, preds, ks=(1,)) == {"R@1": 0.5}
    # IoU 0.818 fails a 0.9 threshold
    assert grounding_recall(
        [np.array([_xyxy(0, 0)])], [np.array([_xyxy(1, 0)])], ks=(1,), iou_threshold=0.9
    ) == {"R@1": 0.0}
    with pytest.raises(ValueError):
        grounding_recall(gts, preds[:2])


def test_mask_iou_known_values() -> None:
    pred = np.array([[1, 1, 0], [0, 0, 0]], dtype=bool)
    gt = np.array([[0, 1, 1], [0, 0, 0]], dtype=bool)
    assert mask_iou(pred, gt) == pytest.approx(1 / 3)  # inter 1, union 3
    empty = np.zeros((2, 3), dtype=bool)
    assert mask_iou(empty, empty) == 1.0
    assert mask_iou(pred, empty) == 0.0
    with pytest.raises(ValueError):
        mask_iou(pred, np.zeros((3, 3), dtype=bool))


def test_referring_miou_known_values() -> None:
    pred1 = np.array([[1, 1, 0], [0, 0, 0]], dtype=bool)
    gt1 = np.array([[0, 1, 1], [0, 0, 0]], dtype=bool)  # inter 1, union 3
    full = np.ones((2, 2), dtype=bool)  # inter 4, union 4
    r = referring_miou([pred1, full], [gt1, full])
    assert r["mIoU"] == pytest.approx((1 / 3 + 1) / 2)
    assert r["oIoU"] == pytest.approx(5 / 7)


def test_format_table() -> None:
    text = format_table({"AP": 0.5, "novel/AP": float("nan"), "AR100": 1}, title="COCO val")
    lines = text.splitlines()
    assert lines[0] == "COCO val"
    assert any(line.startswith("AP ") and line.endswith("0.500") for line in lines)
    assert any(line.startswith("novel/AP") and line.endswith("n/a") for line in lines)
    assert any(line.endswith("1.000") for line in lines)
    assert len({len(line) for line in lines[1:]}) == 1  # columns aligned
