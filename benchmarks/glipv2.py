"""GLIPv2 on the shapes world: the inter-image loss, segmentation, and few-shot prompt tuning.

    python benchmarks/glipv2.py [--steps 480] [--tune-steps 60] [--out outputs/glipv2_bench]

(a) novel / base AP50 of the shapes-demo recipe (glip_nano, 480 steps, novel combinations held out) without
    and with GLIPv2's inter-image region-word loss;
(b) mask AP and referring mIoU of the same recipe with the mask head;
(c) few-shot transfer to the 8 held-out combinations (1, 5, 10 images per class, the task prompt being the 8
    novel names): prompt tuning vs linear probe vs full fine-tuning, each starting from the model of (a)
    without the inter-image loss. The paper's claim: prompt tuning reaches >= 90% of full fine-tuning.
Runs are step-based (no time budget), so the numbers do not depend on the machine's speed; ~40 min on 2 cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

from _common import print_table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def train_shapes(out: Path, steps: int, **model_changes):
    from openglip.data.build import build_train_dataset
    from openglip.engine.trainer import Trainer
    from openglip.shapes.recipe import demo_configs
    from openglip.tasks import GLIPTask

    model_cfg, train_cfg, task_cfg = demo_configs(budget=0.0, out=str(out), steps=steps)
    model_cfg = dataclasses.replace(model_cfg, **model_changes)
    if model_cfg.inter_image_dim:
        task_cfg = dataclasses.replace(task_cfg, inter_image_weight=1.0)
    trainer = Trainer(
        GLIPTask(model_cfg, train_cfg, task_cfg),
        train_cfg,
        build_train_dataset(model_cfg, train_cfg, task_cfg),
        device="cpu",
    )
    start = time.time()
    trainer.fit()
    return trainer.final_weights().cpu().eval(), time.time() - start


def shapes_metrics(model, images: int) -> dict:
    from openglip.api import Detector
    from openglip.shapes.evaluation import evaluate_shapes

    return evaluate_shapes(Detector(model, device="cpu"), num_images=images)


def novel_task(root: Path, seed: int, num_images: int):
    """Images of the val split holding novel objects, annotated with novel boxes only (a COCO file)."""
    from openglip.files import write_text_atomic
    from openglip.shapes import CATEGORIES, NOVEL, ShapesWorld, to_coco

    world = ShapesWorld(split="val", image_size=128, seed=seed)
    novel_ids = {CATEGORIES.index(n) for n in NOVEL}
    samples, names = [], []
    i = 0
    while len(samples) < num_images:
        s = world.sample(i)
        keep = [k for k, lab in enumerate(s.labels) if int(lab) in novel_ids]
        if keep:
            s = dataclasses.replace(s, boxes=s.boxes[keep], labels=s.labels[keep], masks=s.masks[keep],
                                    sizes=[s.sizes[k] for k in keep])  # fmt: skip
            samples.append(s)
            names.append(f"{seed}_{i:05d}.png")
        i += 1
    gt = to_coco(samples, names)
    order = {n: j + 1 for j, n in enumerate(NOVEL)}
    old_to_new = {c["id"]: order[c["name"]] for c in gt["categories"] if c["name"] in order}
    gt["categories"] = [{"id": order[n], "name": n, "split": "novel"} for n in NOVEL]
    for a in gt["annotations"]:
        a["category_id"] = old_to_new[a["category_id"]]
    root.mkdir(parents=True, exist_ok=True)
    from PIL import Image

    for s, name in zip(samples, names):
        Image.fromarray(s.image).save(root / name)
    write_text_atomic(root / "novel.coco.json", json.dumps(gt))
    return root / "novel.coco.json", gt, [s.image for s in samples]


def few_shot_rows(base_path: Path, work: Path, shots_list, tune_steps: int, eval_images: int) -> list[tuple]:
    from openglip.api import Detector, load_model
    from openglip.config import TrainConfig, TuneConfig
    from openglip.data.build import read_annotations
    from openglip.engine.evaluate import evaluate_detection
    from openglip.prompt_tuning import load_tuned_prompt
    from openglip.tasks.tune import few_shot, tune

    train_file, _, _ = novel_task(work / "novel_train", seed=77, num_images=300)
    _, gt, images = novel_task(work / "novel_eval", seed=1234, num_images=eval_images)
    records, categories = read_annotations(train_file)
    zero = evaluate_detection(load_model(str(base_path), device="cpu"), gt, images)[0]["AP50"]
    rows = [("zero-shot (no tuning)", "-", f"{zero:.3f}", "")]
    for shots in shots_list:
        chosen = few_shot(records, categories, shots, seed=0)
        full_ap = None
        for mode in ("full", "linear", "prompt"):
            out = work / f"{mode}_{shots}"
            cfg = TrainConfig(out_dir=str(out), max_steps=tune_steps, batch_size=4, warmup_steps=5,
                              lr={"prompt": 1e-2, "linear": 1e-3, "full": 1e-4}[mode], freeze="text",
                              checkpoint_every=0, log_every=10, ema_decay=0.0,
                              train_min_sizes=(112, 128, 144), train_max_size=240)  # fmt: skip
            tune_cfg = TuneConfig(mode=mode, normalized_token_targets=False)
            tune(str(base_path), chosen, categories, cfg=cfg, tune_cfg=tune_cfg, device="cpu")
            if mode == "prompt":
                det = load_model(str(base_path), device="cpu")
                det.add_tuned_prompt(load_tuned_prompt(out / "prompt.safetensors"))
            else:
                det = Detector(load_model(str(out / "model.safetensors"), device="cpu").model, device="cpu")
            ap = evaluate_detection(det, gt, images)[0]["AP50"]
            if mode == "full":
                full_ap = ap
            ratio = f"{ap / full_ap:.0%} of full" if full_ap else ""
            rows.append((f"{mode} ({len(chosen)} images)", str(shots), f"{ap:.3f}", ratio))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=480)
    parser.add_argument("--tune-steps", type=int, default=60)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--shots", default="1,5,10")
    parser.add_argument("--out", default="outputs/glipv2_bench")
    args = parser.parse_args()
    torch.set_num_threads(2)
    from openglip.checkpoints import save_safetensors

    out = Path(args.out)
    base, t0 = train_shapes(out / "base", args.steps)
    base_path = out / "base" / "model.safetensors"
    save_safetensors(base, base_path)
    m0 = shapes_metrics(base, args.images)
    inter, t1 = train_shapes(out / "inter", args.steps, inter_image_dim=64)
    m1 = shapes_metrics(inter, args.images)
    rows_a = [
        ("GLIP loss only", f"{m0['novel/AP50']:.3f}", f"{m0['base/AP50']:.3f}", f"{m0['R@1']:.3f}", f"{t0:.0f} s"),
        ("+ inter-image loss", f"{m1['novel/AP50']:.3f}", f"{m1['base/AP50']:.3f}", f"{m1['R@1']:.3f}", f"{t1:.0f} s"),
    ]  # fmt: skip
    print_table(
        ("training", "novel AP50", "base AP50", "R@1", "train time"),
        rows_a,
        "(a) inter-image region-word loss",
    )
    masked, t2 = train_shapes(out / "masks", args.steps, mask_head=True)
    m2 = shapes_metrics(masked, args.images)
    rows_b = [("mask head", f"{m2.get('mask/AP', 0.0):.3f}", f"{m2.get('mask/AP50', 0.0):.3f}", f"{m2['AP50']:.3f}",
               f"{m2['referring_mIoU']:.3f}", f"{t2:.0f} s")]  # fmt: skip
    print_table(
        ("model", "mask AP", "mask AP50", "box AP50", "referring mIoU", "train time"),
        rows_b,
        "(b) segmentation",
    )
    shots = [int(s) for s in args.shots.split(",") if s]
    rows_c = few_shot_rows(base_path, out / "fewshot", shots, args.tune_steps, args.images)
    print_table(("method", "shots/class", "novel AP50", "vs full fine-tuning"), rows_c,
                "(c) few-shot transfer to the 8 novel combinations (novel-only prompt and eval)")  # fmt: skip


if __name__ == "__main__":
    main()
