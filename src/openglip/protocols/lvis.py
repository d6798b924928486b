"""LVIS with fixed AP (Dave et al., "Evaluating Large-Vocabulary Object Detectors: The Devil is in the
Details", 2021), as GLIP reports LVIS MiniVal / val.

* The vocabulary is prompted in chunks of ``chunk_size`` names (GLIP: 40, ``TEST.CHUNKED_EVALUATION``), in
  category-id order, names GLIP-cleaned; each chunk's detections are post-processed on their own (NMS per
  phrase, at most ``per_chunk`` boxes, GLIP's ``DETECTIONS_PER_IMG`` 300) and the chunks concatenated.
* Fixed AP: instead of the usual 300-per-image cap, every category keeps its ``topk`` (10,000) best
  detections over the whole split and no per-image limit applies.
* The federated evaluation itself (negative / not-exhaustive labels, AP_r / AP_c / AP_f) is done by a
  maintained evaluator: ``faster-coco-eval``'s LVIS mode (default) or the ``lvis`` API (``backend="lvis"``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import sys
import tempfile
import types
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
from tqdm import tqdm

from ..data.lvis import LvisData
from ..errors import UsageError
from ..prompts import build_prompt
from .common import category_names, fmt, markdown_table

KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")
_FASTER_KEYS = {"AP": "AP_all", "AP50": "AP_50", "AP75": "AP_75", "APs": "AP_small", "APm": "AP_medium",
                "APl": "AP_large", "APr": "APr", "APc": "APc", "APf": "APf"}  # fmt: skip


def limit_per_class(results: Sequence[dict], topk: int = 10000) -> list[dict]:
    """The ``topk`` highest-scoring detections of every category over the whole split (fixed AP's cap)."""
    by_cat: dict[int, list[dict]] = defaultdict(list)
    for r in results:
        by_cat[int(r["category_id"])].append(r)
    out = []
    for cat in sorted(by_cat):
        out.extend(sorted(by_cat[cat], key=lambda r: -r["score"])[:topk])
    return out


def _nan_if_negative(v: float) -> float:
    return float("nan") if v < 0 else float(v)


def _faster_eval(gt: dict, results: list[dict]) -> dict[str, float]:
    try:
        from faster_coco_eval import COCO, COCOeval_faster
    except ImportError:
        raise UsageError("LVIS evaluation needs faster-coco-eval: pip install faster-coco-eval") from None
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        if results:
            coco_dt = coco_gt.loadRes([dict(r) for r in results])
        else:
            coco_dt = COCO()
            coco_dt.dataset = {"images": gt["images"], "categories": gt["categories"], "annotations": []}
            coco_dt.createIndex()
        ev = COCOeval_faster(coco_gt, coco_dt, "bbox", lvis_style=True, print_function=lambda *a, **k: None)
        # no per-image cap: larger than any image's number of detections
        per_image = defaultdict(int)
        for r in results:
            per_image[r["image_id"]] += 1
        ev.params.maxDets = [max([300, *per_image.values()]) + 1]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        stats = ev.stats_as_dict
    return {k: _nan_if_negative(stats[v]) for k, v in _FASTER_KEYS.items()}


class _NumpyWithFloat(types.ModuleType):
    """numpy as the lvis API (0.5.3, 2020) expects it: with the ``np.float`` alias NumPy 1.24 removed."""

    float = float

    def __getattr__(self, name):
        return getattr(np, name)


def _import_lvis_api():
    """The lvis API's classes, made to run on current NumPy without OpenCV.

    lvis 0.5.3 imports cv2 only for its visualiser (unused here): a placeholder module stands in while it is
    imported when OpenCV is not installed. Its evaluator's ``np.float`` is served by :class:`_NumpyWithFloat`,
    set on that module only.
    """
    stub = None
    if "cv2" not in sys.modules and importlib.util.find_spec("cv2") is None:
        stub = sys.modules["cv2"] = types.ModuleType("cv2")
    try:
        import lvis.eval
        from lvis import LVIS, LVISEval, LVISResults
    except ImportError as err:
        raise UsageError(
            f"the 'lvis' evaluator needs the lvis API (pip install --no-deps lvis): {err}"
        ) from None
    finally:
        if stub is not None and sys.modules.get("cv2") is stub:
            del sys.modules["cv2"]
    lvis.eval.np = _NumpyWithFloat("numpy")
    return LVIS, LVISEval, LVISResults


def _lvis_api_eval(gt: dict, results: list[dict]) -> dict[str, float]:
    LVIS, LVISEval, LVISResults = _import_lvis_api()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "gt.json")
        with open(path, "w") as f:
            json.dump(gt, f)
        with contextlib.redirect_stdout(io.StringIO()):
            lvis_gt = LVIS(path)
            dt = LVISResults(lvis_gt, [dict(r) for r in results], max_dets=-1)
            ev = LVISEval(lvis_gt, dt, iou_type="bbox")
            ev.params.max_dets = -1
            ev.run()
    return {k: _nan_if_negative(ev.results[k]) for k in KEYS}


def lvis_fixed_ap(
    gt: dict, results: Sequence[dict], *, topk: int = 10000, backend: str = "faster"
) -> dict[str, float]:
    """Fixed AP of COCO-style ``results`` on an LVIS ``gt`` dict.

    Args:
        gt: the LVIS annotation dict (federated fields and frequencies, see :mod:`openglip.data.lvis`).
        results: ``image_id``, ``category_id``, ``bbox`` (x, y, w, h), ``score`` per detection.
        topk: detections kept per category over the split (10,000 in Dave et al. and GLIP).
        backend: ``"faster"`` (faster-coco-eval's LVIS mode) or ``"lvis"`` (the lvis API).

    Returns:
        ``AP, AP50, AP75, APs, APm, APl, APr, APc, APf`` in [0, 1]; NaN where no category has ground truth.
    """
    kept = [
        {
            "image_id": r["image_id"],
            "category_id": r["category_id"],
            "bbox": list(r["bbox"]),
            "score": float(r["score"]),
        }
        for r in limit_per_class(results, topk)
    ]
    if backend == "faster":
        return _faster_eval(gt, kept)
    if backend == "lvis":
        return _lvis_api_eval(gt, kept)
    raise UsageError(f"unknown LVIS evaluator {backend!r}; use faster or lvis")


def detect_lvis(
    detector, data: LvisData, *, chunk_size: int = 40, per_chunk: int = 300, batch_size: int = 8
) -> list[dict]:
    """Detections on every image for the whole vocabulary, prompted ``chunk_size`` names at a time."""
    cats = data.categories
    chunks = [cats[i : i + chunk_size] for i in range(0, len(cats), chunk_size)]
    prompts = [build_prompt(category_names(chunk)) for chunk in chunks]
    # a GLIP Detector keeps per_chunk per prompt; RegionCLIP's released detector keeps its official 300 per image
    post = getattr(detector, "postprocessor", None)
    old = post.detections_per_image if post is not None else None
    if post is not None:
        post.detections_per_image = per_chunk
    results = []
    try:
        for start in tqdm(range(0, len(data.image_paths), batch_size), desc="lvis", unit="batch"):
            batch = data.image_paths[start : start + batch_size]
            infos = data.gt["images"][start : start + batch_size]
            for chunk, prompt in zip(chunks, prompts):
                ids = [c["id"] for c in chunk]
                for info, dets in zip(
                    infos, detector.predict(batch, prompt, box_threshold=0.0, batch_size=batch_size)
                ):
                    results.extend(dets.to_coco(info["id"], category_ids=ids))
    finally:
        if post is not None:
            post.detections_per_image = old
    return results


def run_lvis(detector, data: LvisData, *, chunk_size: int = 40, per_chunk: int = 300, topk: int = 10000,
             batch_size: int = 8, backend: str = "faster") -> tuple[dict[str, float], str]:  # fmt: skip
    """Detect and evaluate: (fixed-AP metrics, Markdown table)."""
    if chunk_size < 1:
        raise UsageError("--chunk-size must be at least 1")
    results = detect_lvis(detector, data, chunk_size=chunk_size, per_chunk=per_chunk, batch_size=batch_size)
    metrics = lvis_fixed_ap(data.gt, results, topk=topk, backend=backend)
    counts = defaultdict(int)
    for c in data.categories:
        counts[c["frequency"]] += 1
    title = (f"LVIS fixed AP (%), {len(data.image_paths)} images, {len(data.categories)} categories "
             f"(r/c/f: {counts['r']}/{counts['c']}/{counts['f']}), {chunk_size} names a prompt")  # fmt: skip
    table = markdown_table(list(KEYS), [[fmt(metrics[k]) for k in KEYS]], title=title)
    return metrics, table
