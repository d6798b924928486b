"""``openglip label``: pseudo-label image-caption pairs with a teacher."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ..errors import EXIT_BAD_INPUT, UsageError


def _add_label(sub):
    p = sub.add_parser(
        "label",
        help="pseudo-label image-caption pairs with a teacher (GLIP self-training)",
        description="Extract the noun phrases of each caption, ground them with a teacher and write the boxes "
        "scoring above --threshold as ODVG grounding records. Resumable: a rerun skips pairs already written. "
        "Under torchrun every rank labels a shard and the shards are merged into --out. Reads caption shards "
        "and writes shards too (--out DIR/).",
        epilog="example: openglip label --images photos/ --captions captions.jsonl --teacher default "
        "--out pseudo.odvg.jsonl",
    )
    p.add_argument("--images", help="folder the captions file's image names are relative to (JSONL input)")
    p.add_argument(
        "--captions",
        required=True,
        help='JSONL of {"filename": ..., "caption": ...}, or a folder of caption shards (openglip data shard)',
    )
    p.add_argument(
        "--teacher", default="default", help='"default" (zero-shot, pretrained parts) or a checkpoint'
    )
    p.add_argument(
        "--out",
        required=True,
        help="output ODVG JSONL (appended to when it exists), or a folder (ending in /, or with --shards) to "
        "write shards of the labelled images into",
    )
    p.add_argument("--shards", action="store_true", help="write the output as shards into the --out folder")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per output shard (default 1000)")
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
    from ..data.shards import ShardSet, caption_pairs, is_shard_dir
    from ..device import resolve_device
    from ..distributed import cleanup, init_distributed
    from ..engine.label import label_pairs, labels_to_shards
    from ..files import check_output_file
    from ..images import load_image
    from ..prompts import get_extractor
    from ..teachers import load_teacher
    from ..teachers.zero_shot import WINDOWS_NOTE

    if args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    if not 0.0 <= args.threshold <= 1.0:
        raise UsageError("--threshold must be between 0 and 1")
    to_shards = args.shards or args.out.endswith(("/", os.sep))
    out = Path(args.out) / "labels.odvg.jsonl" if to_shards else Path(args.out)
    check_output_file(out, "--out")  # before the teacher is loaded and the images are labelled
    open_image, image_bytes = None, None
    if is_shard_dir(args.captions):  # caption shards: the images are inside them
        shards = ShardSet(args.captions)
        pairs, where = caption_pairs(shards)

        def open_image(name):
            return load_image(shards.open_image(where[name]), where=f"{args.captions}: {name}")

        def image_bytes(name):
            return shards.read(where[name])[1:]

    else:
        if args.images is None or not Path(args.images).is_dir():
            raise UsageError(f"--images {args.images}: not a directory (needed with a JSONL --captions file)")
        pairs, _ = read_captions(args.captions, args.images)
    if not pairs:
        raise UsageError(f"{args.captions}: no usable image-caption pairs")
    if image_bytes is None:

        def image_bytes(name):
            path = out.parent / name
            return path.read_bytes(), path.suffix.lstrip(".") or "jpg"

    dist = init_distributed(resolve_device(args.device))
    extractor = get_extractor(args.extractor)
    teacher = load_teacher(args.teacher, device=args.device)
    if getattr(teacher, "proposals", None) == "windows":  # the zero-shot default without YOLOv3-tiny
        print(f"openglip: note: {WINDOWS_NOTE}", file=sys.stderr)
    stats = label_pairs(
        pairs,
        teacher,
        out,
        extractor=extractor,
        threshold=args.threshold,
        batch_size=args.batch_size,
        dist=dist,
        open_image=open_image,
    )
    if dist.is_main:
        where_to = args.out
        if to_shards:
            manifest = labels_to_shards(out, args.out, image_bytes, shard_size=args.shard_size)
            where_to = f"{len(manifest['shards'])} shards in {args.out} (labels also in {out})"
        print(
            f"labelled {stats.labelled} pairs ({stats.boxes} boxes >= {args.threshold}), {stats.skipped_done} "
            f"already done, {stats.duplicates} listed twice, {stats.no_phrase} without a noun phrase, "
            f"{stats.unreadable} unreadable -> {where_to}",
            file=sys.stderr,
        )
    cleanup(dist)
    return EXIT_BAD_INPUT if stats.unreadable else 0


def register(sub) -> None:
    _add_label(sub)
