"""``openglip vqa``: answer a question about images with a model trained with ``task=vqa``."""

from __future__ import annotations

import json
import sys


def register(sub) -> None:
    p = sub.add_parser(
        "vqa",
        help="answer a question about images (GLIPv2 VQA head)",
        description="Answer one question about each image with the VQA head of a model trained with "
        "`openglip train ... task=vqa`.",
        epilog='example: openglip vqa photos/ --question "what colour is the star?" --weights runs/vqa/model.safetensors',
    )
    p.add_argument("inputs", nargs="+", help="image files and/or directories (searched recursively)")
    p.add_argument("--question", required=True, help="the question, e.g. 'how many hexagons are there?'")
    p.add_argument("--weights", required=True, help="a model.safetensors trained with task=vqa")
    p.add_argument("--out", help="write [{file_name, question, answer}] JSON here (else one line per image)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..api import load_model
    from ..errors import UsageError
    from ..files import write_text_atomic
    from ..images import find_images
    from ..vl_inference import check_question

    if args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    paths = find_images(args.inputs)
    if not paths:
        raise UsageError(f"no images found in {' '.join(args.inputs)}")
    detector = load_model(args.weights, device=args.device)
    question = check_question(args.question, detector.model.max_text_len)
    answers = detector.answer([str(p) for p in paths], question, batch_size=args.batch_size)
    rows = [{"file_name": str(p), "question": question, "answer": a} for p, a in zip(paths, answers)]
    if args.out:
        write_text_atomic(args.out, json.dumps(rows, indent=1))
        print(f"wrote {len(rows)} answers to {args.out}", file=sys.stderr)
    else:
        for r in rows:
            print(f"{r['file_name']}\t{r['answer']}")
    return 0
