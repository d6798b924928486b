"""Every benchmark protocol on the shapes world, with one trained glip_nano model.

    python -m openglip.demo shapes                      # the model: outputs/shapes_demo/model.safetensors
    python benchmarks/protocols.py [--weights W] [--out outputs/protocols_bench] [--steps 20]

Writes the shapes world in each benchmark's layout (``openglip data shapes --format ...``; five ODinW-style
datasets, an LVIS-style federated file, MDETR-style Flickr30k and RefCOCO files, a COCO file with a split file)
and prints the tables of ``openglip benchmark odinw|lvis|flickr|refcoco|ovcoco``: ODinW zero-shot and few-shot
(1 / 5 / 10 shots x 3 seeds, mean ± std) for prompt tuning, linear probing and full fine-tuning, each run
``--steps`` optimiser steps. Results are kept in ``--out``: a rerun skips what is done (a killed run continues).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def fixtures(root: Path, seed: int, images: int) -> dict[str, Path]:
    """The shapes world in every layout (written once; reused when present)."""
    from openglip.shapes import formats as sf

    paths = {
        "odinw": root / "odinw",
        "lvis": root / "lvis" / "lvis_v1_val.json",
        "flickr": root / "flickr" / "final_flickr_separateGT_test.json",
        "refcoco": root / "refcoco" / "final_refcoco_val.json",
        "ovcoco": root / "ovcoco" / "annotations.coco.json",
    }
    if not (paths["odinw"] / "Stars" / "test" / "_annotations.coco.json").exists():
        sf.write_odinw(paths["odinw"], seed=seed)
    for name in ("lvis", "flickr", "refcoco"):
        if not paths[name].exists():
            sf.WRITERS[name](root / name, num_images=images, seed=seed)
    if not paths["ovcoco"].exists():
        sf.write_ovcoco(root / "ovcoco", num_images=images, seed=seed)
    return paths


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--weights", default="outputs/shapes_demo/model.safetensors")
    parser.add_argument("--out", default="outputs/protocols_bench")
    parser.add_argument("--steps", type=int, default=10, help="optimiser steps of every few-shot run")
    parser.add_argument("--test-images", type=int, default=16, help="test images per ODinW dataset")
    parser.add_argument(
        "--images", type=int, default=50, help="images of the LVIS / Flickr / RefCOCO / OV-COCO files"
    )
    parser.add_argument("--shots", default="1,5,10")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--modes", default="prompt,linear,full")
    parser.add_argument("--seed", type=int, default=0, help="seed of the rendered fixtures")
    args = parser.parse_args()

    import torch

    from openglip import load_model
    from openglip.data.lvis import read_lvis
    from openglip.data.mdetr_final import read_mdetr_final
    from openglip.data.splits import read_category_split
    from openglip.protocols.common import write_report
    from openglip.protocols.flickr import run_flickr
    from openglip.protocols.lvis import run_lvis
    from openglip.protocols.odinw import OdinwPlan, glip_seeds, run_odinw
    from openglip.protocols.ovcoco import run_ovcoco
    from openglip.protocols.refcoco import run_refcoco

    torch.set_flush_denormal(True)
    if not Path(args.weights).exists():
        print(f"{args.weights} not found: train it with python -m openglip.demo shapes", file=sys.stderr)
        return 2
    out = Path(args.out)
    paths = fixtures(out / "data", args.seed, args.images)
    tables, timings = [], {}

    start = time.time()
    detector = load_model(args.weights, device="cpu")
    m, t = run_lvis(detector, read_lvis(paths["lvis"]))
    write_report(out, "lvis", {"metrics": m}, t)
    tables.append(t)
    m, t = run_flickr(detector, read_mdetr_final(paths["flickr"]))
    write_report(out, "flickr", {"metrics": m}, t)
    tables.append(t)
    m, t = run_refcoco(detector, read_mdetr_final(paths["refcoco"]), split="val")
    write_report(out, "refcoco", {"metrics": m}, t)
    tables.append(t)
    gt = __import__("json").loads(paths["ovcoco"].read_text())
    split = read_category_split(paths["ovcoco"].parent / "split.json")
    m, t = run_ovcoco(detector, gt, paths["ovcoco"].parent, split)
    write_report(out, "ovcoco", {"metrics": m}, t)
    tables.append(t)
    timings["lvis + flickr + refcoco + ovcoco"] = time.time() - start

    start = time.time()
    shots = tuple(int(k) for k in args.shots.split(",") if k)
    plan = OdinwPlan(
        shots=shots, seeds=glip_seeds(args.seeds), modes=tuple(args.modes.split(",")), device="cpu",
        max_test_images=args.test_images,
        overrides=(f"max_steps={args.steps}", "batch_size=4", "warmup_steps=2", "checkpoint_every=0",
                   "train_min_sizes=(112,128,144)", "train_max_size=240",
                   # the rates of benchmarks/glipv2.py's few-shot comparison
                   "prompt.lr=1e-2", "linear.lr=1e-3", "full.lr=1e-4", "full.freeze=text"),
    )  # fmt: skip
    result = run_odinw(args.weights, paths["odinw"], out / "odinw", plan=plan)
    timings["odinw"] = time.time() - start
    tables.insert(0, result["table"])

    print()
    for t in tables:
        print(t, end="\n\n")
    print(f"model {args.weights}; few-shot runs: {args.steps} steps, batch 4; {args.test_images} test images "
          "per ODinW dataset; seconds: "
          + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
