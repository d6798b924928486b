"""``openglip label``: pseudo-label image-caption pairs with a teacher."""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import EXIT_BAD_INPUT, UsageError


def _add_label(sub):
    p = sub.add_parser(
        "label",
        help="pseudo-label image-caption pairs with a teacher (GLIP self-training)",
        description="Extract the noun phrases of each caption, ground them with a teacher and write the boxes "
        "scoring above --threshold as ODVG grounding records. Resumable: a rerun skips pairs already written. "
        "Under torchrun every rank labels a shard and the shards are merged into --out.",
        epilog="example: openglip label --images photos/ --captions captions.jsonl --teacher default "
        "--out pseudo.odvg.jsonl",
    )
    p.add_argument("--images", required=True, help="folder the captions file's image names are relative to")
    p.add_argument("--captions", required=True, help='JSONL of {"filename": ..., "caption": ...}')
    p.add_argument(
        "--teacher", default="default", help='"default" (zero-shot, pretrained parts) or a checkpoint'
    )
    p.add_argument("--out", required=True, help="output ODVG JSONL (appended to when it exists)")
    p.add_argument(
        "--threshold", type=float, default=0.5, help="keep boxes scoring at least this (GLIP: 0.5)"
    )
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument(
        "--extractor", default="auto", choices=["auto", "rule", "spacy"], help="noun-phrase extractor"
    )
    p.add_argument("--device", default=None)
    p.set_defaults(func=cmd_label)


def cmd_label(args) -> int:
    from ..data.captions import read_captions
    from ..device import resolve_device
    from ..distributed import cleanup, init_distributed
    from ..engine.label import label_pairs
    from ..files import check_output_file
    from ..prompts import get_extractor
    from ..teachers import load_teacher

    if not Path(args.images).is_dir():
        raise UsageError(f"--images {args.images}: not a directory")
    if args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    if not 0.0 <= args.threshold <= 1.0:
        raise UsageError("--threshold must be between 0 and 1")
    check_output_file(args.out, "--out")  # before the teacher is loaded and the images are labelled
    pairs, _ = read_captions(args.captions, args.images)
    if not pairs:
        raise UsageError(f"{args.captions}: no usable image-caption pairs")
    dist = init_distributed(resolve_device(args.device))
    extractor = get_extractor(args.extractor)
    teacher = load_teacher(args.teacher, device=args.device)
    stats = label_pairs(
        pairs,
        teacher,
        args.out,
        extractor=extractor,
        threshold=args.threshold,
        batch_size=args.batch_size,
        dist=dist,
    )
    if dist.is_main:
        print(
            f"labelled {stats.labelled} pairs ({stats.boxes} boxes >= {args.threshold}), {stats.skipped_done} "
            f"already done, {stats.duplicates} listed twice, {stats.no_phrase} without a noun phrase, "
            f"{stats.unreadable} unreadable -> {args.out}",
            file=sys.stderr,
        )
    cleanup(dist)
    return EXIT_BAD_INPUT if stats.unreadable else 0


def register(sub) -> None:
    _add_label(sub)
