"""``openglip export``: a trained or loaded model -> an ONNX model that ONNX Runtime runs with numpy alone."""

from __future__ import annotations

import sys

from ..errors import UsageError


def register(sub) -> None:
    p = sub.add_parser(
        "export",
        help="export a model to ONNX (ONNX Runtime + numpy, no PyTorch)",
        description=(
            "Export a model to ONNX. With --prompt the prompt is baked in (fixed vocabulary: the graph takes only "
            "images); without it the graph also takes input_ids/attention_mask (open vocabulary) and the "
            "tokenizer is written beside the model. The numpy runner openglip_onnx.py is copied beside it too."
        ),
        epilog='example: openglip export --weights runs/x/model.safetensors --out deploy/model.onnx --prompt "cat. dog."',
    )
    p.add_argument(
        "--weights",
        help="checkpoint (OpenGLIP .safetensors, official GLIP .pth) or an official name: glip_t, glip_l",
    )
    p.add_argument(
        "--preset", help="model preset (default: read from --weights); e.g. glip_t, glip_nano, tiny"
    )
    p.add_argument(
        "--out", required=True, help="the .onnx file to write (an existing one is kept unless --overwrite)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace the model already at --out")
    p.add_argument("--prompt", help='bake this prompt in (fixed vocabulary), e.g. "person. car. dog."')
    p.add_argument("--prompt-file", help="bake a tuned prompt in (openglip tune --mode prompt)")
    p.add_argument(
        "--nms", action="store_true", help="run candidate selection and per-phrase NMS in the graph"
    )
    p.add_argument("--opset", type=int, default=18, help="ONNX opset, 17 or newer (default 18)")
    p.add_argument(
        "--exporter",
        choices=("auto", "dynamo", "torchscript"),
        default="auto",
        help="auto: the dynamo exporter, or the TorchScript exporter where it fails (default)",
    )
    p.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    from pathlib import Path

    from tqdm import tqdm

    from ..api import Detector, load_model
    from ..export import export_onnx
    from ..files import check_output_file
    from ..hub import is_official_name

    if args.opset < 17:
        raise UsageError(f"--opset {args.opset} is too old: the export needs opset 17 or newer")
    if not args.out.endswith(".onnx"):
        raise UsageError(f"--out {args.out!r} must name an .onnx file")
    if args.weights is None and args.preset is None:
        raise UsageError(
            "give --weights: an official model name (glip_t, glip_l, ...) or a weights file (.safetensors, .pth); "
            "or --preset NAME for random weights"
        )
    if args.prompt and args.prompt_file:
        raise UsageError("give --prompt or --prompt-file, not both")
    if args.weights and not Path(args.weights).is_file() and not is_official_name(args.weights):
        raise UsageError(f"--weights {args.weights}: file not found")
    if Path(args.out).is_file() and not args.overwrite:
        raise UsageError(f"--out {args.out} already exists; give --overwrite to replace it, or another path")
    check_output_file(args.out, "--out")  # before the model is loaded and traced
    if args.weights is None:
        print(
            f"openglip: warning: no --weights given; the {args.preset!r} model has random weights",
            file=sys.stderr,
        )
        detector = load_model(args.preset, device="cpu", pretrained=False)
    elif args.preset is None:
        detector = load_model(args.weights, device="cpu")
    else:
        detector = load_model(args.preset, weights=args.weights, device="cpu")
    if not isinstance(detector, Detector):
        raise UsageError(
            f"--weights {args.weights} is a RegionCLIP detector: ONNX export takes GLIP detectors; use it from "
            "Python (openglip.load_model) or with openglip regionclip evaluate --detector"
        )
    prompt = args.prompt
    if args.prompt_file:
        from ..prompt_tuning import load_tuned_prompt

        tuned = load_tuned_prompt(args.prompt_file)
        detector.add_tuned_prompt(tuned)
        prompt = tuned.prompt
    bar = tqdm(total=1, desc="export", unit="model", file=sys.stderr, bar_format="{desc}: {elapsed}")

    def progress(message: str) -> None:
        bar.set_description_str(f"export: {message}")

    try:
        result = export_onnx(
            detector,
            args.out,
            prompt=prompt,
            nms=args.nms,
            opset=args.opset,
            exporter=args.exporter,
            progress=progress,
        )
    finally:
        bar.close()
    if result.fallback_reason:
        print(f"openglip: the dynamo exporter failed ({result.fallback_reason})", file=sys.stderr)
    kind = "fixed vocabulary" if result.mode == "fixed" else "open vocabulary"
    print(f"wrote {result.path} ({kind}, {result.exporter} exporter; inputs: {', '.join(result.inputs)})")
    for path in result.files[1:]:
        print(f"wrote {path}")
    return 0
