"""``openglip convert``: an official GLIP checkpoint to OpenGLIP safetensors."""

from __future__ import annotations

from ..errors import UsageError


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
    from ..checkpoints import (
        guess_config,
        is_official_state_dict,
        load_into,
        read_checkpoint,
        save_safetensors,
    )
    from ..config import get_preset
    from ..files import check_output_file
    from ..models.glip import build_model

    if not args.dest.endswith(".safetensors"):
        raise UsageError(f"destination {args.dest} should end with .safetensors")
    check_output_file(args.dest, "destination")
    state, embedded = read_checkpoint(args.source)
    name = args.preset or (embedded.name if embedded else None)
    guessed = guess_config(state) if name is None and is_official_state_dict(state) else None
    if guessed is not None:  # an official file: its preset, with fusion=late for GLIP-T (A)
        name = guessed.name
    if name is None:
        raise UsageError(f"cannot tell which preset {args.source} is for; pass --preset glip_t or glip_l")
    cfg = guessed or (embedded if embedded is not None and embedded.name == name else get_preset(name))
    model = build_model(cfg)
    load_into(model, state)
    save_safetensors(model, args.dest, cfg)
    n = sum(v.numel() for v in model.state_dict().values())
    print(f"converted {args.source} ({name}, {len(state)} tensors, {n / 1e6:.1f}M values) -> {args.dest}")
    return 0


def register(sub) -> None:
    _add_convert(sub)
