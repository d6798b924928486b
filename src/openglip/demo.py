"""Demos.

    python -m openglip.demo photos   # detect named objects in packaged real photos, zero-shot (about a minute)
    python -m openglip.demo shapes   # fine-tune glip_nano on the shapes world and evaluate it (9 to 12 minutes on 2 cores)

In the shapes demo the model never sees the 8 novel colour-shape combinations (e.g. "red hexagon") in
training; the novel AP is zero-shot compositional generalisation from the text side.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .api import Detector
from .data.build import build_train_dataset
from .engine.trainer import Trainer
from .metrics import format_table
from .prompts import parse_prompt
from .shapes import CATEGORIES, NOVEL
from .shapes.evaluation import evaluate_shapes, shapes_eval_set
from .shapes.photos import load_check_set, load_photo
from .shapes.recipe import DEFAULT_BUDGET, DEFAULT_STEPS, demo_configs
from .tasks import GLIPTask
from .teachers import load_teacher
from .teachers.zero_shot import WINDOWS_NOTE
from .visualize import draw_detections

PHOTO_PROMPTS = {  # check-set photo -> what we ask for (a distractor included)
    "chelsea.png": "cat. dog.",
    "coffee.png": "cup. spoon. fork.",
    "astronaut.png": "person. flag. helmet.",
    "motorcycle_left.png": "motorcycle. car.",
    "grace_hopper.jpg": "person. hat. glasses.",
    "flower.jpg": "flower. butterfly.",
}


def photos(argv: list[str]) -> int:
    """Zero-shot detection on real photos that ship inside installed packages."""
    parser = argparse.ArgumentParser(prog="python -m openglip.demo photos", description=photos.__doc__)
    parser.add_argument("--out", default="outputs/photos_demo", help="folder for the drawn images")
    parser.add_argument("--threshold", type=float, default=0.35, help="minimum score shown")
    args = parser.parse_args(argv)

    print("loading the zero-shot teacher (EfficientNet-Lite0 ImageNet classifier + MiniLM-L6 text encoder,")
    print("YOLOv3-tiny proposals; all from PyPI packages, no box training on your data) ...")
    start = time.time()
    teacher = load_teacher("default", device="cpu")
    if teacher.proposals == "windows":
        print(f"note: {WINDOWS_NOTE}")
    print(f"ready in {time.time() - start:.0f} s\n")
    out = Path(args.out)
    for entry in load_check_set():
        prompt = PHOTO_PROMPTS.get(entry["file_hint"])
        if prompt is None:
            continue
        try:
            image = load_photo(entry)
        except (RuntimeError, ImportError) as err:
            print(f"skipping {entry['file_hint']}: {err}")
            continue
        phrases = list(parse_prompt(prompt).phrases)
        t0 = time.time()
        dets = teacher.predict(image, phrases, box_threshold=args.threshold)
        took = time.time() - t0
        print(
            f"{entry['file_hint']} ({entry['loader']}), prompt {prompt!r}: {len(dets)} boxes in {took:.1f} s"
        )
        for phrase, score, box in zip(dets.phrases, dets.scores, dets.xyxy):
            print(f"    {phrase:>10s} {score:.2f}  [{', '.join(f'{v:.0f}' for v in box)}]")
        draw_detections(image, dets, out / (Path(entry["file_hint"]).stem + ".jpg"))
    print(f'\ndrawn images: {out}/   (your own: openglip detect PHOTO.jpg --prompt "cat. cup." --draw out/)')
    return 0


def _report(metrics: dict, steps: int, args, *, title: str, train_time: float) -> None:
    """Print the demo's table (marked when ``--budget`` cut the run) and write ``eval.json``."""

    shown = {
        "base AP50": metrics["base/AP50"],
        "novel AP50 (zero-shot)": metrics["novel/AP50"],
        "AP50": metrics["AP50"],
        "AP": metrics["AP"],
        "grounding R@1": metrics["R@1"],
        "grounding R@5": metrics["R@5"],
    }
    if steps < args.steps:  # the --budget stopped it: these are not the demo's figures
        title += f" (cut at {steps} of {args.steps} steps: not the demo's figures)"
        print(
            f"WARNING: --budget {args.budget:g} s stopped training at step {steps} of {args.steps}; the "
            "figures below are NOT the demo's (rerun without --budget)",
            file=sys.stderr,
        )
    print(format_table(shown, title=title))
    record = {"metrics": metrics, "train_seconds": train_time, "steps": steps, "planned_steps": args.steps}
    (Path(args.out) / "eval.json").write_text(json.dumps(record))


def _draw_val_examples(detector, drawn: Path) -> Path:
    """Eight val images with the detector's boxes, drawn at 4x so that the labels of 128-px images are readable."""

    _, images, _ = shapes_eval_set(8)
    for i, image in enumerate(images):
        dets = detector.predict(image, list(CATEGORIES), box_threshold=0.4)
        big = np.kron(image, np.ones((4, 4, 1), dtype=image.dtype))
        dets.xyxy = dets.xyxy * 4
        draw_detections(big, dets, drawn / f"val_{i}.png")
    return drawn


def shapes(argv: list[str]) -> int:
    """Fine-tune glip_nano on the shapes world (novel combinations held out) and evaluate it."""
    parser = argparse.ArgumentParser(prog="python -m openglip.demo shapes", description=shapes.__doc__)
    parser.add_argument(
        "--steps", type=int, default=DEFAULT_STEPS, help=f"training steps (default {DEFAULT_STEPS})"
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=DEFAULT_BUDGET,
        help="stop training after this many seconds (default: no limit; a cut run's figures are marked)",
    )
    parser.add_argument("--out", default="outputs/shapes_demo", help="run directory")
    parser.add_argument("--images", type=int, default=200, help="val images for evaluation")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model_cfg, train_cfg, task_cfg = demo_configs(args.budget, args.out, args.seed, args.steps)
    print(
        f"fine-tuning {model_cfg.name} on the shapes world for {args.steps} steps (novel combinations held out)"
    )
    start = time.time()
    trainer = Trainer(
        GLIPTask(model_cfg, train_cfg, task_cfg),
        train_cfg,
        build_train_dataset(model_cfg, train_cfg, task_cfg),
        device="cpu",
    )
    trainer.fit()
    train_time = time.time() - start
    detector = Detector(trainer.final_weights().cpu(), device="cpu")
    print(f"evaluating on {args.images} val images ...")
    metrics = evaluate_shapes(detector, num_images=args.images)
    _report(metrics, trainer.step, args, title=f"{model_cfg.name}: {trainer.step} steps, {train_time:.0f} s of training",
            train_time=train_time)  # fmt: skip
    drawn = _draw_val_examples(detector, Path(args.out) / "predictions")
    print(f"novel (never trained) categories: {', '.join(NOVEL)}")
    print(f"weights: {Path(args.out) / 'model.safetensors'}   drawn predictions: {drawn}/")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    demos = {"photos": photos, "shapes": shapes}
    if not argv or argv[0] not in demos:
        print(__doc__)
        return 2 if argv else 0
    return demos[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
