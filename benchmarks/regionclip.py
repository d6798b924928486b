"""RegionCLIP on the shapes world's open-vocabulary split: the ablation table.

    python benchmarks/regionclip.py [--steps 150] [--images 200] [--out outputs/regionclip_bench]

Stages (all step-based, so the numbers do not depend on the machine's speed; ~45 min on 2 CPU cores):
  concept pool (captions of the "all" split, novel combinations included) -> teacher (image-caption InfoNCE into
  MiniLM's space, stands in for CLIP) -> class-agnostic RPN (base boxes only) -> student pretraining variants ->
  transfer to detection on base categories -> novel / base / all AP50 on the val split (40% novel objects).

Rows: (a) transfer without region pretraining (ImageNet-initialised student), (b) with region pretraining
(RPN regions, all three losses), (c) as (b) without the distillation loss, (d) as (b) with random-crop regions
instead of RPN proposals; plus (b) used zero-shot (no transfer). Diagnostics: the teacher's 48-way accuracy on
ground-truth regions and the RPN's recall, each for base and novel objects. Finished stages are reused from
``--out`` (delete it, or pass ``--fresh``, to retrain).

A second table holds out a word (``--held-out-word hexagon``): transfer sees no box of any class containing it,
while the captions behind the concept pool, teacher and pretraining name it. Measured here: the pretrained
student used zero-shot finds hexagons (0.92 AP50), but after closed-set transfer the never-trained hexagon
embeddings attract nearly every region (the pool-centred text space has one direction per shape word, and a
region pushed away from the seen shapes points towards the missing one), so transfer loses what pretraining
learnt. Calibrating unseen classes (or transfer against the whole pool as negatives) is the next thing to try.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

VARIANTS = {
    "a": ("transfer without region pretraining", None),
    "b": ("transfer with region pretraining", dict(region_source="rpn")),
    "c": ("  (b) without distillation loss", dict(region_source="rpn", distill_weight=0.0)),
    "d": ("  (b) with random-crop regions", dict(region_source="random")),
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


@torch.no_grad()
def teacher_accuracy(teacher_path: Path, pool_path: Path, text, images: int) -> dict[str, float]:
    """48-way accuracy of the teacher on the val split's ground-truth regions (crops vs class-name embeddings)."""
    from openglip.data.shapes import CATEGORIES, NOVEL, ShapesWorld
    from openglip.regionclip import ConceptPool, load_teacher
    from openglip.regionclip.evaluate import VAL_SEED
    from openglip.regionclip.features import image_to_tensor

    teacher, pool = load_teacher(teacher_path), ConceptPool.load(pool_path)
    names = pool.embed(CATEGORIES, text)
    world = ShapesWorld(split="val", image_size=128, seed=VAL_SEED)
    samples = [world.sample(i) for i in range(images)]
    emb = teacher.embed_regions(
        torch.stack([image_to_tensor(s.image) for s in samples]), [torch.from_numpy(s.boxes) for s in samples]
    )
    labels = torch.cat([torch.from_numpy(s.labels) for s in samples])
    correct = (emb @ names.t()).argmax(1) == labels
    novel = torch.tensor([CATEGORIES[i] in NOVEL for i in labels])
    return {"base": correct[~novel].float().mean().item(), "novel": correct[novel].float().mean().item()}


@torch.no_grad()
def proposal_recall(rpn_path: Path, images: int, top: int = 100) -> dict[str, float]:
    """Fraction of val boxes covered (IoU >= 0.5) by one of the RPN's proposals, base and novel objects."""
    from torchvision.ops import box_iou

    from openglip.data.shapes import CATEGORIES, NOVEL, ShapesWorld
    from openglip.regionclip import load_rpn
    from openglip.regionclip.evaluate import VAL_SEED
    from openglip.regionclip.features import image_to_tensor

    rpn = load_rpn(rpn_path)
    world = ShapesWorld(split="val", image_size=128, seed=VAL_SEED)
    hits = {"base": [], "novel": []}
    for start in range(0, images, 16):
        samples = [world.sample(i) for i in range(start, min(images, start + 16))]
        boxes, _, _ = rpn(torch.stack([image_to_tensor(s.image) for s in samples]))
        for s, props in zip(samples, boxes):
            if len(s.boxes) == 0:
                continue
            best = (
                box_iou(torch.from_numpy(s.boxes), props[:top]).amax(1)
                if len(props)
                else torch.zeros(len(s.boxes))
            )
            for label, iou in zip(s.labels, best.tolist()):
                hits["novel" if CATEGORIES[label] in NOVEL else "base"].append(iou >= 0.5)
    return {k: sum(v) / max(len(v), 1) for k, v in hits.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out", default="outputs/regionclip_bench", help="run directory (finished stages are reused)"
    )
    parser.add_argument("--steps", type=int, default=150, help="training steps of every stage")
    parser.add_argument("--teacher-steps", type=int, help="teacher steps (default: --steps)")
    parser.add_argument("--images", type=int, default=200, help="val images for every evaluation")
    parser.add_argument("--backbone", default="efficientnet_lite0", help="backbone of every network")
    parser.add_argument("--variants", default="abcd", help="which ablation rows to run")
    parser.add_argument(
        "--held-out-word",
        default="hexagon",
        help="also transfer without any class containing this word ('' skips)",
    )
    parser.add_argument("--fresh", action="store_true", help="delete --out first")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from openglip.regionclip import ConceptPool, load_text_encoder
    from openglip.regionclip.config import (
        ConceptConfig,
        PretrainConfig,
        RPNConfig,
        TeacherConfig,
        TransferConfig,
    )
    from openglip.regionclip.evaluate import evaluate_detector, evaluate_zero_shot, summary
    from openglip.regionclip.train import (
        default_train_config,
        run_concepts,
        run_pretrain,
        run_rpn,
        run_teacher,
        run_transfer,
    )

    root = Path(args.out)
    if args.fresh and root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    text = load_text_encoder()
    timings: dict[str, float] = {}
    arch = dict(backbone=args.backbone)

    def train_cfg(kind: str, out: Path, steps: int | None = None):
        return default_train_config(kind, str(out), max_steps=steps or args.steps, checkpoint_every=0)

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
        lambda: run_rpn(RPNConfig(**arch), train_cfg("rpn", root / "rpn"), device="cpu"),
        "rpn",
        timings,
    )
    paths = dict(concepts=str(pool_path), rpn=str(rpn))
    rows, students = {}, {}
    for key in args.variants:
        title, pretrain = VARIANTS[key]
        student = ""
        if pretrain is not None:
            cfg = PretrainConfig(**arch, **paths, teacher=str(teacher), **pretrain)
            student = str(
                stage(
                    root / f"student_{key}" / "model.safetensors",
                    lambda cfg=cfg, key=key: run_pretrain(
                        cfg, train_cfg("pretrain", root / f"student_{key}"), text=text, device="cpu"
                    ),
                    f"pretraining ({key})",
                    timings,
                )
            )
            students[key] = student
        detector = stage(
            root / f"detector_{key}" / "model.safetensors",
            lambda student=student, key=key: run_transfer(
                TransferConfig(**arch, **paths, student=student),
                train_cfg("transfer", root / f"detector_{key}"),
                text=text,
                device="cpu",
            ),
            f"transfer ({key})",
            timings,
        )
        print(f"evaluating ({key}) ...", flush=True)
        rows[f"({key}) {title}"] = summary(evaluate_detector(detector, text=text, num_images=args.images))
    if "b" in students:
        print("evaluating (b) zero-shot ...", flush=True)
        zero = evaluate_zero_shot(students["b"], rpn, text=text, num_images=args.images)
        rows["(b) pretrained student, zero-shot (no transfer)"] = summary(zero)

    # The paper's premise in its pure form: a concept that captions name but no box label does. Every class with
    # the held-out word is removed from transfer (its objects become background); pretraining saw it in captions.
    held_rows = {}
    if args.held_out_word and "b" in students:
        from openglip.data.shapes import BASE, CATEGORIES

        word = args.held_out_word
        held = [c for c in CATEGORIES if word in c.split()]
        if not held:
            parser.error(f"no shapes category contains the word {word!r}")
        seen = [c for c in BASE if c not in held]
        splits = {"held": held, "other": [c for c in CATEGORIES if c not in held]}
        runs = (("a", "", "none"), ("b", students["b"], "none"), ("b", students["b"], "backbone,head"))
        for key, student, freeze in runs:
            run = (
                root / f"detector_{key}_no_{word}"
                if freeze == "none"
                else root / f"detector_{key}_no_{word}_frozen"
            )
            detector = stage(
                run / "model.safetensors",
                lambda student=student, run=run, freeze=freeze: run_transfer(
                    TransferConfig(**arch, **paths, student=student),
                    dataclasses.replace(train_cfg("transfer", run), freeze=freeze),
                    text=text,
                    device="cpu",
                    classes=seen,
                ),
                f"transfer ({key}) without {word} boxes, frozen: {freeze}",
                timings,
            )
            print(f"evaluating ({key}) without {word} boxes ...", flush=True)
            m = evaluate_detector(detector, text=text, num_images=args.images, extra_splits=splits)
            title = VARIANTS[key][0] + ("" if freeze == "none" else f", {freeze} frozen")
            held_rows[f"({key}) {title}"] = {"held": m["held/AP50"], "other": m["other/AP50"]}
        m = evaluate_zero_shot(students["b"], rpn, text=text, num_images=args.images, extra_splits=splits)
        held_rows["(b) pretrained student, zero-shot (no transfer)"] = {
            "held": m["held/AP50"],
            "other": m["other/AP50"],
        }

    t_acc = teacher_accuracy(teacher, pool_path, text, args.images)
    recall = proposal_recall(rpn, args.images)

    print()
    print(f"RegionCLIP ablation, shapes open-vocabulary split ({args.images} val images, {args.backbone}, "
          f"{args.steps} steps per stage, concept pool of {len(pool)})")  # fmt: skip
    width = max(len(k) for k in rows)
    print(f"| {'variant':<{width}} | novel AP50 | base AP50 | all AP50 |")
    print(f"|{'-' * (width + 2)}|-----------:|----------:|---------:|")
    for name, m in rows.items():
        print(f"| {name:<{width}} | {m['novel AP50']:10.3f} | {m['base AP50']:9.3f} | {m['all AP50']:8.3f} |")
    if held_rows:
        print()
        print(
            f"Held-out word {word!r}: no box of its {len(held)} classes in transfer ({len(seen)} training classes);"
        )
        print("captions (and so pretraining) name it. AP50 on the val split:")
        width = max(len(k) for k in held_rows)
        head = f"{word} classes AP50"
        print(f"| {'variant':<{width}} | {head} | other classes AP50 |")
        print(f"|{'-' * (width + 2)}|{'-' * (len(head) + 1)}:|-------------------:|")
        for name, m in held_rows.items():
            print(f"| {name:<{width}} | {m['held']:{len(head)}.3f} | {m['other']:18.3f} |")
    print()
    diagnostics = {
        "teacher 48-way accuracy on ground-truth boxes": t_acc,
        "RPN recall@100 (IoU >= 0.5)": recall,
    }
    width = max(len(k) for k in diagnostics)
    print(f"| {'diagnostic':<{width}} |  base | novel |")
    print(f"|{'-' * (width + 2)}|------:|------:|")
    for name, d in diagnostics.items():
        print(f"| {name:<{width}} | {d['base']:.3f} | {d['novel']:.3f} |")
    print()
    print("stage wall times: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in timings.items()))
    report = {
        "rows": rows,
        "teacher_accuracy": t_acc,
        "rpn_recall": recall,
        "timings_s": timings,
        "args": vars(args),
    }
    (root / "results.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
