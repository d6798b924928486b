"""Shapes-world benchmark at the README demo's budget: training speed and open-vocabulary quality.

    python benchmarks/shapes.py [--budget 420] [--images 200] [--threads 2]

Trains the demo model exactly as ``make train-demo`` does (same configs), then reports training images/s
on CPU, base AP50, novel (zero-shot) AP50 and grounding R@1 on the shapes val split. Goals from the training
issue: base AP50 >= 0.8, novel AP50 >= 0.5. With a GPU present it also times GLIP-T training at 800x1333 bf16.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from _table import print_table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def shapes_rows(budget: float, images: int, threads: int) -> list[tuple]:
    from openglip.api import Detector
    from openglip.data.build import build_train_dataset
    from openglip.demo import demo_configs
    from openglip.engine.evaluate import evaluate_shapes
    from openglip.engine.trainer import Trainer
    from openglip.tasks import GLIPTask

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as out:
        model_cfg, train_cfg = demo_configs(budget, out)
        trainer = Trainer(
            GLIPTask(model_cfg, train_cfg), train_cfg, build_train_dataset(model_cfg, train_cfg), device="cpu"
        )
        start = time.time()
        trainer.fit()
        seconds = time.time() - start
        rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
        speeds = [r["images_per_s"] for r in rows if "images_per_s" in r][1:] or [0.0]
        metrics = evaluate_shapes(Detector(trainer.final_weights().cpu(), device="cpu"), num_images=images)
    steps = trainer.step
    return [
        (f"{model_cfg.name} training, CPU, {threads} threads", f"{sum(speeds) / len(speeds):.1f} img/s",
         f"{steps} steps x {train_cfg.batch_size} images in {seconds:.0f} s"),
        ("base AP50", f"{metrics['base/AP50']:.3f}", "goal >= 0.8"),
        ("novel AP50 (zero-shot)", f"{metrics['novel/AP50']:.3f}", "goal >= 0.5"),
        ("AP (all, 0.5:0.95)", f"{metrics['AP']:.3f}", ""),
        ("grounding R@1 / R@5", f"{metrics['R@1']:.3f} / {metrics['R@5']:.3f}", f"{images} referring captions"),
    ]  # fmt: skip


def gpu_rows() -> list[tuple]:
    if not torch.cuda.is_available():
        return [("GLIP-T training, GPU", "no GPU available", "")]
    from openglip.config import glip_t
    from openglip.losses import GroundingLoss, GroundingTarget
    from openglip.models.detector import build_model

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
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-cpu", action="store_true")
    args = parser.parse_args()
    from openglip.demo import DEFAULT_BUDGET

    rows = [] if args.skip_cpu else shapes_rows(args.budget or DEFAULT_BUDGET, args.images, args.threads)
    rows += gpu_rows()
    header = ("measure", "value", "note")
    print_table(header, rows)


if __name__ == "__main__":
    main()
