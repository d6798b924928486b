"""``openglip`` command line: detect, convert (and, as they land, train, evaluate, label, data ...).

Errors for people: bad input prints one line (what, where, how to fix) and exits with code 2; ``--debug``
shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EXIT_BAD_INPUT = 2


class UsageError(Exception):
    """A user mistake the CLI reports in one line."""


def _bad_input_types():
    from .checkpoints import CheckpointError
    from .images import ImageError
    from .prompts import PromptError

    return (UsageError, ImageError, PromptError, CheckpointError, FileNotFoundError, ValueError)


# --------------------------------------------------------------------------------------------------------------
# detect
# --------------------------------------------------------------------------------------------------------------


def _add_detect(sub):
    p = sub.add_parser(
        "detect",
        help="detect the phrases of a prompt in images",
        description="Detect what a prompt names in images or folders of images.",
        epilog='example: openglip detect photos/ --prompt "person. red car." --weights glip_t.pth --out res.json',
    )
    p.add_argument("inputs", nargs="+", help="image files and/or directories (searched recursively)")
    p.add_argument(
        "--prompt", required=True, help='class names separated by periods, e.g. "person. red car."'
    )
    p.add_argument("--weights", help="checkpoint: official GLIP .pth or OpenGLIP .safetensors")
    p.add_argument(
        "--preset",
        default=None,
        help="model preset (default: read from --weights, else glip_t); e.g. glip_t, glip_l, tiny",
    )
    p.add_argument("--threshold", type=float, default=0.3, help="minimum box score (default 0.3)")
    p.add_argument("--out", help="write COCO-style results JSON here (with a 'phrase' per box)")
    p.add_argument("--draw", help="write annotated images into this directory")
    p.add_argument("--batch-size", type=int, default=2, help="images per forward pass")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.set_defaults(func=cmd_detect)


def cmd_detect(args) -> int:
    from tqdm import tqdm

    from .api import load_model
    from .files import write_text_atomic
    from .images import ImageError, find_images
    from .prompts import parse_prompt

    if args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    if not 0.0 <= args.threshold <= 1.0:
        raise UsageError("--threshold must be between 0 and 1")
    prompt = parse_prompt(args.prompt)
    paths = find_images(args.inputs)
    if not paths:
        raise UsageError(f"no images found in {' '.join(args.inputs)}")
    if args.weights and args.preset is None:
        detector = load_model(args.weights, device=args.device)  # the preset comes from the checkpoint
    elif args.weights:
        detector = load_model(args.preset, weights=args.weights, device=args.device)
    else:
        preset = args.preset or "glip_t"
        print(
            f"openglip: warning: no --weights given; the {preset!r} model has random weights and its boxes "
            "are meaningless",
            file=sys.stderr,
        )
        detector = load_model(preset, device=args.device)

    results, failures = [], []
    draw_dir = Path(args.draw) if args.draw else None
    bar = tqdm(total=len(paths), desc="detect", unit="img", disable=len(paths) < 2, file=sys.stderr)
    for start in range(0, len(paths), args.batch_size):
        batch = paths[start : start + args.batch_size]
        try:
            outputs = detector.predict([str(p) for p in batch], prompt, box_threshold=args.threshold)
        except ImageError:
            # find the bad file(s) of the batch and keep going with the others
            outputs = []
            for p in batch:
                try:
                    outputs.append(detector.predict(str(p), prompt, box_threshold=args.threshold))
                except ImageError as err:
                    failures.append(str(err))
                    outputs.append(None)
        for offset, (path, dets) in enumerate(zip(batch, outputs)):
            bar.update(1)
            if dets is None:
                continue
            image_id = start + offset + 1
            for entry in dets.to_coco(image_id):
                entry["file_name"] = str(path)
                results.append(entry)
            if draw_dir is not None:
                from .visualize import draw_detections

                out_path = draw_dir / (path.stem + ".jpg")
                draw_detections(str(path), dets, out_path)
            if not args.out:
                for phrase, score, box in zip(dets.phrases, dets.scores, dets.xyxy):
                    coords = ", ".join(f"{v:.1f}" for v in box)
                    print(f"{path}\t{phrase}\t{score:.3f}\t[{coords}]")
    bar.close()
    if args.out:
        write_text_atomic(args.out, json.dumps(results, indent=1))
        print(
            f"wrote {len(results)} detections for {len(paths) - len(failures)} images to {args.out}",
            file=sys.stderr,
        )
    for message in failures:
        print(f"openglip: error: {message}", file=sys.stderr)
    if failures:
        print(f"openglip: error: {len(failures)} of {len(paths)} images could not be read", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


# --------------------------------------------------------------------------------------------------------------
# convert
# --------------------------------------------------------------------------------------------------------------


def _add_convert(sub):
    p = sub.add_parser(
        "convert",
        help="convert an official GLIP checkpoint to OpenGLIP safetensors",
        description="Convert an official GLIP .pth (or a plain state dict) to an OpenGLIP .safetensors file "
        "that embeds its config. Every key is checked.",
    )
    p.add_argument("source", help="official GLIP checkpoint (.pth)")
    p.add_argument("dest", help="output .safetensors file")
    p.add_argument(
        "--preset", default=None, help="preset of the checkpoint (default: recognised from its shapes)"
    )
    p.set_defaults(func=cmd_convert)


def cmd_convert(args) -> int:
    from .checkpoints import (
        guess_preset,
        is_official_state_dict,
        load_into,
        read_checkpoint,
        save_safetensors,
    )
    from .config import get_preset
    from .models.detector import build_model

    if not args.dest.endswith(".safetensors"):
        raise UsageError(f"destination {args.dest} should end with .safetensors")
    state, embedded = read_checkpoint(args.source)
    name = args.preset or (embedded.name if embedded else None)
    if name is None and is_official_state_dict(state):
        name = guess_preset(state)
    if name is None:
        raise UsageError(f"cannot tell which preset {args.source} is for; pass --preset glip_t or glip_l")
    cfg = embedded if embedded is not None and embedded.name == name else get_preset(name)
    model = build_model(cfg)
    load_into(model, state)
    save_safetensors(model, args.dest, cfg)
    n = sum(v.numel() for v in model.state_dict().values())
    print(f"converted {args.source} ({name}, {len(state)} tensors, {n / 1e6:.1f}M values) -> {args.dest}")
    return 0


# --------------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="openglip", description="Open-vocabulary grounded object detection."
    )
    parser.add_argument("--version", action="version", version=f"openglip {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_detect(sub)
    _add_convert(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("openglip: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if args.debug or not isinstance(err, _bad_input_types()):
            raise
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"openglip: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
