"""Open-vocabulary evaluation on the shapes world's val split: COCO AP50 on all 48 categories, on the 40 base and
on the 8 novel ones (pycocotools), for (i) a pretrained student used zero-shot (RPN proposals + region embeddings
against the 48 class names, no detection training) and (ii) a transferred detector."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from tqdm import tqdm

from ..data.shapes import CATEGORIES, ShapesWorld, to_coco
from ..errors import UsageError
from ..metrics import coco_detection_metrics
from ..structures import Detections
from .concepts import TextEncoder
from .inference import ZeroShotDetector
from .weights import load_detector, load_rpn, load_student

Predictor = Callable[[list, list[str]], list[Detections]]
VAL_SEED = 1234


def shapes_val(num_images: int, *, image_size: int = 128, seed: int = VAL_SEED) -> tuple[dict, list]:
    """``(COCO ground truth with base/novel category splits, images)`` of the val split (40% novel objects)."""
    world = ShapesWorld(split="val", image_size=image_size, seed=seed)
    samples = [world.sample(i) for i in range(num_images)]
    return to_coco(samples, [f"{i:06d}.png" for i in range(num_images)]), [s.image for s in samples]


def evaluate_predictor(
    predict: Predictor,
    *,
    num_images: int = 200,
    image_size: int = 128,
    seed: int = VAL_SEED,
    batch_size: int = 16,
    class_names: Sequence[str] = CATEGORIES,
    extra_splits: dict[str, Sequence[str]] | None = None,
) -> dict[str, float]:
    """Box metrics of ``predict(images, class_names)`` on the val split.

    Args:
        extra_splits: more category splits to report, by category name (e.g. ``{"hexagon": [...]}``).

    Returns:
        pycocotools' keys (``AP``, ``AP50`` ...) plus ``base/AP50``, ``novel/AP50`` (and ``/AP``, ``/AP75``) and
        the same for every extra split.
    """
    gt, images = shapes_val(num_images, image_size=image_size, seed=seed)
    if list(class_names) != [c["name"] for c in gt["categories"]]:
        raise UsageError("class_names must be the 48 shapes categories in their order")
    results = []
    for start in tqdm(
        range(0, len(images), batch_size), desc="evaluate", unit="batch", disable=len(images) <= batch_size
    ):
        for k, dets in enumerate(predict(images[start : start + batch_size], list(class_names))):
            results.extend(dets.to_coco(start + k + 1))  # image ids start at 1; category id = label + 1
    splits: dict[str, list[int]] = {}
    for c in gt["categories"]:
        splits.setdefault(c["split"], []).append(c["id"])
    ids = {c["name"]: c["id"] for c in gt["categories"]}
    for name, members in (extra_splits or {}).items():
        unknown = sorted(set(members) - set(ids))
        if unknown or not members:
            raise UsageError(
                f"split {name!r}: not shapes categories {unknown}" if unknown else f"split {name!r} is empty"
            )
        splits[name] = [ids[m] for m in members]
    return coco_detection_metrics(gt, results, splits=splits)


def zero_shot_detector(
    student_path: str | os.PathLike, rpn_path: str | os.PathLike, *, text: TextEncoder | None = None
) -> ZeroShotDetector:
    """A pretrained student and an RPN as a :class:`ZeroShotDetector` (no detection training)."""
    student, cfg = load_student(student_path)
    return ZeroShotDetector(
        rpn=load_rpn(rpn_path), student=student, templates=cfg["templates"], encoder=cfg["encoder"], text=text
    )


def evaluate_zero_shot(
    student_path: str | os.PathLike, rpn_path: str | os.PathLike, *, text: TextEncoder | None = None, **kwargs
) -> dict[str, float]:
    """:func:`evaluate_predictor` of a pretrained student used zero-shot."""
    return evaluate_predictor(zero_shot_detector(student_path, rpn_path, text=text).predict, **kwargs)


def evaluate_detector(
    path: str | os.PathLike, *, text: TextEncoder | None = None, **kwargs
) -> dict[str, float]:
    """:func:`evaluate_predictor` of a transferred detector file."""
    return evaluate_predictor(load_detector(path, text=text).predict, **kwargs)


def summary(metrics: dict[str, float]) -> dict[str, float]:
    """The three numbers of an open-vocabulary table: novel, base and all AP50."""
    return {
        "novel AP50": metrics["novel/AP50"],
        "base AP50": metrics["base/AP50"],
        "all AP50": metrics["AP50"],
    }
