"""``openglip train``: train or fine-tune a GLIP preset (or a run's config.json)."""

from __future__ import annotations

import dataclasses
import logging
import sys
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train or fine-tune a model",
        description="Train a preset (or a config JSON) on the shapes world or on COCO / ODVG / MDETR files. "
        "Extra key=value arguments override any ModelConfig or TrainConfig field, one of the task's config "
        "(task=...), or a built-in dataset's setting (shapes_image_size=96, shapes_epoch_size=500). Under torchrun every process "
        "trains a shard; with --resume a restarted run continues from its newest checkpoint.",
        epilog="example: openglip train glip_nano --data shapes --out runs/shapes max_steps=500 freeze=text min_size=128",
    )
    p.add_argument(
        "config", help="preset name (glip_nano, glip_t, ...) or a config JSON (e.g. a run's config.json)"
    )
    p.add_argument(
        "overrides",
        nargs="*",
        help="key=value overrides of ModelConfig/TrainConfig/task config fields (or shapes_<field>)",
    )
    p.add_argument(
        "--data", help='"shapes" or comma-separated annotation files (COCO .json, ODVG .jsonl, MDETR .json)'
    )
    p.add_argument("--val-data", help='evaluation data ("shapes" or a COCO .json)')
    p.add_argument("--out", help="run directory (checkpoints, metrics.jsonl, model.safetensors)")
    runs = p.add_mutually_exclusive_group()
    runs.add_argument(
        "--resume", action="store_true", help="continue from the newest checkpoint in the run directory"
    )
    runs.add_argument(
        "--overwrite", action="store_true", help="delete the run already in --out and start again"
    )
    p.add_argument("--max-steps", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..device import resolve_device
    from ..files import check_output_dir
    from ..metrics import format_table
    from ..run_config import load_run_config
    from ..tasks import train

    model_cfg, train_cfg, task_cfg = load_run_config(args.config, args.overrides)
    flags = {
        "data": args.data,
        "val_data": args.val_data,
        "out_dir": args.out,
        "max_steps": args.max_steps,
        "batch_size": args.batch_size,
    }
    train_cfg = dataclasses.replace(train_cfg, **{k: v for k, v in flags.items() if v is not None})
    resolve_device(args.device)
    check_output_dir(train_cfg.out_dir, "--out")  # before the data are read and the model is built
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    trainer = train(
        model_cfg, train_cfg, task_cfg, resume=args.resume, overwrite=args.overwrite, device=args.device
    )
    if trainer.dist.is_main:
        shown = {k: v for k, v in trainer.result.items() if isinstance(v, float) and k not in ("lr", "time")}
        print(format_table(shown, title=f"{model_cfg.name} after {trainer.step} steps"))
        print(f"weights: {Path(train_cfg.out_dir) / 'model.safetensors'}", file=sys.stderr)
    return 0
