"""``openglip regionclip detect | convert``: RegionCLIP's released models (microsoft/RegionCLIP ``.pth`` files)."""

from __future__ import annotations

import argparse

from ..errors import UsageError

WEIGHTS = (
    "released RegionCLIP weights: regionclip_finetuned-{coco,lvis}_{rn50,rn50x4}.pth (transferred detector) or "
    "regionclip_pretrained-cc_{rn50,rn50x4}.pth / OpenAI's RN50.pt (zero-shot)"
)


def _release_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", required=True, help=WEIGHTS)
    p.add_argument("--rpn", help="released RPN: rpn_coco_48.pth (COCO), rpn_lvis_866.pth / _lsj.pth (LVIS)")
    p.add_argument(
        "--text",
        help="CLIP text encoder for class names when --weights has none (a transferred detector): "
        "regionclip_pretrained-cc_rn50.pth or OpenAI's RN50.pt",
    )
    p.add_argument(
        "--concepts", help="released class embeddings (concept_emb/*.pth), one row a name of --names"
    )
    p.add_argument("--names", help="the --concepts rows' names: a text file (one a line) or a COCO/LVIS JSON")
    p.add_argument(
        "--preset",
        choices=["coco", "lvis", "zeroshot"],
        help="official test settings (default: from the weights: transferred on COCO / LVIS, or zero-shot)",
    )
    p.add_argument("--min-size", type=int, help="shorter image side at test time (official: 800)")
    p.add_argument("--max-size", type=int, help="longer side cap (official: 1333)")
    p.add_argument("--proposals", type=int, help="RPN proposals per image (official: 1000; fewer is faster)")


def register(sub) -> None:
    """Add ``detect`` and ``convert`` to the ``openglip regionclip`` sub-commands."""
    p = sub.add_parser(
        "detect",
        help="detect any class names with RegionCLIP's released models",
        description="RegionCLIP's official detector (CLIPFastRCNN) on images or folders, the classifier made of "
        "the prompt's class names (CLIP text embeddings averaged over the official 81 prompt templates).",
        epilog='example: openglip regionclip detect photo.jpg --prompt "cup. saucer." --weights '
        "regionclip_finetuned-coco_rn50.pth --rpn rpn_coco_48.pth --text regionclip_pretrained-cc_rn50.pth",
    )
    p.add_argument("inputs", nargs="+", help="image files and/or directories (searched recursively)")
    p.add_argument("--prompt", required=True, help='class names separated by periods, e.g. "cup. saucer."')
    _release_options(p)
    p.add_argument("--threshold", type=float, default=0.3, help="minimum box score (default 0.3)")
    p.add_argument("--out", help="write COCO-style results JSON here (with a 'phrase' per box)")
    p.add_argument("--draw", help="folder to write the images with their boxes drawn")
    p.add_argument("--batch-size", type=int, default=1, help="images per forward pass")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.set_defaults(func=cmd_detect, prompt_file=None)

    p = sub.add_parser(
        "convert",
        help="one OpenGLIP file from RegionCLIP's released files (for evaluate, benchmark, serve, load_model)",
        description="Map the released detector, RPN and text encoder (and optionally class embeddings) into one "
        "OpenGLIP .safetensors file of kind regionclip-official; every key is used and none left over.",
    )
    _release_options(p)
    p.add_argument("--out", required=True, help="the .safetensors file to write")
    p.set_defaults(func=cmd_convert)


def build_from_args(args, tuned=None):
    """The :class:`~openglip.regionclip.rcnn.OfficialRegionCLIP` the options name."""
    from ..device import resolve_device
    from ..regionclip.rcnn_load import load_official, with_concepts

    if bool(args.concepts) != bool(args.names):
        raise UsageError("--concepts and --names go together: the embeddings and the names of their rows")
    model = load_official(args.weights, rpn=args.rpn, text=args.text, preset=args.preset,
                          min_size=args.min_size, max_size=args.max_size, proposals=args.proposals)  # fmt: skip
    if args.concepts:
        with_concepts(model, args.concepts, args.names)
    return model.to(resolve_device(getattr(args, "device", None) or "cpu"))


def cmd_detect(args) -> int:
    from .detect import cmd_detect as detect_images

    return detect_images(args, build_from_args)


def cmd_convert(args) -> int:
    from ..files import check_output_file
    from ..regionclip.rcnn_load import save_official

    check_output_file(args.out, "--out")
    model = build_from_args(args)
    save_official(model, args.out)
    vocab = f", {len(model.vocabulary)} stored class names" if model.stored else ""
    print(f"wrote {args.out}: RegionCLIP {model.cfg.arch}, {model.cfg.rpn} RPN{vocab}")
    return 0
