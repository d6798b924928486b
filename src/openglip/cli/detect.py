"""``openglip detect``: the phrases of a prompt in images or folders."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..errors import EXIT_BAD_INPUT, UsageError


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
    p.add_argument(
        "--prompt-file", help="a tuned prompt (openglip tune --mode prompt); its phrases are the prompt"
    )
    p.set_defaults(func=cmd_detect)


def cmd_detect(args) -> int:
    from tqdm import tqdm

    from ..api import load_model
    from ..files import write_text_atomic
    from ..images import ImageError, find_images
    from ..prompts import parse_prompt

    if args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    if args.prompt is None and args.prompt_file is None:
        raise UsageError('give --prompt "cat. dog." (or --prompt-file from openglip tune)')
    if not 0.0 <= args.threshold <= 1.0:
        raise UsageError("--threshold must be between 0 and 1")
    tuned = None
    if args.prompt_file:
        from ..prompt_tuning import load_tuned_prompt

        tuned = load_tuned_prompt(args.prompt_file)
    prompt = tuned.prompt if tuned is not None else parse_prompt(args.prompt)
    paths = find_images(args.inputs)
    if not paths:
        raise UsageError(f"no images found in {' '.join(args.inputs)}")
    if args.weights and args.preset is None:
        detector = load_model(args.weights, device=args.device)  # the preset comes from the checkpoint
    elif args.weights:
        detector = load_model(args.preset, weights=args.weights, device=args.device)
    elif args.preset:
        print(
            f"openglip: warning: no --weights given; the {args.preset!r} model has random weights and its boxes "
            "are meaningless",
            file=sys.stderr,
        )
        detector = load_model(args.preset, device=args.device)
    else:
        from ..teachers import load_teacher

        print(
            "openglip: no --weights given: using the zero-shot default teacher (EfficientNet-Lite0 + MiniLM, "
            "no box training; pass --weights for a trained GLIP)",
            file=sys.stderr,
        )
        detector = load_teacher("default", device=args.device)

    if tuned is not None:
        if not hasattr(detector, "add_tuned_prompt"):
            raise UsageError("--prompt-file needs --weights (the model the prompt was tuned for)")
        detector.add_tuned_prompt(tuned)
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
                from ..visualize import draw_detections

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


def register(sub) -> None:
    _add_detect(sub)
