"""``openglip regionclip concepts | teacher | rpn | pretrain | transfer | evaluate``.

On the user's files (image-caption pairs; COCO detection JSON whose categories carry a base/novel split, or a
split file), with a CLIP teacher from a local file (without ``--data`` every stage uses the shapes world)::

    openglip regionclip concepts --out runs/rc --data captions.jsonl --encoder clip:RN50:RN50.pt
    openglip regionclip rpn      --out runs/rc/rpn --data train.json --split-file novel.txt
    openglip regionclip pretrain --out runs/rc/student --data captions.jsonl --concepts runs/rc/concepts.safetensors \\
        --teacher clip:RN50:RN50.pt --student-init clip:RN50:RN50.pt --rpn runs/rc/rpn/model.safetensors
    openglip regionclip transfer --out runs/rc/detector --data train.json --split-file novel.txt \\
        --concepts runs/rc/concepts.safetensors --rpn runs/rc/rpn/model.safetensors \\
        --student runs/rc/student/model.safetensors
    openglip regionclip evaluate --detector runs/rc/detector/model.safetensors --data val.json --split-file novel.txt

Each training stage accepts ``--resume`` and ``key=value`` overrides of its stage config or of
:class:`~openglip.config.TrainConfig`; under ``torchrun`` every process trains a shard.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from ..errors import UsageError
from . import regionclip_release


def _common(p: argparse.ArgumentParser, *, trains: bool, data: str) -> None:
    p.add_argument("overrides", nargs="*", help="key=value overrides of the stage config or TrainConfig")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--data", help=f"{data} (default: the built-in shapes world)")
    p.add_argument(
        "--image-root", help="folder the data file's image names are relative to (default: its folder)"
    )
    if trains:
        p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
        p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")


CAPTIONS = "image-caption pairs: caption JSONL ({filename, caption}) or COCO Captions JSON"
DETECTION = "COCO detection JSON; categories carry split base/novel (or give --split-file)"
SPLIT_FILE = "file naming the novel categories (JSON list or one name a line), e.g. the OV-COCO 48/17 split"


def register(subparsers) -> None:
    """Add ``regionclip`` and its sub-commands to an ``argparse`` sub-parser set."""
    top = subparsers.add_parser(
        "regionclip",
        help="RegionCLIP: region-text pretraining from captions, open-vocabulary transfer",
        description="RegionCLIP (Zhong et al., 2022): build the concept pool of a caption corpus, train the RPN "
        "(and, without CLIP weights, a stand-in teacher), pretrain the student on region-concept pseudo labels, "
        "transfer it to open-vocabulary detection, and evaluate novel/base AP50 and r/c/f AP.",
    )
    sub = top.add_subparsers(dest="regionclip_command", metavar="STAGE")
    sub.required = True

    p = sub.add_parser("concepts", help="parse and embed the concept pool of the caption corpus")
    _common(p, trains=False, data=CAPTIONS)
    p.add_argument("--encoder", help="sentence encoder: all-MiniLM-L6-v2 (default) or clip:ARCH:PATH")
    p.set_defaults(func=cmd_concepts)

    p = sub.add_parser("teacher", help="train the stand-in teacher (when you have no CLIP weights)")
    _common(p, trains=True, data=CAPTIONS)
    p.add_argument("--concepts", help="concept pool file")
    p.set_defaults(func=cmd_teacher)

    p = sub.add_parser("rpn", help="train the class-agnostic RPN on base-category boxes")
    _common(p, trains=True, data=DETECTION)
    p.add_argument("--split-file", help=SPLIT_FILE)
    p.set_defaults(func=cmd_rpn)

    p = sub.add_parser("pretrain", help="region-text pretraining of the student")
    _common(p, trains=True, data=CAPTIONS)
    p.add_argument("--concepts", help="concept pool file")
    p.add_argument("--teacher", help="trained teacher weights, or a CLIP teacher clip:ARCH:PATH")
    p.add_argument("--student-init", help="start the student from CLIP weights clip:ARCH:PATH (as the paper)")
    p.add_argument("--rpn", help="trained RPN weights")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("transfer", help="train the open-vocabulary detector on base categories")
    _common(p, trains=True, data=DETECTION)
    p.add_argument("--split-file", help=SPLIT_FILE)
    p.add_argument("--concepts", help="concept pool file")
    p.add_argument("--rpn", help="trained RPN weights")
    p.add_argument("--student", help="pretrained student weights (default: ImageNet initialisation)")
    p.set_defaults(func=cmd_transfer)

    p = sub.add_parser("evaluate", help="novel/base/all AP50 and r/c/f AP, or region classification accuracy")
    p.add_argument("--detector", help="transferred detector weights")
    p.add_argument("--student", help="pretrained student weights (zero-shot)")
    p.add_argument(
        "--teacher", help="teacher weights or clip:ARCH:PATH (zero-shot; a trained one needs --concepts)"
    )
    p.add_argument("--rpn", help="RPN weights (zero-shot detection)")
    p.add_argument("--concepts", help="concept pool file (the teacher's text space)")
    p.add_argument(
        "--protocol",
        choices=["detection", "regions"],
        default="detection",
        help="detection: AP on proposals; regions: top-1 accuracy of ground-truth boxes over the vocabulary",
    )
    p.add_argument("--data", help=DETECTION + " (default: the shapes val split)")
    p.add_argument("--image-root", help="folder the data file's image names are relative to")
    p.add_argument("--split-file", help=SPLIT_FILE)
    p.add_argument("--images", type=int, default=200, help="evaluate on the first N images")
    p.add_argument(
        "--image-size",
        type=int,
        help="longer side of the test images (default: the detector's setting; regions: 128)",
    )
    p.add_argument(
        "--unseen-weight", type=float, help="override the detector's unseen-class calibration (0: off)"
    )
    p.add_argument(
        "--seen-weight", type=float, help="override the detector's training-class calibration (0: off)"
    )
    p.add_argument("--out", help="also write the metrics as JSON here")
    p.set_defaults(func=cmd_evaluate)
    regionclip_release.register(sub)


def _stage(stage: str, cfg, args, **paths):
    """The stage config and TrainConfig from the defaults, the path options and the overrides."""
    from ..config import split_overrides
    from ..regionclip.train import default_train_config

    paths.update(data=args.data, image_root=args.image_root)
    cfg = dataclasses.replace(cfg, **{k: v for k, v in paths.items() if v})
    train_cfg = default_train_config(stage, args.out)
    return tuple(split_overrides(args.overrides, cfg, train_cfg))


def _print(metrics: dict, title: str) -> None:
    from ..metrics import format_table

    print(format_table({k: v for k, v in metrics.items() if isinstance(v, float)}, title=title))


def cmd_concepts(args) -> int:
    from ..config import apply_overrides
    from ..regionclip.config import ConceptConfig
    from ..regionclip.train import run_concepts

    paths = {"data": args.data, "image_root": args.image_root, "encoder": args.encoder}
    cfg = apply_overrides(
        dataclasses.replace(ConceptConfig(), **{k: v for k, v in paths.items() if v}), args.overrides
    )
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


def _train(stage: str, label: str, args, **paths) -> int:
    """Run a training stage: its config from the defaults, the path options and the overrides."""
    from ..regionclip import config, train

    default = {"teacher": config.TeacherConfig, "rpn": config.RPNConfig, "pretrain": config.PretrainConfig,
               "transfer": config.TransferConfig}[stage]()  # fmt: skip
    cfg, train_cfg = _stage(stage, default, args, **paths)
    run = getattr(train, f"run_{stage}")
    return _done(run(cfg, train_cfg, resume=args.resume, device=args.device), label)


def cmd_teacher(args) -> int:
    return _train("teacher", "teacher", args, concepts=args.concepts)


def cmd_rpn(args) -> int:
    return _train("rpn", "rpn", args, split_file=args.split_file)


def cmd_pretrain(args) -> int:
    paths = dict(concepts=args.concepts, teacher=args.teacher, rpn=args.rpn, backbone=args.student_init)
    return _train("pretrain", "student", args, **paths)


def cmd_transfer(args) -> int:
    paths = dict(concepts=args.concepts, rpn=args.rpn, student=args.student, split_file=args.split_file)
    return _train("transfer", "detector", args, **paths)


def cmd_evaluate(args) -> int:
    from ..files import write_text_atomic
    from ..regionclip import evaluate as ev

    models = [m for m in (args.detector, args.student, args.teacher) if m]
    if len(models) != 1:
        raise UsageError("give one of --detector FILE, --student FILE or --teacher FILE|clip:ARCH:PATH")
    if args.images < 1:
        raise UsageError("--images must be at least 1")
    data = ev.evaluation_data(
        args.data or "",
        image_root=args.image_root or "",
        split_file=args.split_file or "",
        num_images=args.images,
    )
    if args.protocol == "regions":
        metrics, title = _regions(args, data), f"region classification with ground-truth boxes: {models[0]}"
    elif args.detector:
        metrics = ev.evaluate_detector(
            args.detector,
            data,
            num_images=args.images,
            unseen_weight=args.unseen_weight,
            seen_weight=args.seen_weight,
            image_size=args.image_size,
        )
        title = f"detector {args.detector}"
    else:
        if not args.rpn:
            raise UsageError("zero-shot detection needs the proposals of --rpn FILE")
        metrics = ev.evaluate_zero_shot(
            args.rpn, data, student=args.student or "", teacher=args.teacher or "", concepts=args.concepts or "",
            num_images=args.images, image_size=args.image_size,
        )  # fmt: skip
        title = f"zero-shot {models[0]}"
    shown = ev.summary(metrics) if args.protocol == "detection" else {}
    _print({**shown, **metrics}, title)
    if args.out:
        write_text_atomic(args.out, json.dumps(metrics, indent=1))
    return 0


def _regions(args, data) -> dict[str, float]:
    from ..regionclip import ConceptPool, load_region_teacher, load_student
    from ..regionclip.evaluate import region_classification

    if args.detector:
        raise UsageError("--protocol regions evaluates a --student or a --teacher")
    if args.student:
        embedder, cfg = load_student(args.student)
        templates, encoder = cfg["templates"], cfg["encoder"]
    else:
        if not args.concepts:
            raise UsageError("--protocol regions with --teacher needs the concept pool (--concepts FILE)")
        embedder, pool = load_region_teacher(args.teacher), ConceptPool.load(args.concepts)
        templates, encoder = pool.templates, pool.encoder
    kwargs = dict(
        templates=templates, encoder=encoder, num_images=args.images, image_size=args.image_size or 128
    )
    return region_classification(embedder, data, **kwargs)


def main(argv: list[str] | None = None) -> int:
    """``python -m openglip.cli.regionclip STAGE ...``: the same as ``openglip regionclip STAGE ...``."""
    from . import main as openglip_main

    return openglip_main(["regionclip", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
