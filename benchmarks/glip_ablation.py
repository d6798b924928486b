"""GLIP's ablation ladder on the shapes world: does each of the paper's ingredients add to zero-shot transfer?

    python benchmarks/glip_ablation.py [--seeds 0,1,2] [--steps 480] [--images 200] [--threshold 0.3]

GLIP (Li et al., CVPR 2022, Table 1 / Sec. 4.1) climbs from GLIP-T (A) to GLIP-T:

* (A) DyHead with the region-word alignment loss, late fusion (``fusion=late``: no cross-attention and no
  text layers in the tower; the text meets the image only in the head's dot product), detection data only;
* (B) + language-aware deep fusion (``fusion=deep``), detection data only;
* (C) + gold grounding data in pre-training;
* GLIP-T: a student trained on gold + image-caption pairs pseudo-labelled by teacher (C) (``openglip label``).

The shapes world stands in for the corpora (:mod:`openglip.shapes.ladder`, ``openglip data ladder``):

* Objects365 -> ``detection.coco.json``: boxes of circles, squares, triangles and stars (base colours only), class
  prompts with sampled negatives;
* GoldG -> ``grounding.odvg.jsonl``: referring and listing captions with a box per phrase; hexagons appear here and
  in no detection image;
* Cap4M -> ``captions.jsonl``: listing captions without boxes; crosses appear here and in no boxed corpus;
* held out of every corpus: the 8 novel combinations (red hexagon, green star, blue triangle, yellow cross, purple
  circle, orange square, white triangle, black star).

Every rung trains glip_nano with the shapes demo's recipe (``ladder.json``: 480 steps of 8 images, lr 5e-4, frozen
MiniLM, EMA; about 8 minutes on 2 CPU cores) from the same pretrained parts; the student starts from them too, as
in GLIP. Each rung is evaluated zero-shot on 200 images of the shapes val split (the standard 48-category prompt):
novel AP50 (the 8 held-out combinations, also "red hexagon" and "yellow cross" alone) and grounding R@1 on the
referring captions. Each seed renders its own corpora and trains with its own seed. Results are kept per (seed,
rung) under ``--out``: a rerun continues where a stopped one ended.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from _common import print_table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

RUNGS = ("A", "B", "C", "student")
LABELS = {
    "A": "GLIP-T (A): late fusion, detection data",
    "B": "GLIP-T (B): + deep fusion",
    "C": "GLIP-T (C): + grounding data",
    "student": "GLIP-T: + captions pseudo-labelled by (C)",
}
COLUMNS = ("novel/AP50", "R@1", "red hexagon/AP50", "yellow cross/AP50", "base/AP50")
DIRECTIONS = (
    ("A", "B", "deep fusion helps"),
    ("B", "C", "grounding data helps"),
    ("C", "student", "self-training helps"),
)


def rung_configs(paths: dict, rung: str, seed: int, steps: int, out: Path):
    """(ModelConfig, TrainConfig, GLIPTaskConfig) of a rung: the recipe of ``ladder.json`` with the rung's fusion and data."""
    from openglip.run_config import load_run_config

    data = {
        "A": [paths["detection"]],
        "B": [paths["detection"]],
        "C": [paths["detection"], paths["grounding"]],
        "student": [paths["detection"], paths["grounding"], paths["pseudo"]],
    }[rung]
    overrides = [f"fusion={'late' if rung == 'A' else 'deep'}", f"seed={seed}", f"max_steps={steps}"]
    model_cfg, train_cfg, task_cfg = load_run_config(paths["recipe"], overrides)
    train_cfg = dataclasses.replace(train_cfg, data=",".join(str(p) for p in data), out_dir=str(out))
    return model_cfg, train_cfg, task_cfg


def evaluate(weights: Path, images: int) -> dict:
    """Zero-shot metrics on the shapes val split: AP50 on every split of interest and grounding R@1."""
    from openglip.api import load_model
    from openglip.engine.evaluate import evaluate_detection, evaluate_grounding
    from openglip.shapes import CATEGORIES, NOVEL
    from openglip.shapes.evaluation import shapes_eval_set
    from openglip.shapes.ladder import CAPTION_SHAPES, GROUNDING_SHAPES

    det = load_model(str(weights), device="cpu")
    gt, imgs, items = shapes_eval_set(images)
    ids = {c["name"]: c["id"] for c in gt["categories"]}
    splits = {
        "novel": [ids[n] for n in NOVEL],
        "base": [ids[n] for n in CATEGORIES if n not in NOVEL],
        "red hexagon": [ids["red hexagon"]],
        "yellow cross": [ids["yellow cross"]],
        "grounding-only shapes": [ids[n] for n in CATEGORIES if n.split()[1] in GROUNDING_SHAPES],
        "caption-only shapes": [ids[n] for n in CATEGORIES if n.split()[1] in CAPTION_SHAPES],
    }
    metrics, _ = evaluate_detection(det, gt, imgs, splits=splits)
    metrics.update(evaluate_grounding(det, items))
    return metrics


def run_rung(paths: dict, rung: str, seed: int, steps: int, images: int, root: Path) -> dict:
    """Train and evaluate one rung (or read its cached result)."""
    from openglip.tasks import train

    out = root / rung
    done = out / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    model_cfg, train_cfg, task_cfg = rung_configs(paths, rung, seed, steps, out)
    start = time.time()
    train(model_cfg, train_cfg, task_cfg, overwrite=True, device="cpu")
    seconds = time.time() - start
    result = {"train_s": seconds, **evaluate(out / "model.safetensors", images)}
    done.write_text(json.dumps(result, indent=1))
    return result


def pseudo_label(paths: dict, teacher: Path, threshold: float, root: Path) -> dict:
    """Teacher (C) grounds the caption corpus' noun phrases; boxes scoring >= ``threshold`` become pseudo labels."""
    from openglip.data.captions import read_captions
    from openglip.engine.label import label_pairs
    from openglip.prompts import get_extractor
    from openglip.shapes.ladder import pseudo_label_quality
    from openglip.teachers import load_teacher

    done = root / "pseudo.json"
    # cached labels are kept; their quality is re-read (cheap, and the scoring may have improved)
    if done.exists():
        return {
            **json.loads(done.read_text()),
            **pseudo_label_quality(paths["pseudo"], paths["captions_truth"]),
        }
    pairs, _ = read_captions(paths["captions"])
    start = time.time()
    stats = label_pairs(pairs, load_teacher(str(teacher), device="cpu"), paths["pseudo"],
                        extractor=get_extractor("rule"), threshold=threshold, log=lambda *a: None)  # fmt: skip
    quality = pseudo_label_quality(paths["pseudo"], paths["captions_truth"])
    result = {"label_s": time.time() - start, "boxes": stats.boxes, **quality}
    done.write_text(json.dumps(result, indent=1))
    return result


def mean_std(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.3f}" if values else "-"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=480, help="optimiser steps per rung (batch 8)")
    parser.add_argument("--images", type=int, default=200, help="shapes val images for evaluation")
    parser.add_argument("--threshold", type=float, default=0.3, help="pseudo-label score threshold")
    parser.add_argument("--detection-images", type=int, default=3000)
    parser.add_argument("--grounding-images", type=int, default=1500)
    parser.add_argument("--caption-images", type=int, default=2000)
    parser.add_argument(
        "--rungs", default=",".join(RUNGS), help="a subset of A,B,C,student (student needs C)"
    )
    parser.add_argument("--out", default="outputs/glip_ablation")
    args = parser.parse_args()
    rungs = [r for r in RUNGS if r in args.rungs.split(",")]
    if "student" in rungs and "C" not in rungs:
        parser.error("the student needs teacher C: --rungs must include C")
    torch.set_num_threads(2)
    from openglip.shapes.ladder import write_ladder

    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    results: dict[str, list[dict]] = {r: [] for r in rungs}
    labels: list[dict] = []
    for seed in seeds:
        root = Path(args.out) / f"seed{seed}"
        data = root / "data"
        if not (data / "ladder.json").exists():
            write_ladder(data, detection_images=args.detection_images, grounding_images=args.grounding_images,
                         caption_images=args.caption_images, seed=seed)  # fmt: skip
        paths = {k: data / v for k, v in (("detection", "detection.coco.json"), ("grounding", "grounding.odvg.jsonl"),
                 ("captions", "captions.jsonl"), ("captions_truth", "captions.truth.odvg.jsonl"),
                 ("recipe", "ladder.json"), ("pseudo", "pseudo.odvg.jsonl"))}  # fmt: skip
        for rung in rungs:
            if rung == "student":
                labels.append(pseudo_label(paths, root / "C" / "model.safetensors", args.threshold, root))
            results[rung].append(run_rung(paths, rung, seed, args.steps, args.images, root))
            r = results[rung][-1]
            print(f"seed {seed} {rung}: novel AP50 {r['novel/AP50']:.3f}  R@1 {r['R@1']:.3f}", flush=True)

    n = len(seeds)
    rows = []
    for rung in rungs:
        rs = results[rung]
        cols = [mean_std([r[k] for r in rs]) for k in COLUMNS]
        minutes = statistics.mean(r["train_s"] for r in rs) / 60
        rows.append((LABELS[rung], *cols, f"{minutes:.1f} min"))
    print_table(
        (
            "model",
            "novel AP50",
            "grounding R@1",
            "red hexagon AP50",
            "yellow cross AP50",
            "base AP50",
            "train",
        ),
        rows,
        f"GLIP's ablation ladder on the shapes world: glip_nano, {args.steps} steps per rung, mean ± std over {n} "
        f"seeds ({args.images} val images, zero-shot on the 8 novel combinations)",
    )
    rows = []
    for lo, hi, claim in [d for d in DIRECTIONS if d[0] in rungs and d[1] in rungs]:
        for key, name in (("novel/AP50", "novel AP50"), ("R@1", "R@1")):
            diffs = [h[key] - low[key] for low, h in zip(results[lo], results[hi])]
            held = sum(d > 0 for d in diffs)
            verdict = "held" if statistics.mean(diffs) > 0 and held > n / 2 else "did not hold"
            rows.append(
                (f"{lo} < {hi}: {claim}", name, f"{statistics.mean(diffs):+.3f}", f"{held}/{n}", verdict)
            )
    print_table(("paper's direction", "metric", "mean gain", "seeds with a gain", "verdict"), rows,
                "Which of the paper's directions held")  # fmt: skip
    if not labels:
        return
    rows = [(f"seed {s}", str(lab["boxes"]), f"{lab['all/precision']:.3f}", f"{lab['all/recall']:.3f}",
             f"{lab['caption-only/precision']:.3f}", f"{lab['caption-only/recall']:.3f}", f"{lab['label_s']:.0f} s")
            for s, lab in zip(seeds, labels)]  # fmt: skip
    print_table(
        ("teacher (C)", "pseudo boxes", "precision", "recall", "cross precision", "cross recall", "time"),
        rows,
        f"Pseudo labels of the caption corpus (threshold {args.threshold}; right = IoU >= 0.5 with a true box of "
        "the same phrase)",
    )


if __name__ == "__main__":
    main()
