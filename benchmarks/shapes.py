"""Shapes-world benchmark at the README demo's budget: training speed and open-vocabulary quality, on the
training renderer's images and on another renderer's.

    python benchmarks/shapes.py [--budget 540] [--images 200] [--threads 2] [--weights model.safetensors]

Trains the demo model exactly as ``make train-demo`` does (same configs; or loads ``--weights``), then reports
training images/s on CPU and, for the shapes val split drawn by the world's own renderer and by the second,
independent renderer (openglip.shapes.render_alt: other shape geometry, shades, backgrounds, fills, camera,
canvas sizes): base AP50, novel (zero-shot) AP50, AP and grounding R@1/R@5. Goals: base AP50 >= 0.8 and novel
AP50 >= 0.5 on the own renderer; on the other renderer, >= 80% of both. With a GPU present it also times GLIP-T
training at 800x1333 bf16.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from _common import print_table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def train_demo(budget: float, threads: int, out: str) -> tuple[object, list[tuple]]:
    """Train the demo model; returns (weights, the training-speed row)."""
    from openglip.data.build import build_train_dataset
    from openglip.engine.trainer import Trainer
    from openglip.shapes.recipe import demo_configs
    from openglip.tasks import GLIPTask

    torch.set_num_threads(threads)
    model_cfg, train_cfg, task_cfg = demo_configs(budget, out)
    trainer = Trainer(
        GLIPTask(model_cfg, train_cfg, task_cfg),
        train_cfg,
        build_train_dataset(model_cfg, train_cfg, task_cfg),
        device="cpu",
    )
    start = time.time()
    trainer.fit()
    seconds = time.time() - start
    rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    speeds = [r["images_per_s"] for r in rows if "images_per_s" in r][1:] or [0.0]
    row = (f"{model_cfg.name} training, CPU, {threads} threads", f"{sum(speeds) / len(speeds):.1f} img/s", "",
           "", f"{trainer.step} steps x {train_cfg.batch_size} images in {seconds:.0f} s")  # fmt: skip
    return trainer.final_weights().cpu(), [row]


def quality_rows(weights, images: int) -> list[tuple]:
    """Both renderers' metrics side by side, with the share the other renderer keeps (``weights``: a model
    or a ``.safetensors`` path)."""
    from openglip.api import Detector, load_model
    from openglip.shapes.evaluation import evaluate_shapes

    is_path = isinstance(weights, (str, Path))
    detector = load_model(weights, device="cpu") if is_path else Detector(weights, device="cpu")
    own = evaluate_shapes(detector, num_images=images)
    other = evaluate_shapes(detector, num_images=images, renderer="alt")
    rows = []
    for name, key, goal in (
        ("base AP50", "base/AP50", "own >= 0.8; other keeps >= 80%"),
        ("novel AP50 (zero-shot)", "novel/AP50", "own >= 0.5; other keeps >= 80%"),
        ("AP (all, 0.5:0.95)", "AP", ""),
        ("grounding R@1", "R@1", f"{images} referring captions"),
        ("grounding R@5", "R@5", ""),
    ):
        kept = f"{other[key] / own[key]:.0%}" if own[key] > 0 else "-"
        rows.append((name, f"{own[key]:.3f}", f"{other[key]:.3f}", kept, goal))
    return rows


def gpu_rows() -> list[tuple]:
    if not torch.cuda.is_available():
        return [("GLIP-T training, GPU", "no GPU available", "")]
    from openglip.config import glip_t
    from openglip.losses import GroundingLoss, GroundingTarget
    from openglip.models.glip import build_model

    device = torch.device("cuda")
    model = build_model(glip_t()).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), 1e-4)
    crit = GroundingLoss()
    batch = 4
    images = torch.randn(batch, 3, 800, 1344, device=device)
    caption = ". ".join(f"class {i}" for i in range(80))
    ids, mask = model.tokenize([caption] * batch)
    targets = [GroundingTarget(torch.tensor([[100.0, 100.0, 300.0, 400.0]], device=device),
                               torch.nn.functional.one_hot(torch.tensor([1]), ids.shape[1]).float().to(device))] * batch  # fmt: skip

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(
                images, [(800, 1333)] * batch, input_ids=ids.to(device), attention_mask=mask.to(device)
            )
        loss = sum(crit(out, targets).values())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(2):
        step()
    torch.cuda.synchronize()
    start = time.time()
    n = 5
    for _ in range(n):
        step()
    torch.cuda.synchronize()
    rate = n * batch / (time.time() - start)
    return [
        (
            f"GLIP-T training, bf16, {torch.cuda.get_device_name()}, batch {batch}, 800x1333",
            f"{rate:.1f} img/s",
            "",
        )
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--budget", type=float, default=None, help="training seconds (default: the demo's)")
    parser.add_argument("--images", type=int, default=200, help="val images per renderer")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--weights", default=None, help="evaluate these weights instead of training")
    parser.add_argument("--skip-cpu", action="store_true")
    parser.add_argument("--out", default=None, help="keep the trained run here (default: a temporary folder)")
    args = parser.parse_args()
    from openglip.shapes.recipe import DEFAULT_BUDGET

    rows = []
    if not args.skip_cpu:
        if args.weights:
            torch.set_num_threads(args.threads)
            rows += quality_rows(args.weights, args.images)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                weights, rows = train_demo(args.budget or DEFAULT_BUDGET, args.threads, args.out or tmp)
            rows += quality_rows(weights, args.images)
    header = ("measure", "own renderer", "other renderer", "kept", "note")
    print_table(header, rows)
    gpu = gpu_rows()
    print()
    print_table(("measure", "value", "note"), gpu)


if __name__ == "__main__":
    main()
