"""``openglip`` command line: detect, convert (and, as they land, train, evaluate, label, data ...).

Errors for people: bad input prints one line (what, where, how to fix) and exits with code 2; ``--debug``
shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EXIT_BAD_INPUT = 2


class UsageError(Exception):
    """A user mistake the CLI reports in one line."""


def _bad_input_types():
    from .checkpoints import CheckpointError
    from .images import ImageError
    from .prompts import PromptError

    return (UsageError, ImageError, PromptError, CheckpointError, FileNotFoundError, ValueError)


# --------------------------------------------------------------------------------------------------------------
# detect
# --------------------------------------------------------------------------------------------------------------


def _add_detect(sub):
    p = sub.add_parser(
        "detect",
        help="detect the phrases of a prompt in images",
        description="Detect what a prompt names in images or folders of images.",
        epilog='example: openglip detect photos/ --prompt "person. red car." --weights glip_t.pth --out res.json',
    )
    p.add_argument("inputs", nargs="+", help="image files and/or directories (searched recursively)")
    p.add_argument(
        "--prompt", required=True, help='class names separated by periods, e.g. "person. red car."'
    )
    p.add_argument("--weights", help="checkpoint: official GLIP .pth or OpenGLIP .safetensors")
    p.add_argument(
        "--preset",
        default=None,
        help="model preset (default: read from --weights, else glip_t); e.g. glip_t, glip_l, tiny",
    )
    p.add_argument("--threshold", type=float, default=0.3, help="minimum box score (default 0.3)")
    p.add_argument("--out", help="write COCO-style results JSON here (with a 'phrase' per box)")
    p.add_argument("--draw", help="write annotated images into this directory")
    p.add_argument("--batch-size", type=int, default=2, help="images per forward pass")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument(
        "--prompt-file", help="a tuned prompt (openglip tune --mode prompt); its phrases are the prompt"
    )
    p.set_defaults(func=cmd_detect)


class _TeacherDetector:
    """Lets ``detect`` drive a teacher like a detector (same predict call)."""

    def __init__(self, teacher):
        self.teacher = teacher

    def predict(self, images, prompt, box_threshold=0.3):
        single = not isinstance(images, list)
        items = [images] if single else images
        out = [
            d[d.scores >= box_threshold]
            for d in self.teacher.ground(items, [list(prompt.phrases)] * len(items))
        ]
        return out[0] if single else out


def cmd_detect(args) -> int:
    from tqdm import tqdm

    from .api import load_model
    from .files import write_text_atomic
    from .images import ImageError, find_images
    from .prompts import parse_prompt

    if args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    if args.prompt is None and args.prompt_file is None:
        raise UsageError('give --prompt "cat. dog." (or --prompt-file from openglip tune)')
    if not 0.0 <= args.threshold <= 1.0:
        raise UsageError("--threshold must be between 0 and 1")
    tuned = None
    if args.prompt_file:
        from .prompt_tuning import load_tuned_prompt

        tuned = load_tuned_prompt(args.prompt_file)
    prompt = tuned.prompt if tuned is not None else parse_prompt(args.prompt)
    paths = find_images(args.inputs)
    if not paths:
        raise UsageError(f"no images found in {' '.join(args.inputs)}")
    if args.weights and args.preset is None:
        detector = load_model(args.weights, device=args.device)  # the preset comes from the checkpoint
    elif args.weights:
        detector = load_model(args.preset, weights=args.weights, device=args.device)
    elif args.preset:
        print(
            f"openglip: warning: no --weights given; the {args.preset!r} model has random weights and its boxes "
            "are meaningless",
            file=sys.stderr,
        )
        detector = load_model(args.preset, device=args.device)
    else:
        from .teachers import load_teacher

        print(
            "openglip: no --weights given: using the zero-shot default teacher (EfficientNet-Lite0 + MiniLM, "
            "no box training; pass --weights for a trained GLIP)",
            file=sys.stderr,
        )
        detector = _TeacherDetector(load_teacher("default", device=args.device))

    if tuned is not None:
        if not hasattr(detector, "add_tuned_prompt"):
            raise UsageError("--prompt-file needs --weights (the model the prompt was tuned for)")
        detector.add_tuned_prompt(tuned)
    results, failures = [], []
    draw_dir = Path(args.draw) if args.draw else None
    bar = tqdm(total=len(paths), desc="detect", unit="img", disable=len(paths) < 2, file=sys.stderr)
    for start in range(0, len(paths), args.batch_size):
        batch = paths[start : start + args.batch_size]
        try:
            outputs = detector.predict([str(p) for p in batch], prompt, box_threshold=args.threshold)
        except ImageError:
            # find the bad file(s) of the batch and keep going with the others
            outputs = []
            for p in batch:
                try:
                    outputs.append(detector.predict(str(p), prompt, box_threshold=args.threshold))
                except ImageError as err:
                    failures.append(str(err))
                    outputs.append(None)
        for offset, (path, dets) in enumerate(zip(batch, outputs)):
            bar.update(1)
            if dets is None:
                continue
            image_id = start + offset + 1
            for entry in dets.to_coco(image_id):
                entry["file_name"] = str(path)
                results.append(entry)
            if draw_dir is not None:
                from .visualize import draw_detections

                out_path = draw_dir / (path.stem + ".jpg")
                draw_detections(str(path), dets, out_path)
            if not args.out:
                for phrase, score, box in zip(dets.phrases, dets.scores, dets.xyxy):
                    coords = ", ".join(f"{v:.1f}" for v in box)
                    print(f"{path}\t{phrase}\t{score:.3f}\t[{coords}]")
    bar.close()
    if args.out:
        write_text_atomic(args.out, json.dumps(results, indent=1))
        print(
            f"wrote {len(results)} detections for {len(paths) - len(failures)} images to {args.out}",
            file=sys.stderr,
        )
    for message in failures:
        print(f"openglip: error: {message}", file=sys.stderr)
    if failures:
        print(f"openglip: error: {len(failures)} of {len(paths)} images could not be read", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


# --------------------------------------------------------------------------------------------------------------
# convert
# --------------------------------------------------------------------------------------------------------------


def _add_convert(sub):
    p = sub.add_parser(
        "convert",
        help="convert an official GLIP checkpoint to OpenGLIP safetensors",
        description="Convert an official GLIP .pth (or a plain state dict) to an OpenGLIP .safetensors file "
        "that embeds its config. Every key is checked.",
    )
    p.add_argument("source", help="official GLIP checkpoint (.pth)")
    p.add_argument("dest", help="output .safetensors file")
    p.add_argument(
        "--preset", default=None, help="preset of the checkpoint (default: recognised from its shapes)"
    )
    p.set_defaults(func=cmd_convert)


def cmd_convert(args) -> int:
    from .checkpoints import (
        guess_preset,
        is_official_state_dict,
        load_into,
        read_checkpoint,
        save_safetensors,
    )
    from .config import get_preset
    from .models.detector import build_model

    if not args.dest.endswith(".safetensors"):
        raise UsageError(f"destination {args.dest} should end with .safetensors")
    state, embedded = read_checkpoint(args.source)
    name = args.preset or (embedded.name if embedded else None)
    if name is None and is_official_state_dict(state):
        name = guess_preset(state)
    if name is None:
        raise UsageError(f"cannot tell which preset {args.source} is for; pass --preset glip_t or glip_l")
    cfg = embedded if embedded is not None and embedded.name == name else get_preset(name)
    model = build_model(cfg)
    load_into(model, state)
    save_safetensors(model, args.dest, cfg)
    n = sum(v.numel() for v in model.state_dict().values())
    print(f"converted {args.source} ({name}, {len(state)} tensors, {n / 1e6:.1f}M values) -> {args.dest}")
    return 0


# --------------------------------------------------------------------------------------------------------------
# train / evaluate / data
# --------------------------------------------------------------------------------------------------------------


def resolve_run_configs(config: str, overrides: list[str], **explicit):
    """(ModelConfig, TrainConfig) from a preset name or a config JSON, then ``key=value`` overrides (each key
    goes to whichever config has it), then explicit flags."""
    import dataclasses

    from .config import ModelConfig, TrainConfig, apply_overrides, config_from_dict, get_preset

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
        from .api import Detector
        from .engine.evaluate import evaluate_shapes

        detector = Detector(model, device=next(model.parameters()).device)
        if val_data == "shapes":
            return evaluate_shapes(
                detector, num_images=train_cfg.eval_images, image_size=train_cfg.shapes_image_size
            )
        return _evaluate_file(detector, val_data, train_cfg.image_root, batch_size=8)[0]

    return evaluate


def cmd_train(args) -> int:
    import logging

    from .data.build import build_train_dataset
    from .engine.trainer import Trainer

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
        from .metrics import format_table

        shown = {k: v for k, v in result.items() if isinstance(v, float) and k not in ("lr", "time")}
        print(format_table(shown, title=f"{model_cfg.name} after {trainer.step} steps"))
        print(f"weights: {Path(train_cfg.out_dir) / 'model.safetensors'}")
    return 0


def _evaluate_file(detector, path: str, image_root: str | None, batch_size: int) -> tuple[dict, list]:
    """Metrics of ``detector`` on one annotation file (COCO -> box AP; grounding -> recall)."""
    import numpy as np

    from .data.build import read_annotations
    from .data.coco import coco_category_info
    from .engine.evaluate import GroundingItem, evaluate_detection, evaluate_grounding

    records, categories = read_annotations(path, image_root)
    if not records:
        raise UsageError(f"{path}: no usable records")
    if records[0].is_grounding:
        items = []
        for rec in records:
            groups: dict = {}
            for box, spans in zip(rec.boxes, rec.spans):
                groups.setdefault(tuple(tuple(s) for s in spans), []).append(box)
            items.append(
                GroundingItem(
                    rec.file_name, rec.caption, list(groups), [np.stack(v) for v in groups.values()]
                )
            )
        return evaluate_grounding(detector, items, batch_size=batch_size), []
    cats = coco_category_info(path) if Path(path).suffix == ".json" else [
        {"id": i + 1, "name": n} for i, n in enumerate(categories)
    ]  # fmt: skip
    gt = {"images": [], "annotations": [], "categories": cats}
    ann_id = 1
    for i, rec in enumerate(records):
        gt["images"].append(
            {"id": i + 1, "file_name": rec.file_name, "height": rec.height, "width": rec.width}
        )
        for box, label in zip(rec.boxes.tolist(), rec.labels.tolist()):
            x1, y1, x2, y2 = box
            gt["annotations"].append(
                {"id": ann_id, "image_id": i + 1, "category_id": cats[label]["id"], "bbox": [x1, y1, x2 - x1, y2 - y1],
                 "area": (x2 - x1) * (y2 - y1), "iscrowd": 0}
            )  # fmt: skip
            ann_id += 1
    return evaluate_detection(detector, gt, [r.file_name for r in records], batch_size=batch_size)


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
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--out", help="also write the metrics (and predictions) as JSON here")
    p.add_argument("--prompt-file", help="a tuned prompt (openglip tune --mode prompt) to apply")
    p.add_argument("--device", default=None)
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args) -> int:
    from .api import load_model
    from .engine.evaluate import evaluate_shapes
    from .files import write_text_atomic
    from .metrics import format_table

    detector = load_model(args.preset, weights=args.weights, device=args.device) if args.preset else load_model(
        args.weights, device=args.device
    )  # fmt: skip
    if args.prompt_file:
        from .prompt_tuning import load_tuned_prompt

        detector.add_tuned_prompt(load_tuned_prompt(args.prompt_file))
    predictions: list = []
    if args.data == "shapes":
        metrics = evaluate_shapes(detector, num_images=args.images, image_size=args.image_size)
    else:
        metrics, predictions = _evaluate_file(detector, args.data, args.image_root, args.batch_size)
    print(format_table(metrics, title=f"{detector.config.name} on {args.data}"))
    if args.out:
        write_text_atomic(args.out, json.dumps({"metrics": metrics, "predictions": predictions}))
        print(f"wrote {args.out}", file=sys.stderr)
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
    import dataclasses
    import logging
    from functools import partial

    from .checkpoints import read_checkpoint
    from .config import TrainConfig, apply_overrides
    from .data.build import read_annotations
    from .data.datasets import GroundingDataset
    from .data.transforms import default_train_transforms, to_model_input
    from .engine.trainer import Trainer
    from .engine.tune import TuneTask, few_shot

    _, model_cfg = read_checkpoint(args.weights)
    if model_cfg is None:
        raise UsageError(f"{args.weights} carries no config; convert it first with openglip convert")
    records, categories = read_annotations(args.data, args.image_root)
    if args.shots:
        records = few_shot(records, categories, args.shots)
    if not records:
        raise UsageError(f"{args.data}: no usable records")
    defaults = TrainConfig(max_steps=200, lr=1e-3 if args.mode == "prompt" else 1e-4, warmup_steps=10,
                           checkpoint_every=100, log_every=10, ema_decay=0.0, num_negatives=0, flip_prob=0.0)  # fmt: skip
    cfg = dataclasses.replace(apply_overrides(defaults, args.overrides), out_dir=args.out)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    dataset = GroundingDataset(
        records,
        categories,
        transform=default_train_transforms(
            min_sizes=cfg.train_min_sizes,
            max_size=cfg.train_max_size,
            flip_p=cfg.flip_prob,
            jitter=cfg.color_jitter,
        ),
        to_tensor=partial(
            to_model_input, mean=model_cfg.pixel_mean, std=model_cfg.pixel_std, bgr=model_cfg.bgr
        ),
        fixed_prompt=True,
        seed=cfg.seed,
    )
    task = TuneTask(model_cfg, cfg, mode=args.mode, weights=args.weights, categories=categories)
    trainer = Trainer(task, cfg, dataset, resume=args.resume, device=args.device)
    trainer.fit()
    if trainer.dist.is_main:
        out = Path(args.out) / ("prompt.safetensors" if args.mode == "prompt" else "model.safetensors")
        print(f"{args.mode} tuning on {len(records)} images, {trainer.step} steps -> {out}", file=sys.stderr)
    return 0


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
    from .api import resolve_device
    from .data.captions import read_captions
    from .engine.distributed import cleanup, init_distributed
    from .engine.label import label_pairs
    from .prompts import get_extractor
    from .teachers import load_teacher

    if not Path(args.images).is_dir():
        raise UsageError(f"--images {args.images}: not a directory")
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
            f"already done, {stats.unreadable} unreadable -> {args.out}",
            file=sys.stderr,
        )
    cleanup(dist)
    return EXIT_BAD_INPUT if stats.unreadable else 0


def _add_data(sub):
    p = sub.add_parser("data", help="built-in datasets", description="Write a built-in dataset to disk.")
    kinds = p.add_subparsers(dest="kind", metavar="DATASET")
    kinds.required = True
    s = kinds.add_parser(
        "shapes",
        help="the synthetic shapes grounding world",
        description="Render the shapes world: images/, annotations.coco.json, detection.odvg.jsonl, "
        "grounding.odvg.jsonl. The train split never contains the 8 novel colour-shape combinations.",
    )
    s.add_argument("--out", required=True)
    s.add_argument("--images", type=int, required=True)
    s.add_argument("--split", default="train", choices=["train", "val", "test", "all"])
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--size", type=int, default=128, help="image side in pixels")
    s.set_defaults(func=cmd_data_shapes)


def cmd_data_shapes(args) -> int:
    from .data.shapes import write_dataset

    if args.images < 1:
        raise UsageError("--images must be at least 1")
    if args.size < 32:
        raise UsageError("--size must be at least 32")
    paths = write_dataset(
        args.out, num_images=args.images, split=args.split, image_size=args.size, seed=args.seed
    )
    for key, path in paths.items():
        print(f"{key}: {path}")
    return 0


# --------------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="openglip", description="Open-vocabulary grounded object detection."
    )
    parser.add_argument("--version", action="version", version=f"openglip {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_detect(sub)
    _add_train(sub)
    _add_evaluate(sub)
    _add_tune(sub)
    _add_label(sub)
    _add_convert(sub)
    _add_data(sub)
    from .regionclip.cli import register as _add_regionclip

    _add_regionclip(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may come after the options (argparse stops collecting positionals there)
    if (
        extra
        and getattr(args, "command", None) in ("train", "regionclip")
        and all("=" in e and not e.startswith("-") for e in extra)
    ):
        args.overrides = [*getattr(args, "overrides", []), *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("openglip: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if args.debug or not isinstance(err, _bad_input_types()):
            raise
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"openglip: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
