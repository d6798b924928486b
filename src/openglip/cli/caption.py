"""``openglip caption``: describe images (and ground the description) with a model trained with
``task=caption``."""

from __future__ import annotations

import json
import sys


def register(sub) -> None:
    p = sub.add_parser(
        "caption",
        help="caption images; --grounded also boxes the caption's noun phrases (GLIPv2)",
        description="Write a caption for each image with the caption head of a model trained with "
        "`openglip train ... task=caption`; with --grounded the caption's noun phrases are grounded by the same "
        "model's detection head.",
        epilog="example: openglip caption photos/ --weights runs/caption/model.safetensors --grounded --out caps.json",
    )
    p.add_argument("inputs", nargs="+", help="image files and/or directories (searched recursively)")
    p.add_argument("--weights", required=True, help="a model.safetensors trained with task=caption")
    p.add_argument("--grounded", action="store_true", help="also ground the caption's noun phrases (boxes)")
    p.add_argument("--beam-size", type=int, default=1, help="1: greedy decoding (default), more: beam search")
    p.add_argument("--max-length", type=int, default=32, help="most word pieces per caption")
    p.add_argument(
        "--no-repeat-ngram-size",
        type=int,
        default=3,
        help="never repeat an n-gram of this many word pieces (default 3; 0 allows repeats)",
    )
    p.add_argument("--threshold", type=float, default=0.3, help="--grounded: minimum box score")
    p.add_argument(
        "--extractor", default="auto", choices=("auto", "rule", "spacy"), help="noun-phrase extractor"
    )
    p.add_argument("--out", help="write [{file_name, caption, boxes?}] JSON here (else one line per image)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..api import load_model
    from ..errors import UsageError
    from ..files import write_text_atomic
    from ..images import find_images

    if args.beam_size < 1 or args.max_length < 1 or args.batch_size < 1:
        raise UsageError("--beam-size, --max-length and --batch-size must be at least 1")
    if not 0.0 <= args.threshold <= 1.0:
        raise UsageError("--threshold must be between 0 and 1")
    paths = find_images(args.inputs)
    if not paths:
        raise UsageError(f"no images found in {' '.join(args.inputs)}")
    detector = load_model(args.weights, device=args.device)
    outputs = detector.caption(
        [str(p) for p in paths], grounded=args.grounded, beam_size=args.beam_size, max_length=args.max_length,
        box_threshold=args.threshold, extractor=args.extractor, batch_size=args.batch_size,
        no_repeat_ngram_size=args.no_repeat_ngram_size,
    )  # fmt: skip
    rows = []
    for path, out in zip(paths, outputs):
        if args.grounded:
            boxes = [{"phrase": str(ph), "score": float(s), "bbox": [float(v) for v in b]}
                     for ph, s, b in zip(out.detections.phrases, out.detections.scores, out.detections.xyxy)]  # fmt: skip
            rows.append({"file_name": str(path), "caption": out.caption, "boxes": boxes})
        else:
            rows.append({"file_name": str(path), "caption": out})
    if args.out:
        write_text_atomic(args.out, json.dumps(rows, indent=1))
        print(f"wrote {len(rows)} captions to {args.out}", file=sys.stderr)
    else:
        for r in rows:
            extra = "".join(
                f"\t{b['phrase']} {b['score']:.2f} {[round(v, 1) for v in b['bbox']]}"
                for b in r.get("boxes", [])
            )
            print(f"{r['file_name']}\t{r['caption']}{extra}")
    return 0
