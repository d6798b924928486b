"""``openglip tune``: prompt tuning, linear probing or full fine-tuning of a trained model on a task's data."""

from __future__ import annotations

import logging
import sys


def register(sub) -> None:
    from ..tasks.tune import MODES

    p = sub.add_parser(
        "tune",
        help="adapt a trained model to a task: prompt tuning, linear probe, full fine-tuning, WiSE-FT, replay",
        description="Adapt a trained model to the categories of a COCO/ODVG detection file, with its fixed prompt "
        "(the category names in order). --mode prompt freezes the model and learns only an offset on the "
        "prompt's token features (written to RUN/prompt.safetensors, use it with --prompt-file); linear trains "
        "only the last layers; full trains everything (RUN/model.safetensors). Two modes keep what the model "
        "could detect before: wise fine-tunes fully, then mixes the weights with the starting ones "
        "((1 - alpha) start + alpha fine-tuned; --alpha auto chooses alpha on --holdout images of the task and "
        "a --retain file); replay mixes replay_ratio (default 0.25) of pre-training-style data (replay_data=...) "
        "into every batch.",
        epilog="example: openglip tune --mode wise --alpha 0.5 --weights base.safetensors --data mine.coco.json "
        "--out runs/mine",
    )
    p.add_argument("--mode", required=True, choices=list(MODES))
    p.add_argument("--weights", required=True, help="the trained model to adapt")
    p.add_argument("--data", required=True, help="COCO .json or ODVG .jsonl detection data of the task")
    p.add_argument("--image-root", default=None)
    p.add_argument("--shots", type=int, default=0, help="use only this many images per category (0: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the few-shot sample and of the training run")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument(
        "--alpha",
        default=None,
        help="WiSE-FT: weight of the fine-tuned model in the mix, 0..1 (mode wise: 0.5), or auto (with --retain)",
    )
    p.add_argument(
        "--retain", default=None, help="--alpha auto: a COCO/ODVG file of what must still be detected"
    )
    p.add_argument(
        "--holdout",
        type=float,
        default=0.2,
        help="--alpha auto: share of the task's images held out to choose it",
    )
    runs = p.add_mutually_exclusive_group()
    runs.add_argument("--resume", action="store_true")
    runs.add_argument("--overwrite", action="store_true", help="delete the run already in --out first")
    p.add_argument("--device", default=None)
    p.add_argument(
        "overrides", nargs="*", help="key=value TrainConfig/TuneConfig overrides (max_steps=..., lr=...)"
    )
    p.set_defaults(func=run)


def run(args) -> int:
    from ..data.build import read_annotations
    from ..errors import UsageError
    from ..tasks.tune import few_shot, split_holdout, tune, tune_config

    if args.shots < 0:
        raise UsageError("--shots must be 0 (all images) or more")
    records, categories = read_annotations(args.data, args.image_root)
    if args.shots:
        records = few_shot(records, categories, args.shots, seed=args.seed)
    cfg, tune_cfg = tune_config(
        args.mode, args.overrides, out_dir=args.out, seed=args.seed, **_wise_flags(args)
    )
    holdout = []
    if tune_cfg.wise_retain:  # WiSE-FT's alpha is chosen on images the tuning does not see
        records, holdout = split_holdout(records, args.holdout, seed=args.seed)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    out = tune(
        args.weights, records, categories, cfg=cfg, tune_cfg=tune_cfg, holdout=holdout, resume=args.resume,
        overwrite=args.overwrite, device=args.device,
    )  # fmt: skip
    print(f"{args.mode} tuning on {len(records)} images -> {out}", file=sys.stderr)
    return 0


def _wise_flags(args) -> dict:
    """TuneConfig changes of --alpha / --retain."""
    from ..errors import UsageError

    if args.alpha is None:
        if args.retain:
            raise UsageError("--retain is only read with --alpha auto")
        return {}
    if args.mode == "prompt":
        raise UsageError(
            "--alpha (WiSE-FT) does not apply to --mode prompt, which leaves the model unchanged"
        )
    if args.alpha == "auto":
        if not args.retain:
            raise UsageError("--alpha auto needs --retain FILE: detection data of what the model must keep")
        return {"wise_retain": args.retain, "wise_alpha": 1.0}
    if args.retain:
        raise UsageError("--retain is only read with --alpha auto")
    try:
        alpha = float(args.alpha)
    except ValueError:
        raise UsageError(f"--alpha must be a number between 0 and 1 or auto, not {args.alpha!r}") from None
    return {"wise_alpha": alpha}
