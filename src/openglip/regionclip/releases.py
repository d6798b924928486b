"""microsoft/RegionCLIP's released files, read into the official ``CLIPFastRCNN`` key space.

RegionCLIP ships its models as detectron2 ``.pth`` checkpoints (``{"model": state dict, ...}``) of four layouts,
plus OpenAI's CLIP (TorchScript) that its text side and student initialisation come from:

- transferred detectors ``regionclip_finetuned-{coco,lvis}_{rn50,rn50x4}.pth``: a ``CLIPFastRCNN``: the CLIP
  ResNet ``backbone.*`` (``layer4`` and ``attnpool`` included) and ``roi_heads.*`` (the base-class text embeddings
  ``box_predictor.cls_score``, the zero background ``cls_bg_score``, the class-agnostic ``bbox_pred``; LVIS adds the
  class-agnostic ``mask_head``), sometimes with the offline RPN it was trained with (``offline_*``);
- pretrained region-text models ``regionclip_pretrained-cc_{rn50,rn50x4}.pth``: a ``PretrainFastRCNN``: the
  student ``backbone.*``, CLIP's text encoder ``lang_encoder.*``, the frozen CLIP teacher ``teacher_backbone.*``
  (used only during pretraining) and the RPN that proposed its regions (``offline_*``);
- RPNs ``rpn_coco_{48,65,80}.pth`` (R50-C4) and ``rpn_lvis_866{,_lsj}.pth`` (R50-FPN): detectron2 Mask R-CNNs whose
  ``backbone.*`` / ``proposal_generator.*`` become ``offline_backbone.*`` / ``offline_proposal_generator.*``, the
  rest dropped (as the official ``bb_rpn_weights`` loading does);
- class embeddings ``concept_emb/*.pth``: one ``(K, D)`` tensor (see :mod:`.clip_text`);
- OpenAI's ``RN50.pt`` / ``RN50x4.pt``: ``visual.*`` -> ``backbone.*``, the text tower -> ``lang_encoder.*``.

:func:`read_release` recognises the layout from the keys, maps every key it uses and names the ones it drops, so a
loader can apply strict semantics (every key mapped to one parameter, none left over).
"""

from __future__ import annotations

import os
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..checkpoint_format import CheckpointError, foreign_file, is_safetensors

# what each layout knowingly leaves out (prefix -> why), so nothing is dropped silently
DROPPED = {
    "teacher_backbone.": "the frozen CLIP teacher of pretraining (not part of the detector)",
    "roi_heads.box_head.": "the Mask R-CNN box head of an RPN file (RegionCLIP uses only its backbone and RPN)",
    "roi_heads.box_predictor.": "the Mask R-CNN box predictor of an RPN file",
    "roi_heads.mask_head.": "the Mask R-CNN mask head of an RPN file",
    "roi_heads.res5.": "the Mask R-CNN res5 head of an RPN file",
}
OPENAI_SCALARS = ("logit_scale", "input_resolution", "context_length", "vocab_size")
TEXT_PREFIXES = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection")
ARCH_BY_STEM = {32: "RN50", 40: "RN50x4"}  # backbone.conv1 output channels (half the ResNet width)


@dataclass
class Release:
    """One released file in the official key space.

    Attributes:
        layout: ``finetuned`` | ``pretrained`` | ``rpn`` | ``openai-clip``.
        state: official ``CLIPFastRCNN`` keys -> tensors.
        arch: ``RN50`` / ``RN50x4`` of its CLIP ResNet (None for an RPN file).
        rpn: the offline RPN it holds: ``c4``, ``fpn``, ``fpn_lsj`` or None.
        dropped: source keys knowingly not used, by reason.
    """

    layout: str
    state: dict[str, torch.Tensor]
    arch: str | None
    rpn: str | None
    dropped: dict[str, list[str]] = field(default_factory=dict)


def _load_raw(path: Path) -> object:
    """The object a ``.pth`` / ``.pt`` holds: a TorchScript archive's state dict, else ``torch.load``'s result."""
    if not path.exists():
        raise CheckpointError(f"RegionCLIP weights {path} not found: no such file")
    if path.is_dir():
        raise CheckpointError(f"RegionCLIP weights {path} is a directory; give the .pth file inside it")
    if path.stat().st_size == 0:
        raise CheckpointError(f"RegionCLIP weights {path} is empty (0 bytes)")
    if is_safetensors(path):
        raise CheckpointError(
            f"{path} is an OpenGLIP .safetensors file, not a released RegionCLIP .pth; open it with "
            "openglip.load_model or the command's --model option"
        )
    foreign = foreign_file(path)
    if foreign:
        raise CheckpointError(f"{path} is {foreign}, not RegionCLIP weights")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            scripted = any("/code/" in n for n in z.namelist()[:200])
        if scripted:  # OpenAI's CLIP releases are TorchScript archives
            return torch.jit.load(str(path), map_location="cpu").state_dict()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        first = (str(err).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(
            f"cannot read RegionCLIP weights {path}: not a PyTorch checkpoint ({type(err).__name__}: {first})"
        ) from None


def _state_of(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        raise CheckpointError(
            f"{path} holds one {tuple(obj.shape)} tensor: a concept-embedding file (concept_emb/*.pth); "
            "give it as the class embeddings (--concepts), not as model weights"
        )
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{path} does not hold a state dict (a dict of tensors, or one under 'model')")
    state = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor")
        state[str(key).removeprefix("module.")] = value
    return state


def _arch(state: Mapping[str, torch.Tensor], key: str, path: Path) -> str:
    stem = state.get(key)
    if stem is None:
        raise CheckpointError(f"{path}: no {key} (not a CLIP ResNet)")
    arch = ARCH_BY_STEM.get(int(stem.shape[0]))
    if arch is None:
        raise CheckpointError(
            f"{path}: {key} has {int(stem.shape[0])} channels; RegionCLIP's releases are RN50 (32) or RN50x4 (40)"
        )
    return arch


def rpn_kind(state: Mapping[str, torch.Tensor], prefix: str = "offline_backbone.") -> str | None:
    """``c4`` / ``fpn`` / ``fpn_lsj`` (normalised FPN: the large-scale-jitter RPN) of the offline keys, or None."""
    keys = [k for k in state if k.startswith(prefix)]
    if not keys:
        return None
    if not any(k.startswith(prefix + "bottom_up.") for k in keys):
        return "c4"
    return "fpn_lsj" if any(k.startswith(prefix + "fpn_lateral2.norm.") for k in keys) else "fpn"


def _split(state, rename: Mapping[str, str], drop: Mapping[str, str], path: Path) -> tuple[dict, dict]:
    """Keys renamed by prefix (``rename``: source prefix -> official prefix), dropped by prefix (``drop``), or an
    error naming the keys that fit neither."""
    out: dict[str, torch.Tensor] = {}
    dropped: dict[str, list[str]] = {}
    unknown = []
    for key, value in state.items():
        src = next((p for p in rename if key.startswith(p)), None)
        if src is not None:
            out[rename[src] + key[len(src) :]] = value
            continue
        why = next((w for p, w in drop.items() if key.startswith(p)), None)
        if why is None:
            unknown.append(key)
        else:
            dropped.setdefault(why, []).append(key)
    if unknown:
        raise CheckpointError(
            f"{path}: {len(unknown)} keys fit no RegionCLIP layout, e.g. {', '.join(unknown[:5])}"
        )
    return out, dropped


def read_release(path: str | os.PathLike) -> Release:
    """A released RegionCLIP / RPN / OpenAI CLIP file in the official ``CLIPFastRCNN`` key space.

    Raises:
        CheckpointError: missing, unreadable or of no known layout (the message says what the file is).
    """
    path = Path(path)
    state = _state_of(_load_raw(path), path)
    if "visual.conv1.weight" in state or "token_embedding.weight" in state:  # OpenAI CLIP
        rename = {"visual.": "backbone.", **{p: "lang_encoder." + p for p in TEXT_PREFIXES}}
        drop = {k: "CLIP's image-text logit scale and size scalars" for k in OPENAI_SCALARS}
        mapped, dropped = _split(state, rename, drop, path)
        return Release("openai-clip", mapped, _arch(state, "visual.conv1.weight", path), None, dropped)
    if any(k.startswith("proposal_generator.") for k in state):  # a detectron2 Mask R-CNN: its RPN
        rename = {"backbone.": "offline_backbone.", "proposal_generator.": "offline_proposal_generator."}
        mapped, dropped = _split(state, rename, DROPPED, path)
        return Release("rpn", mapped, None, rpn_kind(mapped), dropped)
    if "backbone.attnpool.c_proj.weight" in state:
        keep = (
            "backbone.",
            "roi_heads.",
            "offline_backbone.",
            "offline_proposal_generator.",
            "lang_encoder.",
        )
        drop = {"teacher_backbone.": DROPPED["teacher_backbone."]}
        mapped, dropped = _split(state, {p: p for p in keep}, drop, path)
        layout = "finetuned" if "roi_heads.box_predictor.bbox_pred.weight" in mapped else "pretrained"
        return Release(layout, mapped, _arch(state, "backbone.conv1.weight", path), rpn_kind(mapped), dropped)
    raise CheckpointError(
        f"{path}: not a RegionCLIP release (no backbone.attnpool, proposal_generator or CLIP visual keys; "
        f"first keys: {', '.join(list(state)[:4])})"
    )
