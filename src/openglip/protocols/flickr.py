"""Flickr30k Entities phrase grounding: Recall@1/5/10 on MDETR's ``final_flickr_*GT_{split}.json``.

Each caption is the prompt and its annotated phrases are the phrases (GLIP's and MDETR's protocol); a
phrase's detections are ranked by their score for that phrase. A phrase is recalled at k when one of its k
best boxes has IoU >= 0.5 with

* ``any``: any of its ground-truth boxes (the "ANY-box" protocol, MDETR's default and GLIP's number), or
* ``merged``: the union box of its ground-truth boxes (the "MERGED-box" protocol of Plummer et al.; the
  same as evaluating a ``mergedGT`` file).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..data.mdetr_final import GroundingEvalRecord, merge_boxes
from ..engine.evaluate import GroundingItem, evaluate_grounding
from ..errors import UsageError
from .common import fmt, markdown_table

PROTOCOLS = ("any", "merged")


def grounding_items(records: Sequence[GroundingEvalRecord], *, merged: bool = False):
    """The records as :class:`~openglip.engine.evaluate.GroundingItem` (boxes merged per phrase if asked)."""

    return [
        GroundingItem(
            r.file_name,
            r.caption,
            list(r.phrase_spans),
            [merge_boxes(b) if merged else b for b in r.phrase_boxes],
        )
        for r in records
    ]


def run_flickr(detector, records: Sequence[GroundingEvalRecord], *, protocol: str = "any",
               batch_size: int = 8) -> tuple[dict[str, float], str]:  # fmt: skip
    """Recall@1/5/10 of ``detector`` on the records: (metrics, Markdown table)."""

    if protocol not in PROTOCOLS:
        raise UsageError(f"--protocol must be one of {', '.join(PROTOCOLS)}, not {protocol!r}")
    metrics = evaluate_grounding(
        detector, grounding_items(records, merged=protocol == "merged"), batch_size=batch_size
    )
    phrases = sum(len(r.phrase_spans) for r in records)
    title = f"Flickr30k Entities recall (%), {protocol.upper()}-box protocol, {len(records)} captions, {phrases} phrases"
    keys = ["R@1", "R@5", "R@10"]
    return metrics, markdown_table(keys, [[fmt(metrics[k]) for k in keys]], title=title)
