"""GLIPv2's understanding half on the shapes world: VQA, captioning, grounded captioning and the MLM loss.

    python benchmarks/glipv2_vl.py [--det-steps 250] [--vqa-steps 900] [--vl-steps 250] [--images 150]
    python benchmarks/glipv2_vl.py --parts b --vqa-steps 400 --vqa-blind train   # a blind VQA model, trained

All models are glip_nano (EfficientNet-Lite0 + MiniLM-L6 from PyPI, text encoder frozen as in the shapes demo),
trained on 112-144 px renderings of the train split and evaluated on the val split, where about 40% of the
objects are the 8 held-out colour-shape combinations.

(a) detection pre-training with and without GLIPv2's MLM loss (same steps, seed and data): base / novel AP50;
(b) VQA fine-tuned from the MLM-pre-trained model: accuracy per question type against a *blind* baseline: by
    default the same model evaluated with every image replaced by a constant, with ``--vqa-blind train`` a model
    trained and evaluated that way (so it can only learn the answer prior of each question);
(c) captioning fine-tuned from the same model (the grounding loss on the captions' phrases keeps the detection
    head in step): BLEU-4 and CIDEr against a blind model trained the same way, and the box AP50 of grounded
    captioning (the generated caption's noun phrases grounded by the same model's detection head).
Runs are step-based, so the numbers do not depend on the machine's speed (about 40 min on 2 cores).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

from _common import print_table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def configs(out: Path, steps: int, preset: str):
    from openglip.config import get_preset
    from openglip.shapes.recipe import demo_configs

    model_cfg, train_cfg, task_cfg = demo_configs(budget=0.0, out=str(out), steps=steps)
    if preset != "glip_nano":  # smoke runs of this script
        model_cfg = dataclasses.replace(
            get_preset(preset), min_size=model_cfg.min_size, max_size=model_cfg.max_size
        )
    train_cfg = dataclasses.replace(train_cfg, checkpoint_every=0, log_every=max(steps // 10, 1))
    return model_cfg, train_cfg, task_cfg


def run(model_cfg, train_cfg, task_cfg):
    """Train ``train_cfg.task`` with its config ``task_cfg`` and return (final model, seconds)."""
    from openglip.tasks import train

    start = time.time()
    trainer = train(model_cfg, train_cfg, task_cfg, overwrite=True, device="cpu")
    return trainer.final_weights().cpu().eval(), time.time() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--det-steps", type=int, default=250)
    parser.add_argument("--vqa-steps", type=int, default=900)
    parser.add_argument("--vl-steps", type=int, default=250, help="captioning steps")
    parser.add_argument("--images", type=int, default=150, help="val images per evaluation")
    parser.add_argument("--mlm-weight", type=float, default=0.5)
    parser.add_argument("--preset", default="glip_nano")
    parser.add_argument("--out", default="outputs/glipv2_vl")
    parser.add_argument(
        "--parts", default="a,b,c", help="tables to make; b and c without a reuse OUT/det_mlm"
    )
    parser.add_argument(
        "--vqa-blind",
        choices=("train", "eval"),
        default="eval",
        help="VQA baseline: train a blind model, or evaluate the trained model with constant images",
    )
    args = parser.parse_args()
    torch.set_num_threads(2)
    from openglip.api import Detector
    from openglip.config import CaptionConfig, VQAConfig
    from openglip.shapes.evaluation import evaluate_shapes
    from openglip.shapes.language import shapes_caption_items, shapes_vqa_items
    from openglip.tasks.caption import evaluate_captions
    from openglip.tasks.vqa import evaluate_vqa

    out = Path(args.out)
    parts = set(args.parts.split(","))
    rows_a, det = [], {}
    if "a" not in parts:  # the MLM-pre-trained model of an earlier run
        from openglip.checkpoints import read_checkpoint

        det[True] = (
            read_checkpoint(out / "det_mlm" / "model.safetensors")[1],
            out / "det_mlm" / "model.safetensors",
        )
    for name, mlm in (("GLIP losses", False), ("+ MLM loss", True)) if "a" in parts else ():
        model_cfg, train_cfg, task_cfg = configs(
            out / ("det_mlm" if mlm else "det"), args.det_steps, args.preset
        )
        if mlm:
            model_cfg = dataclasses.replace(model_cfg, mlm_head=True)
            task_cfg = dataclasses.replace(task_cfg, mlm_weight=args.mlm_weight)
        model, seconds = run(model_cfg, train_cfg, task_cfg)
        m = evaluate_shapes(Detector(model, device="cpu"), num_images=args.images)
        det[mlm] = (model_cfg, Path(train_cfg.out_dir) / "model.safetensors")
        rows_a.append((name, f"{m['base/AP50']:.3f}", f"{m['novel/AP50']:.3f}", f"{m['AP50']:.3f}", f"{m['R@1']:.3f}",
                       f"{seconds:.0f} s"))  # fmt: skip
    if rows_a:
        print_table(("pre-training", "base AP50", "novel AP50", "all AP50", "R@1", "train time"), rows_a,
                    f"(a) MLM loss in detection pre-training ({args.det_steps} steps each)")  # fmt: skip

    base_cfg, base_weights = det[True]
    vqa_items = shapes_vqa_items(args.images)
    rows_b = []
    for name, blind in (
        (("VQA head on the fused [CLS]", False), ("blind (constant image)", True)) if "b" in parts else ()
    ):
        _, train_cfg, _ = configs(out / ("vqa_blind" if blind else "vqa"), args.vqa_steps, args.preset)
        vqa_cfg = VQAConfig(blind=blind)
        train_cfg = dataclasses.replace(train_cfg, task="vqa", init_weights=str(base_weights), lr=2e-4)
        if blind and args.vqa_blind == "eval":  # the model of the row above, every test image made constant
            name, seconds = "same model, constant image at test", 0.0
        else:
            model, seconds = run(base_cfg, train_cfg, vqa_cfg)
        m = evaluate_vqa(Detector(model, device="cpu"), vqa_items, blind=blind)
        types = ("colour", "shape", "count", "exist", "relation")
        rows_b.append((name, *[f"{m.get(f'accuracy/{t}', float('nan')):.3f}" for t in types],
                       f"{m['accuracy']:.3f}", f"{seconds:.0f} s"))  # fmt: skip
    if rows_b:
        print_table(("model", "colour", "shape", "count", "exist", "relation", "overall", "train time"), rows_b,
                    f"(b) VQA accuracy on {args.images} val questions ({args.vqa_steps} steps)")  # fmt: skip

    cap_items = shapes_caption_items(args.images)
    images, refs, samples = (
        [s.image for s, _ in cap_items],
        [r for _, r in cap_items],
        [s for s, _ in cap_items],
    )
    rows_c = []
    for name, blind in (
        (("caption head (causal fusion)", False), ("blind (constant image)", True)) if "c" in parts else ()
    ):
        _, train_cfg, task_cfg = configs(out / ("cap_blind" if blind else "cap"), args.vl_steps, args.preset)
        train_cfg = dataclasses.replace(train_cfg, task="caption", init_weights=str(base_weights), lr=2e-4)
        # the demo's grounding-loss settings, as the caption task's grounding loss
        cap_cfg = CaptionConfig(blind=blind, normalized_token_targets=task_cfg.normalized_token_targets)
        model, seconds = run(base_cfg, train_cfg, cap_cfg)
        m = evaluate_captions(Detector(model, device="cpu"), images, refs, samples=None if blind else samples,
                              blind=blind)  # fmt: skip
        grounded = f"{m['grounded/AP50']:.3f}" if "grounded/AP50" in m else "-"
        rows_c.append((name, f"{m['BLEU-4']:.3f}", f"{m['CIDEr']:.3f}", grounded, f"{seconds:.0f} s"))
        if not blind:
            from openglip.vl_inference import generate_captions

            shown = generate_captions(Detector(model, device="cpu"), images[:3])
            for cap, ref in zip(shown, refs[:3]):
                print(f"  generated: {cap!r}  reference: {ref[0]!r}")
    if rows_c:
        print_table(("model", "BLEU-4", "CIDEr", "grounded AP50", "train time"), rows_c,
                    f"(c) captioning on {args.images} val images ({args.vl_steps} steps each, greedy decoding)")  # fmt: skip


if __name__ == "__main__":
    main()
