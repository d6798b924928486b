"""Fine-tuning without forgetting: what each tuning mode gains on a new task and keeps of what the model knew.

    python benchmarks/forgetting.py [--pretrain-steps 480] [--tune-steps 200] [--images 200]

The pre-trained model: glip_nano trained on the shapes world as the shapes demo trains it (480 steps, the world's
own renderer, base categories). The target task, as a user's dataset would be: a subset of the categories, the
13 base circles and triangles (:data:`TARGET_SHAPES`), drawn in a new style (the second renderer,
:mod:`openglip.shapes.render_alt`), annotated for those categories only (other shapes in its images are not
boxed, as in any dataset that labels its own classes). Each mode adapts the pre-trained model to 400 such images
with the task's fixed prompt (the 13 names), for the same number of steps:

* plain fine-tuning (``openglip tune --mode full``);
* replay (``--mode replay replay_data=shapes replay_ratio=0.25``): a quarter of every batch from the pre-training
  world, with its class prompts and sampled negatives;
* WiSE-FT (``--mode wise``) at alpha 0.25 / 0.5 / 0.75, mixing the plain fine-tuned weights with the pre-trained
  ones, and with alpha chosen automatically (``--alpha auto``) on 60 held-out target images and a 60-image retain
  set (both apart from the test images);
* prompt tuning (``--mode prompt``): the model stays as it is, an offset on the prompt's token features trains.

Measured on images no mode trained on: target AP50 on 200 new-style images (the 13 target names as the prompt),
and retained AP50 on 200 images of the pre-training renderer, for the 27 base categories the task does not name
(their names as the prompt). The goal: a mode within 0.02 of plain fine-tuning's target AP50 that keeps >= 95% of
the pre-trained model's retained AP50. Results are kept under ``--out``; a rerun continues.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from _common import print_table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

TARGET_SHAPES = ("circle", "triangle")
ALPHAS = (0.25, 0.5, 0.75)


def categories():
    from openglip.shapes import BASE

    target = [n for n in BASE if n.split()[1] in TARGET_SHAPES]
    return target, [n for n in BASE if n not in target]


def write_subset(out: Path, names: list[str], *, renderer: str, count: int, seed: int) -> Path:
    """``count`` images (train split, no novel combination) holding at least one object of ``names``, boxed for
    those categories only, as a COCO file with ``names`` as its categories in order."""
    from PIL import Image

    from openglip.files import write_text_atomic
    from openglip.shapes import CATEGORIES, ShapesWorld
    from openglip.shapes.render_alt import AltShapesWorld

    path = out / "annotations.coco.json"
    if path.exists():
        return path
    (out / "images").mkdir(parents=True, exist_ok=True)
    world = (AltShapesWorld if renderer == "alt" else ShapesWorld)(split="train", image_size=128, seed=seed)
    ids = {n: i + 1 for i, n in enumerate(names)}
    images, anns, index = [], [], 0
    while len(images) < count:
        sample = world.sample(index)
        index += 1
        keep = [k for k, lab in enumerate(sample.labels) if CATEGORIES[int(lab)] in ids]
        if not keep:
            continue
        name = f"images/{index:06d}.png"
        Image.fromarray(sample.image).save(out / name, compress_level=1)
        h, w = sample.image.shape[:2]
        images.append({"id": len(images) + 1, "file_name": name, "height": h, "width": w})
        for k in keep:
            x1, y1, x2, y2 = sample.boxes[k].tolist()
            anns.append({"id": len(anns) + 1, "image_id": len(images), "category_id": ids[CATEGORIES[int(sample.labels[k])]],
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})  # fmt: skip
    cats = [{"id": i, "name": n} for n, i in ids.items()]
    write_text_atomic(path, json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


def pretrain(out: Path, steps: int) -> Path:
    from openglip.shapes.recipe import demo_configs
    from openglip.tasks import train

    path = out / "model.safetensors"
    if not path.exists():
        model_cfg, train_cfg, task_cfg = demo_configs(budget=0.0, out=str(out), steps=steps)
        train(model_cfg, train_cfg, task_cfg, overwrite=True, device="cpu")
    return path


def tune_run(mode: str, base: Path, train_file: Path, out: Path, steps: int) -> Path:
    """One tuning run with the benchmark's recipe (the pre-training's image sizes, frozen MiniLM)."""
    from openglip.data.build import read_annotations
    from openglip.tasks.tune import tune, tune_config

    result = out / ("prompt.safetensors" if mode == "prompt" else "model.safetensors")
    if result.exists():
        return result
    records, cats = read_annotations(train_file)
    overrides = [f"max_steps={steps}", "batch_size=8", "train_min_sizes=(112,128,144)", "train_max_size=240",
                 "freeze=text", "normalized_token_targets=false", "checkpoint_every=0", "log_every=20"]  # fmt: skip
    if mode == "prompt":
        overrides.append("lr=0.01")
    if mode == "replay":
        overrides += [
            "replay_data=shapes",
            "replay_ratio=0.25",
            "num_negatives=20",
        ]  # shapes at its default 128 px
    cfg, tune_cfg = tune_config(mode, overrides, out_dir=str(out))
    return tune(str(base), records, cats, cfg=cfg, tune_cfg=tune_cfg, overwrite=True, device="cpu")


def metrics(detector, target_file: Path, retain_file: Path) -> dict:
    from openglip.engine.evaluate import evaluate_file

    return {
        "target": evaluate_file(detector, str(target_file), None, 8)[0]["AP50"],
        "retained": evaluate_file(detector, str(retain_file), None, 8)[0]["AP50"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pretrain-steps", type=int, default=480)
    parser.add_argument("--tune-steps", type=int, default=200)
    parser.add_argument("--train-images", type=int, default=400)
    parser.add_argument("--images", type=int, default=200, help="test images of each kind")
    parser.add_argument(
        "--select-images", type=int, default=60, help="held-out target and retain images for alpha"
    )
    parser.add_argument("--out", default="outputs/forgetting")
    args = parser.parse_args()
    torch.set_num_threads(2)
    from openglip.api import load_model
    from openglip.checkpoints import read_checkpoint
    from openglip.engine.wise import choose_alpha, interpolate
    from openglip.prompt_tuning import load_tuned_prompt
    from openglip.tasks.glip import retain_ap50

    out = Path(args.out)
    target, retain = categories()
    files = {
        "train": write_subset(out / "data/target_train", target, renderer="alt", count=args.train_images, seed=21),
        "target_select": write_subset(out / "data/target_select", target, renderer="alt", count=args.select_images, seed=22),
        "target_test": write_subset(out / "data/target_test", target, renderer="alt", count=args.images, seed=23),
        "retain_select": write_subset(out / "data/retain_select", retain, renderer="shapes", count=args.select_images, seed=1235),
        "retain_test": write_subset(out / "data/retain_test", retain, renderer="shapes", count=args.images, seed=1234),
    }  # fmt: skip
    start = time.time()
    base = pretrain(out / "pretrained", args.pretrain_steps)
    pretrain_s = time.time() - start
    cache = out / "results.json"
    results: dict = json.loads(cache.read_text()) if cache.exists() else {}

    def record(name: str, make_detector, note: str = "") -> None:
        if name not in results:
            results[name] = {
                **metrics(make_detector(), files["target_test"], files["retain_test"]),
                "note": note,
            }
            cache.write_text(json.dumps(results, indent=1))
        r = results[name]
        print(f"{name}: target AP50 {r['target']:.3f}, retained AP50 {r['retained']:.3f}", flush=True)

    record("zero-shot (pre-trained)", lambda: load_model(str(base), device="cpu"))
    seconds = {}
    for mode in ("full", "replay", "prompt"):
        t0 = time.time()
        path = tune_run(mode, base, files["train"], out / mode, args.tune_steps)
        seconds[mode] = time.time() - t0
        if mode == "prompt":

            def det(path=path):
                d = load_model(str(base), device="cpu")
                d.add_tuned_prompt(load_tuned_prompt(path))
                return d

            record("prompt tuning", det)
        else:
            record({"full": "plain fine-tuning", "replay": "replay (25% pre-training data)"}[mode],
                   lambda path=path: load_model(str(path), device="cpu"))  # fmt: skip

    start_state = read_checkpoint(base)[0]
    tuned_state = read_checkpoint(out / "full" / "model.safetensors")[0]

    def mixed(alpha: float):
        det = load_model(str(out / "full" / "model.safetensors"), device="cpu")
        det.model.load_state_dict(interpolate(start_state, tuned_state, alpha))
        return det

    for alpha in ALPHAS:
        record(f"WiSE-FT, alpha {alpha}", lambda alpha=alpha: mixed(alpha))
    if "WiSE-FT, alpha auto" not in results:
        from openglip.engine.evaluate import evaluate_file

        retain_ap = retain_ap50(str(files["retain_select"]))
        target_ap = lambda a: evaluate_file(mixed(a), str(files["target_select"]), None, 8)[0]["AP50"]  # noqa: E731
        choice = choose_alpha(target_ap, lambda a: retain_ap(mixed(a).model), keep=0.95)
        record("WiSE-FT, alpha auto", lambda: mixed(choice.alpha), note=f"alpha {choice.alpha}")
    else:
        record("WiSE-FT, alpha auto", None)

    zero, plain = results["zero-shot (pre-trained)"], results["plain fine-tuning"]
    rows = []
    for name, r in results.items():
        kept = r["retained"] / zero["retained"] if zero["retained"] else float("nan")
        close = abs(r["target"] - plain["target"]) <= 0.02 or r["target"] > plain["target"]
        goal = "yes" if close and kept >= 0.95 and name != "plain fine-tuning" else ""
        label = f"{name} ({r['note']})" if r.get("note") else name
        rows.append((label, f"{r['target']:.3f}", f"{r['target'] - plain['target']:+.3f}", f"{r['retained']:.3f}",
                     f"{kept:.0%}", goal))  # fmt: skip
    print_table(
        ("mode", "target AP50", "vs plain", "retained AP50", "kept of zero-shot", "goal met"),
        rows,
        f"Fine-tuning glip_nano on a new style and 13 of its categories ({args.train_images} images, "
        f"{args.tune_steps} steps of 8): target = new-style test images, retained = the 27 other base categories "
        f"in the pre-training style ({args.images} images each)",
    )
    times = ", ".join(f"{m} {s / 60:.1f} min" for m, s in seconds.items())
    print(f"\npre-training {pretrain_s / 60:.1f} min (0 if cached); tuning: {times}")


if __name__ == "__main__":
    main()
