"""``openglip detect``: the phrases of a prompt in images or folders."""

from __future__ import annotations

import json
import sys

from ..errors import EXIT_BAD_INPUT, UsageError


def _add_detect(sub):
    p = sub.add_parser(
        "detect",
        help="detect the phrases of a prompt in images",
        description="Detect what a prompt names in images or folders of images.",
        epilog='example: openglip detect photos/ --prompt "person. red car." --weights glip_t.pth --out res.json',
    )
    p.add_argument("inputs", nargs="+", help="image files and/or directories (searched recursively)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--prompt", help='class names separated by periods, e.g. "person. red car."')
    what.add_argument(
        "--prompt-file", help="a tuned prompt (openglip tune --mode prompt); its phrases are the prompt"
    )
    p.add_argument(
        "--weights",
        help="checkpoint (official GLIP .pth, OpenGLIP .safetensors) or an official name: glip_t, glip_l",
    )
    p.add_argument(
        "--preset",
        default=None,
        help="model preset (default: read from --weights, else glip_t); e.g. glip_t, glip_l, tiny",
    )
    p.add_argument("--threshold", type=float, default=0.3, help="minimum box score (default 0.3)")
    p.add_argument("--out", help="write COCO-style results JSON here (with a 'phrase' per box)")
    p.add_argument(
        "--draw",
        help="write annotated images into this directory (input paths mirrored: a/x.jpg, a/sub/x.jpg -> "
        "x.jpg, sub/x.jpg; JPEG and PNG keep their names, other formats get .png appended)",
    )
    p.add_argument("--batch-size", type=int, default=2, help="images per forward pass")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.set_defaults(func=cmd_detect)


def load_predictor(args, tuned=None):
    """The predictor of --weights / --preset, or the zero-shot default teacher when neither is given (also what
    ``openglip serve`` serves)."""
    from ..api import load_model

    if args.weights and args.preset is None:
        predictor = load_model(args.weights, device=args.device)  # the preset comes from the checkpoint
    elif args.weights:
        predictor = load_model(args.preset, weights=args.weights, device=args.device)
    elif tuned is not None:
        raise UsageError("--prompt-file needs --weights (the model the prompt was tuned for)")
    elif args.preset:
        print(
            f"openglip: warning: no --weights given; the {args.preset!r} model has random weights and its boxes "
            "are meaningless",
            file=sys.stderr,
        )
        predictor = load_model(args.preset, device=args.device, pretrained=False)
    else:
        from ..teachers import load_teacher
        from ..teachers.zero_shot import WINDOWS_NOTE

        print(
            "openglip: no --weights given: using the zero-shot default teacher (EfficientNet-Lite0 + MiniLM, "
            "no box training; pass --weights for a trained GLIP)",
            file=sys.stderr,
        )
        predictor = load_teacher("default", device=args.device)
        if predictor.proposals == "windows":
            print(f"openglip: note: {WINDOWS_NOTE}", file=sys.stderr)
    if tuned is not None:
        predictor.add_tuned_prompt(tuned)
    return predictor


def cmd_detect(args, make_predictor=load_predictor) -> int:
    """Run ``openglip detect``; ``make_predictor(args, tuned)`` builds the model (``openglip regionclip detect``
    gives its own)."""
    from ..device import resolve_device
    from ..files import check_output_dir, check_output_file, write_text_atomic
    from ..image_files import detect_paths, image_format, output_names
    from ..images import find_images
    from ..prompts import parse_prompt

    # everything a user can get wrong is checked before the model is loaded and the images are processed
    if args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    if not 0.0 <= args.threshold <= 1.0:
        raise UsageError("--threshold must be between 0 and 1")
    resolve_device(args.device)
    tuned = None
    if args.prompt_file:
        from ..prompt_tuning import load_tuned_prompt

        tuned = load_tuned_prompt(args.prompt_file)
    prompt = tuned.prompt if tuned is not None else parse_prompt(args.prompt)
    paths = find_images(args.inputs)
    if not paths:
        raise UsageError(f"no images found in {' '.join(args.inputs)}")
    if args.out:
        check_output_file(args.out, "--out")
    draw_dir = check_output_dir(args.draw, "--draw") if args.draw else None
    draw_names = output_names(paths) if draw_dir is not None else []

    predictor = make_predictor(args, tuned)
    results, failures, done = [], [], 0
    for item in detect_paths(
        predictor, paths, prompt, box_threshold=args.threshold, batch_size=args.batch_size
    ):
        if not item.ok:
            failures.append(item.error)
            print(f"openglip: error: {item.error} (skipped)", file=sys.stderr)
            continue
        done += 1
        dets = item.detections
        for entry in dets.to_coco(item.index + 1):
            entry["file_name"] = str(item.path)
            results.append(entry)
        if draw_dir is not None:
            from ..visualize import draw_detections

            name = draw_dir / draw_names[item.index]
            draw_detections(str(item.path), dets, name, format=image_format(name))
        if not args.out:
            for phrase, score, box in zip(dets.phrases, dets.scores, dets.xyxy):
                coords = ", ".join(f"{v:.1f}" for v in box)
                print(f"{item.path}\t{phrase}\t{score:.3f}\t[{coords}]")
    if args.out and done:
        write_text_atomic(args.out, json.dumps(results, indent=1))
        print(f"wrote {len(results)} detections for {done} images to {args.out}", file=sys.stderr)
    elif args.out:
        print(f"openglip: error: no image could be processed; {args.out} was not written", file=sys.stderr)
    if failures:
        print(f"openglip: error: {len(failures)} of {len(paths)} images could not be read", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


def register(sub) -> None:
    _add_detect(sub)
