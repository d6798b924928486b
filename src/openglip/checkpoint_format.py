"""The one file format of every model OpenGLIP writes, and what any file given as weights is.

A safetensors file whose metadata holds ``format="openglip"``, a ``kind`` (:data:`KINDS`: a GLIP detector, a
RegionCLIP teacher, RPN, student or detector) and the JSON config that rebuilds the model, so that a file says what
it is: :func:`openglip.load_model` opens the kinds that predict boxes and tells the others what to do with them.
Files of the older RegionCLIP format (``format="openglip-regionclip"``) still load, with a deprecation warning.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .errors import OpenGLIPError
from .files import atomic_write, read_safetensors


class CheckpointError(OpenGLIPError):
    """A checkpoint that cannot be read or does not match the model."""


FORMAT = "openglip"  # the one safetensors format: metadata {format, kind, openglip_config, ...}
CONFIG_META = "openglip_config"  # the JSON config that rebuilds the model
GLIP = (
    "glip"  # the kind of a GLIP / GLIPv2 model (grounding, and the VQA / captioning heads when it has them)
)
KINDS = {  # kind -> what the file holds (for messages); every kind is written by write_checkpoint
    GLIP: "a GLIP detector",
    "regionclip-teacher": "a RegionCLIP teacher",
    "regionclip-rpn": "a RegionCLIP RPN",
    "regionclip-student": "a RegionCLIP pretrained student",
    "regionclip-detector": "a RegionCLIP detector",
    "regionclip-official": "RegionCLIP's released detector (CLIPFastRCNN, converted from microsoft/RegionCLIP)",
}
_OTHER_FORMATS = {  # safetensors files of other OpenGLIP formats -> the kind reported for them
    "openglip-tuned-prompt": "tuned-prompt",
    "openglip-regionclip-concepts": "regionclip-concepts",
}
_DESCRIBE = {
    "tuned-prompt": "a tuned prompt (prompt offsets)",
    "regionclip-concepts": "a RegionCLIP concept pool",
}
_USE = {  # what to do with a file that predicts no boxes by itself
    "regionclip-teacher": "give it to `openglip regionclip pretrain --teacher PATH`",
    "regionclip-rpn": "it proposes class-agnostic boxes only: give it to `openglip regionclip pretrain|transfer "
    "--rpn PATH`, or with a student to `openglip regionclip evaluate --rpn PATH --student STUDENT`",
    "regionclip-student": "it classifies regions, it finds none: give it to `openglip regionclip transfer "
    "--student PATH`, or with an RPN to `openglip regionclip evaluate --student PATH --rpn RPN`",
    "regionclip-detector": "open it by itself: openglip.load_model(PATH), with no preset",
    "tuned-prompt": "give it with the weights it was tuned for: --prompt-file PATH (openglip detect / evaluate / "
    "export) or Detector.add_tuned_prompt(openglip.load_tuned_prompt(PATH))",
    "regionclip-concepts": "give it as --concepts PATH to the `openglip regionclip` stages",
}


def describe_kind(kind: str | None) -> str:
    """``"a RegionCLIP teacher"``: what a file of ``kind`` holds, for messages."""
    return KINDS.get(kind) or _DESCRIBE.get(kind) or f"a model of unknown kind {kind!r}"


def wrong_kind_message(path: str | os.PathLike, kind: str | None) -> str:
    """One line for a file of ``kind`` given where GLIP weights (something that predicts boxes) were expected:
    what the file is and what to do with it."""
    use = _USE.get(kind, "it is not GLIP weights")
    return f"{path} is {describe_kind(kind)}, not GLIP detector weights; {use.replace('PATH', str(path))}"


@dataclass
class CheckpointFile:
    """An OpenGLIP safetensors file as :func:`read_openglip_file` reads it.

    Attributes:
        kind: one of :data:`KINDS`, another OpenGLIP file's kind (``"tuned-prompt"``, ``"regionclip-concepts"``)
            or None for a plain safetensors state dict.
        config: the JSON config text (None when the file has none).
        state: the tensors.
        meta: the whole metadata.
    """

    kind: str | None
    config: str | None
    state: dict[str, torch.Tensor]
    meta: dict[str, str]


def write_checkpoint(
    path: str | os.PathLike,
    state: Mapping[str, torch.Tensor],
    *,
    kind: str,
    config: str,
    extra: Mapping[str, str] | None = None,
) -> None:
    """Write ``state`` with its ``kind`` and JSON ``config`` (plus ``extra`` metadata) to one safetensors file,
    atomically: the one writer of every OpenGLIP model file."""

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}, not {kind!r}")
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    meta = {"format": FORMAT, "kind": kind, CONFIG_META: config, **(extra or {})}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def read_openglip_file(path: str | os.PathLike) -> CheckpointFile:
    """Read any safetensors file OpenGLIP writes (and plain ones); files of the older RegionCLIP format
    (``format="openglip-regionclip"``, ``kind="teacher"`` ...) still load, with a :class:`DeprecationWarning`.

    Raises:
        CheckpointError: unreadable, or a safetensors file of a format OpenGLIP does not know.
    """
    try:
        meta, state = read_safetensors(path)
    except ValueError as err:
        raise CheckpointError(str(err)) from None
    fmt = meta.get("format")
    if fmt == FORMAT:
        return CheckpointFile(meta.get("kind", GLIP), meta.get(CONFIG_META), state, meta)
    if fmt == "openglip-regionclip":
        warnings.warn(
            f"{path}: RegionCLIP weights in the old 'openglip-regionclip' format; they load, save them again "
            "to write the current format",
            DeprecationWarning,
            stacklevel=2,
        )
        return CheckpointFile(f"regionclip-{meta.get('kind')}", meta.get("config"), state, meta)
    if fmt in _OTHER_FORMATS:
        return CheckpointFile(_OTHER_FORMATS[fmt], None, state, meta)
    if fmt is not None:
        raise CheckpointError(
            f"{path}: a safetensors file of an unknown format {fmt!r}, not OpenGLIP weights"
        )
    return CheckpointFile(None, None, state, meta)


def checkpoint_kind(path: str | os.PathLike) -> str | None:
    """The kind of an OpenGLIP safetensors file from its metadata alone (None for any other file)."""

    if not is_safetensors(Path(path)):
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception:
        return None  # the full read reports what is wrong
    fmt = meta.get("format")
    if fmt == "openglip-regionclip":
        return f"regionclip-{meta.get('kind')}"
    return meta.get("kind", GLIP) if fmt == FORMAT else _OTHER_FORMATS.get(fmt)


def is_safetensors(path: Path) -> bool:
    """By name, or by content: an 8-byte little-endian header length, then the JSON header."""
    if path.suffix == ".safetensors":
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:] == b"{" and int.from_bytes(head[:8], "little") < path.stat().st_size


def foreign_file(path: Path) -> str | None:
    """What to say of a file that is not weights (a JSON file, an ONNX model: what it is and what to do), or
    None."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return None
    if path.suffix == ".onnx" or (head[:1] == b"\x08" and b"\x12\x07pytorch" in head[:32]):
        return (
            "an ONNX model, not PyTorch weights; run it with ONNX Runtime through the NumPy runner openglip_onnx.py "
            "that openglip export wrote beside it, or give the .safetensors it was exported from"
        )
    if path.suffix in (".json", ".jsonl") or head.lstrip()[:1] in (b"{", b"["):
        what = "COCO annotations" if b'"annotations"' in head or b'"images"' in head else "data or a config"
        return (
            f"a JSON file ({what}), not model weights; give an OpenGLIP .safetensors or a GLIP .pth "
            "(openglip train writes RUN/model.safetensors)"
        )
    return None
