"""Open-vocabulary COCO (OV-COCO): novel / base / all AP50 with a base/novel category split.

The OVR-CNN / RegionCLIP protocol: the detector is prompted with every category of the split (48 base + 17
novel for COCO, the "generalized" setting: novel objects compete with base ones), the ground truth is
restricted to those categories, and AP50 is reported over the novel categories (the headline number), the
base ones and all of them. The split comes from a split file (:func:`~openglip.data.splits.read_category_split`;
the 48/17 COCO split ships as :data:`~openglip.protocols.common.OVCOCO_SPLIT`), or from ``"split"`` fields on the file's categories.
OV-LVIS reports AP_r: ``openglip benchmark lvis`` (rare categories are the novel ones there).
"""

from __future__ import annotations

from pathlib import Path

from .. import load_model
from ..checkpoint_format import checkpoint_kind
from ..data.splits import split_category_ids
from ..device import resolve_device
from ..errors import DataError
from ..metrics import coco_detection_metrics
from ..regionclip import load_detector
from ..regionclip.rcnn import OFFICIAL_KIND
from .common import category_prompt, detect_coco, fmt, markdown_table


class RegionCLIPAdapter:
    """A RegionCLIP detector (``openglip regionclip transfer``) behind the GLIP ``Detector.predict`` call the
    protocols make: the prompt's phrases become its class names."""

    def __init__(self, detector, batch_size: int = 8):
        self.detector = detector
        self.batch_size = batch_size

    def predict(self, images, prompt=None, *, box_threshold: float = 0.0, **_):
        dets = self.detector.predict(list(images), list(prompt.phrases), batch_size=self.batch_size)
        return [d[d.scores >= box_threshold] for d in dets]


def load_ov_detector(weights: str, model: str = "glip", *, device: str | None = None, batch_size: int = 8):
    """A GLIP-family :class:`~openglip.api.Detector` (``model="glip"``) or a RegionCLIP detector (``"regionclip"``);
    RegionCLIP's released detector converted by ``openglip regionclip convert`` opens with either."""
    if (
        model == "glip" or checkpoint_kind(weights) == OFFICIAL_KIND
    ):  # load_model opens a converted release too
        return load_model(weights, device=device)
    if model == "regionclip":
        return RegionCLIPAdapter(load_detector(weights).to(resolve_device(device)), batch_size)
    raise ValueError(f"model must be glip or regionclip, not {model!r}")


def restrict_to_split(gt: dict, split: dict[str, str], source: str = "the split file") -> dict:
    """``gt`` with only the categories named in ``split`` (matched case-insensitively) and their boxes.

    Args:
        source: where ``split`` came from, for the error (e.g. the default COCO split when no file was given).

    Raises:
        DataError: none of the split's categories is in ``gt``.
    """
    wanted = {n.lower() for n in split}
    cats = [c for c in gt["categories"] if c["name"].lower() in wanted]
    if not cats:
        raise DataError(f"none of the categories of {source} is in the annotation file")
    ids = {c["id"] for c in cats}
    anns = [a for a in gt["annotations"] if a["category_id"] in ids]
    return {**gt, "categories": cats, "annotations": anns}


def run_ovcoco(detector, gt: dict, image_root: str | Path, split: dict[str, str], *, batch_size: int = 8,
               split_source: str = "the split file (wrong split file?)") -> tuple[dict[str, float], str]:  # fmt: skip
    """AP50 on novel / base / all categories of ``split`` (``split_source`` names it in errors): (metrics,
    Markdown table)."""
    lowered = {n.lower(): s for n, s in split.items()}
    gt = restrict_to_split(gt, split, split_source)
    cats = sorted(gt["categories"], key=lambda c: c["id"])
    split_ids = split_category_ids([{**c, "name": c["name"].lower()} for c in cats], lowered)
    images = [str(Path(image_root) / im["file_name"]) for im in gt["images"]]
    results = detect_coco(detector, gt, images, category_prompt(cats), batch_size=batch_size, desc="ovcoco")
    m = coco_detection_metrics(gt, results, splits=split_ids)
    metrics = {
        "novel/AP50": m["novel/AP50"],
        "base/AP50": m["base/AP50"],
        "all/AP50": m["AP50"],
        "all/AP": m["AP"],
    }
    title = (f"Open-vocabulary detection AP50 (%), {len(split_ids['base'])} base / {len(split_ids['novel'])} novel "
             f"categories, {len(images)} images")  # fmt: skip
    keys = list(metrics)
    return metrics, markdown_table(
        ["novel AP50", "base AP50", "all AP50", "all AP"], [[fmt(metrics[k]) for k in keys]], title=title
    )
