"""The shapes world's evaluation set: its val split drawn by a renderer of :data:`~.renderers.RENDERERS`, and
the box AP (all / base / novel) and grounding recall of a detector on it (``openglip evaluate --data shapes``)."""

from __future__ import annotations

from ..engine.evaluate import (
    GroundingItem,
    check_tuned_prompt,
    evaluate_detection,
    evaluate_grounding,
    evaluate_referring_segmentation,
)
from ..structures import Predictor
from .formats import to_coco
from .renderers import get_renderer

SHAPES_RENDERERS = ("shapes", "alt")  # the world's own renderer and openglip.shapes.render_alt's


def shapes_eval_set(
    num_images: int = 200,
    *,
    image_size: int = 128,
    seed: int = 1234,
    split: str = "val",
    renderer: str = "shapes",
):
    """The shapes world's evaluation images: (COCO gt dict, images, grounding items of the referring captions).

    ``renderer="alt"`` draws the same world with :class:`~openglip.shapes.render_alt.AltShapesWorld` (another
    look, canvases of varied size), to measure what a model learned beyond its training renderer's style.
    """
    world = get_renderer(renderer)(split=split, image_size=image_size, seed=seed)
    samples = [world.sample(i) for i in range(num_images)]
    gt = to_coco(samples, [f"{i:06d}.png" for i in range(num_images)])
    images = [s.image for s in samples]
    items = []
    for s in samples:
        cap = s.captions[0]
        items.append(
            GroundingItem(
                s.image,
                cap.caption,
                [tuple(tuple(t) for t in r["tokens_positive"]) for r in cap.regions],
                [s.boxes[r["box_index"]][None] for r in cap.regions],
                s.masks[cap.regions[0]["box_index"]],
            )
        )
    return gt, images, items


def evaluate_shapes(
    detector: Predictor,
    *,
    num_images: int = 200,
    image_size: int = 128,
    seed: int = 1234,
    tuned_prompt=None,
    renderer: str = "shapes",
) -> dict:
    """Box AP on all / base / novel categories and grounding recall on the shapes world's val split, drawn by
    ``renderer`` (``"shapes"``: the training renderer; ``"alt"``: a second, independent one).

    ``tuned_prompt``, when given, must be the one the detector uses for the categories' prompt (checked)."""
    gt, images, items = shapes_eval_set(num_images, image_size=image_size, seed=seed, renderer=renderer)
    check_tuned_prompt(
        tuned_prompt, [c["name"] for c in sorted(gt["categories"], key=lambda c: c["id"])], "shapes"
    )
    metrics, _ = evaluate_detection(detector, gt, images)
    metrics.update(evaluate_grounding(detector, items))
    if getattr(getattr(detector, "model", None), "mask_head", None) is not None:
        metrics.update(evaluate_referring_segmentation(detector, items))
    return metrics
