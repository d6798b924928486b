"""The evaluation engine: prompt/category mapping, base/novel splits, chunked vocabularies, grounding recall.

Tolerances: each pytest.approx compares a metric with a value worked out by hand. The metric code works in float64:
measured equal to those values on 1 and 2 threads, so approx's default rel=1e-6 only
absorbs float64 rounding, far below the smallest real change (one of COCO's 101 recall points moves AP by about
5e-3).
"""

from __future__ import annotations

import numpy as np
import pytest

from openglip import Detections
from openglip.engine.evaluate import GroundingItem, evaluate_detection, evaluate_grounding
from openglip.shapes.evaluation import shapes_eval_set


class OracleDetector:
    """Returns the ground truth of the shapes eval set as detections (labels index the prompt's phrases)."""

    def __init__(self, gt, drop_novel=False):
        self.by_image = {}
        names = {c["id"]: c["name"] for c in gt["categories"]}
        self.novel = {c["name"] for c in gt["categories"] if c.get("split") == "novel"}
        for ann in gt["annotations"]:
            self.by_image.setdefault(ann["image_id"], []).append((ann["bbox"], names[ann["category_id"]]))
        self.drop_novel = drop_novel
        self.calls = 0

    def predict(self, images, prompt, box_threshold=0.0):
        out = []
        for _ in images:
            self.calls += 1
            anns = [
                a for a in self.by_image.get(self.calls, []) if not (self.drop_novel and a[1] in self.novel)
            ]
            phrases = list(prompt.phrases)
            boxes = [[x, y, x + w, y + h] for (x, y, w, h), _ in anns]
            labels = [phrases.index(name) for _, name in anns]
            out.append(
                Detections(np.array(boxes).reshape(-1, 4), np.ones(len(anns)), labels, [n for _, n in anns])
            )
        return out


def test_detection_metrics_with_an_oracle_and_splits():
    gt, images, _ = shapes_eval_set(12, image_size=96)
    metrics, results = evaluate_detection(OracleDetector(gt), gt, images, batch_size=5)
    assert metrics["AP"] == pytest.approx(1.0) and metrics["base/AP50"] == pytest.approx(1.0)
    assert metrics["novel/AP50"] == pytest.approx(1.0)
    assert len(results) == len(gt["annotations"])
    blind, _ = evaluate_detection(OracleDetector(gt, drop_novel=True), gt, images, batch_size=5)
    assert blind["base/AP50"] == pytest.approx(1.0) and blind["novel/AP50"] == pytest.approx(0.0)


def test_vocabulary_over_256_tokens_is_evaluated_in_chunks(tiny_detector, chelsea):
    names = [f"long category name number {i} for testing" for i in range(80)]
    gt = {
        "images": [{"id": 1, "file_name": "x.png", "height": 300, "width": 451}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 80, "bbox": [10, 10, 50, 50], "area": 2500, "iscrowd": 0}
        ],
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(names)],
    }
    pp = tiny_detector.postprocessor
    saved = (pp.detections_per_image, pp.pre_nms_top_n)
    pp.detections_per_image, pp.pre_nms_top_n = 5000, 5000
    try:
        _, results = evaluate_detection(tiny_detector, gt, [chelsea])
    finally:
        pp.detections_per_image, pp.pre_nms_top_n = saved
    ids = {r["category_id"] for r in results}
    assert max(ids) > 60 and min(ids) < 10  # categories of the first and the last chunk are both detected
    assert all(r["phrase"] == names[r["category_id"] - 1] for r in results)


class RankingDetector:
    """Phrase 0: the right box ranked first. Phrase 1: the right box ranked third."""

    def predict(self, images, prompts, box_threshold=0.0):
        good, bad = [10, 10, 40, 40], [60, 60, 90, 90]
        boxes = [good, bad, bad, bad, good]
        scores = [0.9, 0.8, 0.7, 0.6, 0.5]
        labels = [0, 1, 1, 0, 1]
        return [Detections(np.array(boxes, float), scores, labels, ["a", "b", "b", "a", "b"]) for _ in images]


def test_grounding_recall_ranks_each_phrase_by_its_own_scores():
    item = GroundingItem(
        np.zeros((100, 100, 3), np.uint8),
        "a cat and a dog",
        [((2, 5),), ((12, 15),)],
        [np.array([[10.0, 10.0, 40.0, 40.0]]), np.array([[12.0, 11.0, 41.0, 40.0]])],
    )
    r = evaluate_grounding(RankingDetector(), [item, item])
    assert r["R@1"] == pytest.approx(0.5) and r["R@5"] == pytest.approx(1.0)
