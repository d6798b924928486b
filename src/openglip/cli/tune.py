"""``openglip tune``: prompt tuning, linear probing or full fine-tuning of a trained model on a task's data."""

from __future__ import annotations

import logging
import sys


def register(sub) -> None:
    from ..tasks.tune import MODES

    p = sub.add_parser(
        "tune",
        help="adapt a trained model to a task: prompt tuning, linear probe or full fine-tuning",
        description="Adapt a trained model to the categories of a COCO/ODVG detection file, with its fixed prompt "
        "(the category names in order). --mode prompt freezes the model and learns only an offset on the "
        "prompt's token features (written to RUN/prompt.safetensors, use it with --prompt-file); linear trains "
        "only the last layers; full trains everything (RUN/model.safetensors).",
        epilog="example: openglip tune --mode prompt --weights base.safetensors --data novel.coco.json --shots 5 "
        "--out runs/novel5",
    )
    p.add_argument("--mode", required=True, choices=list(MODES))
    p.add_argument("--weights", required=True, help="the trained model to adapt")
    p.add_argument("--data", required=True, help="COCO .json or ODVG .jsonl detection data of the task")
    p.add_argument("--image-root", default=None)
    p.add_argument("--shots", type=int, default=0, help="use only this many images per category (0: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the few-shot sample and of the training run")
    p.add_argument("--out", required=True, help="run directory")
    runs = p.add_mutually_exclusive_group()
    runs.add_argument("--resume", action="store_true")
    runs.add_argument("--overwrite", action="store_true", help="delete the run already in --out first")
    p.add_argument("--device", default=None)
    p.add_argument("overrides", nargs="*", help="key=value TrainConfig overrides (max_steps=..., lr=...)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..data.build import read_annotations
    from ..errors import UsageError
    from ..tasks.tune import few_shot, tune, tune_config

    if args.shots < 0:
        raise UsageError("--shots must be 0 (all images) or more")
    records, categories = read_annotations(args.data, args.image_root)
    if args.shots:
        records = few_shot(records, categories, args.shots, seed=args.seed)
    cfg = tune_config(args.mode, args.overrides, out_dir=args.out, seed=args.seed)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    out = tune(
        args.weights, records, categories, mode=args.mode, cfg=cfg, resume=args.resume,
        overwrite=args.overwrite, device=args.device,
    )  # fmt: skip
    print(f"{args.mode} tuning on {len(records)} images -> {out}", file=sys.stderr)
    return 0
