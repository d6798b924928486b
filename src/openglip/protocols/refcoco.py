"""RefCOCO / RefCOCO+ / RefCOCOg referring expression comprehension on MDETR's ``final_refcoco*_{split}.json``.

The expression is the prompt and its root noun phrase (the referent's ``tokens_positive``) the phrase; the
prediction is the box with the highest score for that phrase. Accuracy (precision@1) counts expressions
whose top-1 box has IoU >= 0.5 with the referent's box; P@5 and P@10 (any of the top k) are given as MDETR
does. (MDETR's own evaluator thresholds the generalised IoU, which is never larger than the IoU; the papers
state IoU, which is used here.)
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from ..data.mdetr_final import GroundingEvalRecord
from ..engine.evaluate import evaluate_grounding
from .common import fmt, markdown_table
from .flickr import grounding_items


def run_refcoco(detector, records: Sequence[GroundingEvalRecord], *, batch_size: int = 8,
                split: str = "") -> tuple[dict[str, float], str]:  # fmt: skip
    """Accuracy per dataset (``dataset_name``): ``{"refcoco/P@1": ..., ...}`` and a Markdown table."""

    groups: dict[str, list[GroundingEvalRecord]] = defaultdict(list)
    for r in records:
        groups[r.dataset_name or "refexp"].append(r)
    metrics, rows = {}, []
    for name in sorted(groups):
        recall = evaluate_grounding(detector, grounding_items(groups[name]), batch_size=batch_size)
        for k in (1, 5, 10):
            metrics[f"{name}/P@{k}"] = recall[f"R@{k}"]
        rows.append(
            [name, split or "-", str(len(groups[name])), *(fmt(recall[f"R@{k}"]) for k in (1, 5, 10))]
        )
    table = markdown_table(
        ["dataset", "split", "expressions", "accuracy (P@1)", "P@5", "P@10"], rows,
        title="Referring expression comprehension (%), top-1 box IoU >= 0.5",
    )  # fmt: skip
    return metrics, table
