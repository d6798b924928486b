"""``openglip train`` and ``openglip tune``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..errors import UsageError


def resolve_run_configs(config: str, overrides: list[str], **explicit):
    """(ModelConfig, TrainConfig) from a preset name or a config JSON, then ``key=value`` overrides (each key
    goes to whichever config has it), then explicit flags."""
    import dataclasses

    from ..config import ModelConfig, TrainConfig, apply_overrides, config_from_dict, get_preset

    path = Path(config)
    if path.suffix == ".json" or path.exists():
        if not path.exists():
            raise UsageError(f"config file not found: {path}")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise UsageError(f"{path}: not valid JSON ({err})") from None
        model_cfg = (
            config_from_dict(data["model"]) if "model" in data else get_preset(data.get("preset", "glip_t"))
        )
        train_cfg = TrainConfig(
            **{k: tuple(v) if isinstance(v, list) else v for k, v in data.get("train", {}).items()}
        )
    else:
        model_cfg, train_cfg = get_preset(config), TrainConfig()
    model_keys = {f.name for f in dataclasses.fields(ModelConfig)}
    train_keys = {f.name for f in dataclasses.fields(TrainConfig)}
    m_over, t_over = [], []
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if key in model_keys:
            m_over.append(item)
        elif key in train_keys:
            t_over.append(item)
        else:
            raise UsageError(f"unknown config key {key!r} in override {item!r} (see openglip train --help)")
    model_cfg = apply_overrides(model_cfg, m_over)
    train_cfg = apply_overrides(train_cfg, t_over)
    changes = {k: v for k, v in explicit.items() if v is not None}
    return model_cfg, dataclasses.replace(train_cfg, **changes)


def _add_train(sub):
    p = sub.add_parser(
        "train",
        help="train or fine-tune a model",
        description="Train a preset (or a config JSON) on the shapes world or on COCO / ODVG / MDETR files. "
        "Extra key=value arguments override any ModelConfig or TrainConfig field. Under torchrun every process "
        "trains a shard; with --resume a restarted run continues from its newest checkpoint.",
        epilog="example: openglip train glip_nano --data shapes --out runs/shapes max_steps=500 freeze=text min_size=128",
    )
    p.add_argument(
        "config", help="preset name (glip_nano, glip_t, ...) or a config JSON (e.g. a run's config.json)"
    )
    p.add_argument("overrides", nargs="*", help="key=value overrides of ModelConfig/TrainConfig fields")
    p.add_argument(
        "--data", help='"shapes" or comma-separated annotation files (COCO .json, ODVG .jsonl, MDETR .json)'
    )
    p.add_argument("--val-data", help='evaluation data ("shapes" or a COCO .json)')
    p.add_argument("--out", help="run directory (checkpoints, metrics.jsonl, model.safetensors)")
    p.add_argument(
        "--resume", action="store_true", help="continue from the newest checkpoint in the run directory"
    )
    p.add_argument("--max-steps", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.set_defaults(func=cmd_train)


def _evaluation_fn(val_data: str | None, train_cfg):
    if not val_data:
        return None

    def evaluate(model, step):
        from ..api import Detector
        from ..engine.evaluate import evaluate_file, evaluate_shapes

        detector = Detector(model, device=next(model.parameters()).device)
        if val_data == "shapes":
            return evaluate_shapes(
                detector, num_images=train_cfg.eval_images, image_size=train_cfg.shapes_image_size
            )
        return evaluate_file(detector, val_data, train_cfg.image_root, batch_size=8)[0]

    return evaluate


def cmd_train(args) -> int:
    import logging

    from ..data.build import build_train_dataset
    from ..engine.trainer import Trainer

    model_cfg, train_cfg = resolve_run_configs(
        args.config,
        args.overrides,
        data=args.data,
        val_data=args.val_data,
        out_dir=args.out,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    dataset = build_train_dataset(model_cfg, train_cfg)
    trainer = Trainer(
        model_cfg,
        train_cfg,
        dataset,
        resume=args.resume,
        device=args.device,
        evaluate_fn=_evaluation_fn(train_cfg.val_data, train_cfg),
    )
    result = trainer.fit()
    if trainer.dist.is_main:
        from ..metrics import format_table

        shown = {k: v for k, v in result.items() if isinstance(v, float) and k not in ("lr", "time")}
        print(format_table(shown, title=f"{model_cfg.name} after {trainer.step} steps"))
        print(f"weights: {Path(train_cfg.out_dir) / 'model.safetensors'}")
    return 0


def _add_tune(sub):
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
    p.add_argument("--mode", required=True, choices=["prompt", "linear", "full"])
    p.add_argument("--weights", required=True, help="the trained model to adapt")
    p.add_argument("--data", required=True, help="COCO .json or ODVG .jsonl detection data of the task")
    p.add_argument("--image-root", default=None)
    p.add_argument("--shots", type=int, default=0, help="use only this many images per category (0: all)")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--device", default=None)
    p.add_argument("overrides", nargs="*", help="key=value TrainConfig overrides (max_steps=..., lr=...)")
    p.set_defaults(func=cmd_tune)


def cmd_tune(args) -> int:
    import logging

    from ..data.build import read_annotations
    from ..engine.tune import tune

    records, categories = read_annotations(args.data, args.image_root)
    if not records:
        raise UsageError(f"{args.data}: no usable records")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    out = tune(args.weights, records, categories, mode=args.mode, out_dir=args.out, overrides=args.overrides,
               shots=args.shots, device=args.device, resume=args.resume)  # fmt: skip
    print(f"{args.mode} tuning -> {out}", file=sys.stderr)
    return 0


def register(sub) -> None:
    _add_train(sub)
    _add_tune(sub)
