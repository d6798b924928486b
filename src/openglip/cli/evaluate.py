"""``openglip evaluate``: COCO AP / grounding recall of a model."""

from __future__ import annotations

import json
import sys

from ..errors import UsageError
from ..shapes.renderers import RENDERERS


def _add_evaluate(sub):
    p = sub.add_parser(
        "evaluate",
        help="COCO AP / grounding recall of a model",
        description="Evaluate a model: COCO box AP (AP, AP50, AP75, per base/novel split when the categories carry "
        "a 'split' field) on a COCO/ODVG detection file, phrase-grounding Recall@1/5/10 on a grounding file, or "
        "both on the built-in shapes world's val split.",
    )
    p.add_argument(
        "--weights", required=True, help="checkpoint (.safetensors from openglip train, or official .pth)"
    )
    p.add_argument("--preset", default=None, help="preset when the weights carry no config")
    p.add_argument("--data", default="shapes", help='"shapes" or an annotation file')
    p.add_argument("--image-root", default=None)
    p.add_argument("--images", type=int, default=200, help="shapes: number of val images")
    p.add_argument("--image-size", type=int, default=128, help="shapes: image side")
    p.add_argument(
        "--renderer",
        default="shapes",
        choices=list(RENDERERS),
        help="shapes: images from the training renderer; alt: the same world drawn by a second renderer",
    )
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--out", help="also write the metrics (and predictions) as JSON here")
    p.add_argument("--prompt-file", help="a tuned prompt (openglip tune --mode prompt) to apply")
    p.add_argument("--device", default=None)
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args) -> int:
    from ..api import load_model
    from ..data.resolve import builtin_dataset
    from ..device import resolve_device
    from ..engine.evaluate import evaluate_file, json_metrics
    from ..files import check_output_file, write_text_atomic
    from ..metrics import format_table

    if args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    resolve_device(args.device)
    if args.out:
        check_output_file(args.out, "--out")  # before the model runs over the data
    tuned = None
    if args.prompt_file:
        from ..prompt_tuning import load_tuned_prompt

        tuned = load_tuned_prompt(args.prompt_file)
    detector = load_model(args.preset, weights=args.weights, device=args.device) if args.preset else load_model(
        args.weights, device=args.device
    )  # fmt: skip
    if tuned is not None:
        detector.add_tuned_prompt(tuned)
    predictions: list = []
    builtin = builtin_dataset(args.data)
    if builtin is not None:
        metrics = builtin.evaluate_detector(
            detector,
            num_images=args.images,
            image_size=args.image_size,
            tuned_prompt=tuned,
            renderer=args.renderer,
        )
    else:
        metrics, predictions = evaluate_file(
            detector, args.data, args.image_root, args.batch_size, tuned_prompt=tuned
        )
    name = detector.config.name if hasattr(detector, "config") else type(detector).__name__
    print(format_table(metrics, title=f"{name} on {args.data}"))
    undefined = [k for k, v in metrics.items() if v != v]
    if undefined:
        print(
            f"n/a: undefined on this data (no ground truth for it): {', '.join(undefined)}"
            + ("; written as null" if args.out else "")
        )
    if args.out:
        # strict JSON: an undefined metric (no ground truth) is null, never NaN
        write_text_atomic(
            args.out,
            json.dumps({"metrics": json_metrics(metrics), "predictions": predictions}, allow_nan=False),
        )
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


def register(sub) -> None:
    _add_evaluate(sub)
