"""``openglip regionclip concepts | teacher | rpn | pretrain | transfer | evaluate``.

A full run on the shapes world (each training stage accepts ``--resume`` and ``key=value`` overrides of its
stage config or of :class:`~openglip.config.TrainConfig`; under ``torchrun`` every process trains a shard)::

    openglip regionclip concepts --out runs/rc
    openglip regionclip teacher  --out runs/rc/teacher  --concepts runs/rc/concepts.safetensors
    openglip regionclip rpn      --out runs/rc/rpn
    openglip regionclip pretrain --out runs/rc/student  --concepts runs/rc/concepts.safetensors \\
        --teacher runs/rc/teacher/model.safetensors --rpn runs/rc/rpn/model.safetensors
    openglip regionclip transfer --out runs/rc/detector --concepts runs/rc/concepts.safetensors \\
        --rpn runs/rc/rpn/model.safetensors --student runs/rc/student/model.safetensors
    openglip regionclip evaluate --detector runs/rc/detector/model.safetensors

Bad input raises ``ValueError`` / ``FileNotFoundError`` with one clear message (the ``openglip`` CLI prints it).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import UsageError


def _common(p: argparse.ArgumentParser, *, trains: bool) -> None:
    p.add_argument("overrides", nargs="*", help="key=value overrides of the stage config or TrainConfig")
    p.add_argument("--out", required=True, help="run directory")
    if trains:
        p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
        p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")


def register(subparsers) -> None:
    """Add ``regionclip`` and its sub-commands to an ``argparse`` sub-parser set."""
    top = subparsers.add_parser(
        "regionclip",
        help="RegionCLIP: region-text pretraining from captions, open-vocabulary transfer",
        description="RegionCLIP (Zhong et al., 2022) on the shapes world: build the concept pool, train the "
        "teacher and the RPN, pretrain the student on region-concept pseudo labels, transfer it to "
        "open-vocabulary detection, and evaluate novel/base AP50.",
    )
    sub = top.add_subparsers(dest="regionclip_command", metavar="STAGE")
    sub.required = True

    p = sub.add_parser("concepts", help="parse and embed the concept pool of the caption corpus")
    _common(p, trains=False)
    p.set_defaults(func=cmd_concepts)

    p = sub.add_parser("teacher", help="train the image-text contrastive teacher (stands in for CLIP)")
    _common(p, trains=True)
    p.add_argument("--concepts", help="concept pool file")
    p.set_defaults(func=cmd_teacher)

    p = sub.add_parser("rpn", help="train the class-agnostic RPN on base-category boxes")
    _common(p, trains=True)
    p.set_defaults(func=cmd_rpn)

    p = sub.add_parser("pretrain", help="region-text pretraining of the student")
    _common(p, trains=True)
    p.add_argument("--concepts", help="concept pool file")
    p.add_argument("--teacher", help="trained teacher weights")
    p.add_argument("--rpn", help="trained RPN weights")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("transfer", help="train the open-vocabulary detector on base categories")
    _common(p, trains=True)
    p.add_argument("--concepts", help="concept pool file")
    p.add_argument("--rpn", help="trained RPN weights")
    p.add_argument("--student", help="pretrained student weights (default: ImageNet initialisation)")
    p.add_argument("--eval-images", type=int, default=0, help="evaluate on this many val images at the end")
    p.set_defaults(func=cmd_transfer)

    p = sub.add_parser("evaluate", help="novel/base/all AP50 on the shapes val split")
    p.add_argument("--detector", help="transferred detector weights")
    p.add_argument("--student", help="pretrained student weights (zero-shot; needs --rpn)")
    p.add_argument("--rpn", help="RPN weights (zero-shot)")
    p.add_argument("--images", type=int, default=200, help="val images")
    p.add_argument("--out", help="also write the metrics as JSON here")
    p.set_defaults(func=cmd_evaluate)


def _stage(stage: str, cfg, args, **paths):
    """The stage config and TrainConfig from the defaults, the path options and the overrides."""
    import dataclasses

    from ..config import split_overrides
    from .train import default_train_config

    cfg = dataclasses.replace(cfg, **{k: v for k, v in paths.items() if v})
    train_cfg = default_train_config(stage, args.out)
    return tuple(split_overrides(args.overrides, cfg, train_cfg))


def _print(metrics: dict, title: str) -> None:
    from ..metrics import format_table

    print(
        format_table(
            {k: v for k, v in metrics.items() if isinstance(v, float) and k not in ("lr", "time")},
            title=title,
        )
    )


def cmd_concepts(args) -> int:
    from ..config import apply_overrides
    from .config import ConceptConfig
    from .train import run_concepts

    cfg = apply_overrides(ConceptConfig(), args.overrides)
    path = Path(args.out) / "concepts.safetensors"
    pool = run_concepts(cfg, path)
    shown = ", ".join(f"{n} ({c})" for n, c in zip(pool.names[:8], pool.counts[:8]))
    print(f"{len(pool)} concepts (min_count={cfg.min_count}): {shown}, ...")
    print(f"concept pool: {path}")
    return 0


def _done(path: Path, stage: str) -> int:
    from ..distributed import init_distributed

    if init_distributed(__import__("torch").device("cpu")).is_main:
        print(f"{stage} weights: {path}")
    return 0


def cmd_teacher(args) -> int:
    from .config import TeacherConfig
    from .train import run_teacher

    cfg, train_cfg = _stage("teacher", TeacherConfig(), args, concepts=args.concepts)
    return _done(run_teacher(cfg, train_cfg, resume=args.resume, device=args.device), "teacher")


def cmd_rpn(args) -> int:
    from .config import RPNConfig
    from .train import run_rpn

    cfg, train_cfg = _stage("rpn", RPNConfig(), args)
    return _done(run_rpn(cfg, train_cfg, resume=args.resume, device=args.device), "rpn")


def cmd_pretrain(args) -> int:
    from .config import PretrainConfig
    from .train import run_pretrain

    cfg, train_cfg = _stage(
        "pretrain", PretrainConfig(), args, concepts=args.concepts, teacher=args.teacher, rpn=args.rpn
    )
    return _done(run_pretrain(cfg, train_cfg, resume=args.resume, device=args.device), "student")


def cmd_transfer(args) -> int:
    from .config import TransferConfig
    from .evaluate import evaluate_predictor
    from .train import run_transfer

    cfg, train_cfg = _stage(
        "transfer", TransferConfig(), args, concepts=args.concepts, rpn=args.rpn, student=args.student
    )
    evaluate_fn = None
    if args.eval_images > 0:

        def evaluate_fn(model, step):
            return evaluate_predictor(model.predict, num_images=args.eval_images, image_size=cfg.image_size)

    return _done(
        run_transfer(cfg, train_cfg, resume=args.resume, device=args.device, evaluate_fn=evaluate_fn),
        "detector",
    )


def cmd_evaluate(args) -> int:
    from ..files import write_text_atomic
    from .evaluate import evaluate_detector, evaluate_zero_shot, summary

    if bool(args.detector) == bool(args.student):
        raise UsageError("give either --detector FILE or --student FILE --rpn FILE")
    if args.student and not args.rpn:
        raise UsageError("zero-shot evaluation of --student needs the proposals of --rpn FILE")
    if args.images < 1:
        raise UsageError("--images must be at least 1")
    if args.detector:
        metrics, title = evaluate_detector(args.detector, num_images=args.images), f"detector {args.detector}"
    else:
        metrics, title = (
            evaluate_zero_shot(args.student, args.rpn, num_images=args.images),
            f"zero-shot {args.student}",
        )
    _print({**summary(metrics), **metrics}, title)
    if args.out:
        write_text_atomic(args.out, json.dumps(metrics, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m openglip.regionclip.cli STAGE ...``: the same as ``openglip regionclip STAGE ...``."""
    from ..cli import main as openglip_main

    return openglip_main(["regionclip", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
