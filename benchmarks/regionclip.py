"""RegionCLIP on the shapes world's open-vocabulary split: the paper's ablations, the held-out-word test over
several seeds, and zero-shot region classification.

    python benchmarks/regionclip.py [--steps 100] [--teacher-steps 200] [--seeds 3] [--images 150] \\
        [--out outputs/regionclip_bench]

Stages (step-based, so the numbers do not depend on the machine's speed): concept pool (captions of the "all"
split, novel combinations included) -> stand-in teacher (image-caption InfoNCE into MiniLM's space; no CLIP
weights can be installed here) -> class-agnostic RPN (base boxes only) -> student pretraining -> transfer to
detection on base categories -> AP50 on the val split (40% novel objects).

Shared across every variant and seed, as the paper's protocol allows: the concept pool (it is defined by the
caption corpus), the teacher (RegionCLIP uses one fixed CLIP) and the RPN (RegionCLIP trains one offline RPN on
base boxes). Pretraining does not depend on transfer's classes, so the held-out-word runs reuse the pretrained
students of the standard split.

Transfer, by default, puts the caption concepts into a foreground RoI's softmax as negatives and ensembles the
detector with its frozen pretrained student at test time (ViLD's weights: 2/3 for classes without training boxes,
1/3 for the training classes); "as before the fix" runs train with ``pool_negatives=False`` and score with the
detector alone.

Tables:
1. Standard split (seed 0): (a) transfer without region pretraining, (b) with it (RPN regions, all three losses),
   (b) without the ensemble, (b) without concept negatives, (b') ImageNet start with the student only as the
   ensemble partner, (c) without distillation, (d) random-crop regions instead of RPN proposals, (e) without the
   image-text contrastive loss, (f) without focal scaling in transfer, and the pretrained student zero-shot.
2. Held-out word (``--held-out-word hexagon``): transfer sees no box of any class containing it, while the
   captions behind the concept pool, teacher and pretraining name it; mean +- std over ``--seeds`` seeds of
   (a) no pretraining (before and after the fix), (b) pretraining as before the fix, (c) pretraining + the fix
   (and without its ensemble), (c') the fix from an ImageNet start with the student only as the ensemble partner,
   (d) the pretrained student zero-shot; then (c) and (c') against (a), seed by seed.
3. Zero-shot region classification with ground-truth boxes (top-1 over the 48 classes), teacher and student.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

from _common import print_table  # noqa: E402

PRETRAIN = {  # student variants of the standard-split ablation
    "b": dict(region_source="rpn"),
    "c": dict(region_source="rpn", distill_weight=0.0),
    "d": dict(region_source="random"),
    "e": dict(region_source="rpn", image_weight=0.0),
}


def stage(path: Path, train, what: str, timings: dict) -> Path:
    """Run ``train()`` unless ``path`` exists; record its wall time."""
    if path.is_file():
        print(f"reusing {what}: {path}", flush=True)
        return path
    print(f"training {what} ...", flush=True)
    start = time.time()
    out = train()
    timings[what] = time.time() - start
    return out


def mean_std(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.3f}"


def versus(per: dict, run: str, base: str, word: str, label: str) -> str:
    """How run ``run`` of the held-out table compares with run ``base``, seed by seed."""
    gain = [x - y for x, y in zip(per[run]["held"], per[base]["held"])]
    gap = [x - y for x, y in zip(per[run]["seen"], per[base]["seen"])]
    wins = sum(g > 0 for g in gain)
    return (
        f"{label} - ({base}): {word} AP50 {mean_std(gain)} (a gain in {wins}/{len(gain)} seeds), "
        f"training classes AP50 {mean_std(gap)}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out", default="outputs/regionclip_bench", help="run directory (finished stages are reused)"
    )
    parser.add_argument(
        "--steps", type=int, default=100, help="training steps of the RPN, pretraining and transfer"
    )
    parser.add_argument("--teacher-steps", type=int, default=200, help="teacher steps")
    parser.add_argument("--seeds", type=int, default=3, help="seeds of the held-out-word table")
    parser.add_argument("--images", type=int, default=150, help="val images for every evaluation")
    parser.add_argument("--backbone", default="efficientnet_lite0", help="backbone of every network")
    parser.add_argument(
        "--held-out-word", default="hexagon", help="the word no transfer box names ('' skips)"
    )
    parser.add_argument("--fresh", action="store_true", help="delete --out first")
    args = parser.parse_args(argv)

    import torch

    from openglip.regionclip import ConceptPool, load_region_teacher, load_sentence_encoder, load_student
    from openglip.regionclip.config import (
        ConceptConfig,
        PretrainConfig,
        RPNConfig,
        TeacherConfig,
        TransferConfig,
    )
    from openglip.regionclip.evaluate import (
        evaluate_detector,
        evaluate_zero_shot,
        evaluation_data,
        region_classification,
    )
    from openglip.regionclip.train import (
        default_train_config,
        run_concepts,
        run_pretrain,
        run_rpn,
        run_teacher,
        run_transfer,
    )
    from openglip.shapes import BASE, CATEGORIES

    root = Path(args.out)
    if args.fresh and root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    text = load_sentence_encoder()
    timings: dict[str, float] = {}
    arch = dict(backbone=args.backbone)
    val = evaluation_data(num_images=args.images)

    def train_cfg(kind: str, out: Path, steps: int, seed: int = 0):
        return default_train_config(kind, str(out), max_steps=steps, checkpoint_every=0, seed=seed)

    pool_path = root / "concepts.safetensors"

    def build_pool() -> Path:
        run_concepts(ConceptConfig(), pool_path, text=text)
        return pool_path

    stage(pool_path, build_pool, "concept pool", timings)
    pool = ConceptPool.load(pool_path)
    teacher = stage(
        root / "teacher" / "model.safetensors",
        lambda: run_teacher(
            TeacherConfig(**arch, concepts=str(pool_path)),
            train_cfg("teacher", root / "teacher", args.teacher_steps),
            text=text,
            device="cpu",
        ),
        "teacher",
        timings,
    )
    rpn = stage(
        root / "rpn" / "model.safetensors",
        lambda: run_rpn(RPNConfig(**arch), train_cfg("rpn", root / "rpn", args.steps), device="cpu"),
        "rpn",
        timings,
    )
    paths = dict(concepts=str(pool_path), rpn=str(rpn))

    def pretrain(key: str, seed: int) -> str:
        run = root / f"student_{key}_s{seed}"
        cfg = PretrainConfig(**arch, **paths, teacher=str(teacher), **PRETRAIN[key])
        return str(stage(
            run / "model.safetensors",
            lambda: run_pretrain(cfg, train_cfg("pretrain", run, args.steps, seed), text=text, device="cpu"),
            f"pretraining ({key}, seed {seed})",
            timings,
        ))  # fmt: skip

    def transfer(name: str, seed: int, student: str = "", classes=None, **changes) -> Path:
        run = root / f"detector_{name}_s{seed}"
        cfg = TransferConfig(**arch, **paths, student=student, **changes)
        return stage(
            run / "model.safetensors",
            lambda: run_transfer(
                cfg, train_cfg("transfer", run, args.steps, seed), text=text, device="cpu", classes=classes
            ),
            f"transfer ({name}, seed {seed})",
            timings,
        )

    def ap(metrics: dict) -> list[str]:
        return [f"{metrics['novel/AP50']:.3f}", f"{metrics['base/AP50']:.3f}", f"{metrics['AP50']:.3f}"]

    # -- 1. held-out word, several seeds --------------------------------------------------------------------
    results: dict = {"standard": {}, "held_out": {}, "regions": {}}
    students = {"b": pretrain("b", 0)}
    held_rows, word, verdict = [], args.held_out_word, ""
    if word:
        held = [c for c in CATEGORIES if word in c.split()]
        if not held:
            parser.error(f"no shapes category contains the word {word!r}")
        seen = [c for c in BASE if c not in held]
        splits = {"held": held, "seen": seen}
        off = dict(unseen_weight=0.0, seen_weight=0.0)  # the detector's own scores, no ensemble
        titles = {
            "a0": "(a) transfer without region pretraining, as before the fix",
            "a": "(a) transfer without region pretraining (concept negatives)",
            "b": "(b) transfer with region pretraining, as before the fix",
            "c0": "    (c) without the ensemble (concept negatives only)",
            "c": "(c) (b) + the fix: concept negatives + student ensemble",
            "p": "(c') the fix from ImageNet: the student only as ensemble partner",
            "d": "(d) pretrained student, zero-shot (no transfer)",
        }
        per = {k: {"held": [], "seen": []} for k in titles}
        for seed in range(args.seeds):
            student = pretrain("b", seed)
            before = dict(classes=seen, pool_negatives=False)
            runs = {
                "a0": transfer(f"a_plain_no_{word}", seed, "", **before),
                "a": transfer(f"a_no_{word}", seed, "", classes=seen),
                "b": transfer(f"b_plain_no_{word}", seed, student, **before),
                "c": transfer(f"b_no_{word}", seed, student, classes=seen),
                "p": transfer(f"p_no_{word}", seed, student, classes=seen, init_from_student=False),
            }
            print(f"evaluating held-out word, seed {seed} ...", flush=True)
            for key, m in (
                ("a0", evaluate_detector(runs["a0"], val, text=text, extra_splits=splits)),
                ("a", evaluate_detector(runs["a"], val, text=text, extra_splits=splits)),
                ("b", evaluate_detector(runs["b"], val, text=text, extra_splits=splits, **off)),
                ("c0", evaluate_detector(runs["c"], val, text=text, extra_splits=splits, **off)),
                ("c", evaluate_detector(runs["c"], val, text=text, extra_splits=splits)),
                ("p", evaluate_detector(runs["p"], val, text=text, extra_splits=splits)),
                ("d", evaluate_zero_shot(rpn, val, student=student, text=text, extra_splits=splits)),
            ):
                per[key]["held"].append(m["held/AP50"])
                per[key]["seen"].append(m["seen/AP50"])
        for key, title in titles.items():
            held_rows.append([title, mean_std(per[key]["held"]), mean_std(per[key]["seen"])])
        verdict = "\n".join(
            versus(per, run, "a", word, label) for run, label in (("c", "(c)"), ("p", "(c')"))
        )
        print_table(
            ["variant", f"{word} classes AP50", f"{len(seen)} training classes AP50"],
            held_rows,
            title=f"Held-out word {word!r}: no box of its {len(held)} classes in transfer; captions (and so "
            f"pretraining) name it. Mean ± std over {args.seeds} seeds:",
        )
        print(verdict)
        (root / "results.json").write_text(json.dumps(results, indent=1, default=float))

    # -- 2. region classification with ground-truth boxes ----------------------------------------------------
    region_rows = []
    embedders = {
        "teacher (stand-in CLIP)": (load_region_teacher(teacher), pool.templates, pool.encoder),
        "pretrained student (b, seed 0)": (load_student(students["b"])[0], pool.templates, pool.encoder),
    }
    with torch.no_grad():
        for title, (embedder, templates, encoder) in embedders.items():
            acc = region_classification(embedder, val, templates=templates, encoder=encoder, text=text)
            results["regions"][title] = acc
            region_rows.append([title, f"{acc['novel/accuracy']:.3f}", f"{acc['base/accuracy']:.3f}",
                                f"{acc['accuracy']:.3f}"])  # fmt: skip

    print_table(
        ["model", "novel top-1", "base top-1", "all top-1"],
        region_rows,
        title="Zero-shot region classification with ground-truth boxes (48-way):",
    )
    (root / "results.json").write_text(json.dumps(results, indent=1, default=float))

    # -- 3. the standard split ------------------------------------------------------------------------------
    students.update({key: pretrain(key, 0) for key in PRETRAIN})
    rows = []
    runs = [
        ("(a) transfer without region pretraining", "a", "", {}, None),
        ("(b) transfer with region pretraining", "b", students["b"], {}, None),
        (
            "    (b) without the student ensemble",
            "b",
            students["b"],
            {},
            dict(seen_weight=0.0, unseen_weight=0.0),
        ),
        ("    (b) without concept negatives", "b_plain", students["b"], {"pool_negatives": False}, None),
        (
            "(b') (b) from ImageNet, the student only as ensemble partner",
            "b_partner",
            students["b"],
            {"init_from_student": False},
            None,
        ),
        ("(c) (b) without distillation", "c", students["c"], {}, None),
        ("(d) (b) with random-crop regions", "d", students["d"], {}, None),
        ("(e) (b) without image-text contrastive loss", "e", students["e"], {}, None),
        ("(f) (b) without focal scaling in transfer", "f", students["b"], {"focal_gamma": 0.0}, None),
    ]
    for title, name, student, changes, weights in runs:
        detector = transfer(name, 0, student, **changes)
        print(f"evaluating {title.strip()} ...", flush=True)
        m = evaluate_detector(detector, val, text=text, **(weights or {}))
        results["standard"][title.strip()] = m
        rows.append([title, *ap(m)])
    m = evaluate_zero_shot(rpn, val, student=students["b"], text=text)
    results["standard"]["zero-shot"] = m
    rows.append(["(b) pretrained student, zero-shot (no transfer)", *ap(m)])
    standard_rows = rows

    print_table(
        ["variant", "novel AP50", "base AP50", "all AP50"],
        standard_rows,
        title=f"RegionCLIP ablation, shapes open-vocabulary split ({args.images} val images, {args.backbone}, "
        f"{args.steps} steps per stage, teacher {args.teacher_steps}, concept pool of {len(pool)}, seed 0)",
    )
    if held_rows:
        print_table(
            ["variant", f"{word} classes AP50", f"{len(seen)} training classes AP50"],
            held_rows,
            title=f"Held-out word {word!r}: no box of its {len(held)} classes in transfer; captions (and so "
            f"pretraining) name it. Mean ± std over {args.seeds} seeds:",
        )
        print(verdict)
    print_table(
        ["model", "novel top-1", "base top-1", "all top-1"],
        region_rows,
        title="Zero-shot region classification with ground-truth boxes (48-way):",
    )
    print("\nstage wall times: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in timings.items()))
    report = {**results, "timings_s": timings, "args": vars(args)}
    (root / "results.json").write_text(json.dumps(report, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
