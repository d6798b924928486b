"""Checkpoints: GLIP weights from OpenGLIP safetensors files (the format: :mod:`.checkpoint_format`) and official
GLIP ``.pth`` files.

Official GLIP checkpoints (``glip_tiny_model_o365_goldg.pth``, ``glip_large_model.pth``) hold the state dict of
maskrcnn-benchmark's ``GeneralizedVLRCNN`` under ``"model"`` with DDP's ``module.`` prefix. Every one of their
keys maps to exactly one OpenGLIP parameter or buffer (:func:`official_key_to_openglip`), except two kinds of
buffers that OpenGLIP derives instead of storing (anchor cells and BERT position ids); those are checked
against the derived values instead of being silently dropped.

The official tower (``rpn.head.dyhead_tower``, microsoft/GLIP ``maskrcnn_benchmark/modeling/rpn/vldyhead.py``,
``VLDyHead.__init__``) is one ``nn.Sequential``: with ``FUSE_CONFIG.EARLY_FUSE_ON`` (GLIP-T (B)/(C), GLIP-T,
GLIP-L) block ``i`` is modules ``3i`` (VLFuse), ``3i+1`` (BertEncoderLayer), ``3i+2`` (DyConv); without it
(GLIP-T (A), ``glip_A_Swin_T_O365.yaml``) module ``i`` is block ``i``'s DyConv and nothing else. That stride
(:data:`DEEP_STRIDE` / :data:`LATE_STRIDE`) is read from the state dict (:func:`official_tower_stride`) or the
model (``fusion``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch

from .checkpoint_format import (
    GLIP,
    CheckpointError,
    foreign_file,
    is_safetensors,
    read_openglip_file,
    write_checkpoint,
    wrong_kind_message,
)
from .config import ModelConfig, config_from_dict, config_to_json, get_preset

DERIVED = "<derived>"  # marker for official buffers that OpenGLIP computes instead of loading
DEEP_STRIDE = 3  # official tower modules per block with deep fusion: [VLFuse, BertEncoderLayer, DyConv]
LATE_STRIDE = 1  # ... without it (EARLY_FUSE_ON: False): [DyConv]
_TOWER_PARTS = ("cross_attn", "text_layer", "dyconv")  # our names of the three modules of a deep block
MODEL_CONFIG_KEY = "model_config"  # where training checkpoints keep the model config (written by the Trainer)


# --------------------------------------------------------------------------------------------------------------
# Official key mapping
# --------------------------------------------------------------------------------------------------------------

_TEXT_LAYER = {
    "attention.self.query": "query",
    "attention.self.key": "key",
    "attention.self.value": "value",
    "attention.output.dense": "attn_out",
    "attention.output.LayerNorm": "attn_norm",
    "intermediate.dense": "ffn_in",
    "output.dense": "ffn_out",
    "output.LayerNorm": "ffn_norm",
}
_DYCONV = {
    "DyConv.0.conv": "coarser.conv",
    "DyConv.0.bn": "coarser.norm",
    "DyConv.1.conv": "same.conv",
    "DyConv.1.bn": "same.norm",
    "DyConv.2.conv": "finer.conv",
    "DyConv.2.bn": "finer.norm",
    "AttnConv.1": "scale_attn",
    "relu.fc.0": "dyrelu.fc1",
    "relu.fc.2": "dyrelu.fc2",
    "offset": "offset",
}
_CROSS = {
    "b_attn.layer_norm_v": "norm_v",
    "b_attn.layer_norm_l": "norm_l",
    "b_attn.attn": "attn",
}
_HEAD = {
    "bbox_pred": "bbox_pred",
    "centerness": "centerness",
    "cls_logits": "cls_logits",
    "dot_product_projection_text": "text_proj",
}


def _map_module(rest: str, table: Mapping[str, str]) -> str | None:
    """Map ``<module>.<param>`` through ``table`` (longest module prefix wins)."""
    for official in sorted(table, key=len, reverse=True):
        if rest.startswith(official + "."):
            return table[official] + rest[len(official) :]
    return None


def official_key_to_openglip(key: str, tower_stride: int = DEEP_STRIDE) -> str | None:
    """The OpenGLIP name of an official GLIP state-dict key, :data:`DERIVED`, or ``None`` if unknown.

    ``tower_stride``: official tower modules per block, :data:`DEEP_STRIDE` or :data:`LATE_STRIDE` (see the module
    docstring; :func:`official_tower_stride` reads it from a state dict).
    """
    key = key.removeprefix("module.")
    if key.startswith("backbone.body."):
        return "backbone." + key[len("backbone.body.") :]
    m = re.fullmatch(r"backbone\.fpn\.fpn_(inner|layer)(\d)\.(weight|bias)", key)
    if m:
        kind = "lateral" if m.group(1) == "inner" else "output"
        return f"fpn.{kind}.{int(m.group(2)) - 2}.{m.group(3)}"
    m = re.fullmatch(r"backbone\.fpn\.top_blocks\.(p6|p7)\.(weight|bias)", key)
    if m:
        return f"fpn.{m.group(1)}.{m.group(2)}"
    if key == "language_backbone.body.model.embeddings.position_ids":
        return DERIVED
    if key.startswith("language_backbone.body.model."):
        return "text_encoder.bert." + key[len("language_backbone.body.model.") :]
    if re.fullmatch(r"rpn\.anchor_generator\.cell_anchors\.\d+", key):
        return DERIVED
    m = re.fullmatch(r"rpn\.head\.dyhead_tower\.(\d+)\.(.+)", key)
    if m:
        n, rest = int(m.group(1)), m.group(2)
        block, part = divmod(n, tower_stride)
        part += DEEP_STRIDE - tower_stride  # a late-fusion tower holds DyConvs (part 2) only
        prefix = f"tower.layers.{block}."
        if part == 0:
            if rest in ("b_attn.gamma_v", "b_attn.gamma_l"):
                return prefix + "cross_attn." + rest.split(".")[1]
            mapped = _map_module(rest, _CROSS)
            return prefix + "cross_attn." + mapped if mapped else None
        if part == 1:
            mapped = _map_module(rest, _TEXT_LAYER)
            return prefix + "text_layer." + mapped if mapped else None
        mapped = _map_module(rest, _DYCONV)
        return prefix + "dyconv." + mapped if mapped else None
    m = re.fullmatch(r"rpn\.head\.scales\.(\d+)\.scale", key)
    if m:
        return f"head.scales.{m.group(1)}.scale"
    if key in ("rpn.head.log_scale", "rpn.head.bias_lang", "rpn.head.bias0"):
        return "head." + key.split(".")[-1]
    if key.startswith("rpn.head."):
        mapped = _map_module(key[len("rpn.head.") :], _HEAD)
        return "head." + mapped if mapped else None
    return None


def openglip_key_to_official(key: str, tower_stride: int = DEEP_STRIDE) -> str | None:
    """Inverse of :func:`official_key_to_openglip` (for exporting to the official layout)."""
    if key.startswith("backbone."):
        return "backbone.body." + key[len("backbone.") :]
    m = re.fullmatch(r"fpn\.(lateral|output)\.(\d)\.(weight|bias)", key)
    if m:
        kind = "inner" if m.group(1) == "lateral" else "layer"
        return f"backbone.fpn.fpn_{kind}{int(m.group(2)) + 2}.{m.group(3)}"
    m = re.fullmatch(r"fpn\.(p6|p7)\.(weight|bias)", key)
    if m:
        return f"backbone.fpn.top_blocks.{m.group(1)}.{m.group(2)}"
    if key.startswith("text_encoder.bert."):
        return "language_backbone.body.model." + key[len("text_encoder.bert.") :]
    m = re.fullmatch(r"tower\.layers\.(\d+)\.(cross_attn|text_layer|dyconv)\.(.+)", key)
    if m:
        block, part, rest = int(m.group(1)), m.group(2), m.group(3)
        if tower_stride == LATE_STRIDE and part != "dyconv":
            return None  # a late-fusion official tower has no slot for it
        index = tower_stride * block + _TOWER_PARTS.index(part) - (DEEP_STRIDE - tower_stride)
        prefix = f"rpn.head.dyhead_tower.{index}."
        if part == "cross_attn" and rest in ("gamma_v", "gamma_l"):
            return prefix + "b_attn." + rest
        table = dict(zip(_TOWER_PARTS, (_CROSS, _TEXT_LAYER, _DYCONV)))[part]
        mapped = _map_module(rest, {v: k for k, v in table.items()})
        return prefix + mapped if mapped else None
    m = re.fullmatch(r"head\.scales\.(\d+)\.scale", key)
    if m:
        return f"rpn.head.scales.{m.group(1)}.scale"
    if key in ("head.log_scale", "head.bias_lang", "head.bias0"):
        return "rpn.head." + key.split(".")[-1]
    if key.startswith("head."):
        mapped = _map_module(key[len("head.") :], {v: k for k, v in _HEAD.items()})
        return "rpn.head." + mapped if mapped else None
    return None


def model_tower_stride(model) -> int:
    """The official tower stride of ``model``'s layout: :data:`LATE_STRIDE` for a ``fusion="late"`` model."""
    late = getattr(getattr(model, "config", None), "fusion", "deep") == "late"
    return LATE_STRIDE if late else DEEP_STRIDE


def official_tower_stride(state: Mapping[str, torch.Tensor]) -> int:
    """The tower stride of an official state dict: deep fusion iff it has VLFuse (``b_attn``) modules."""
    fuse = re.compile(r"(module\.)?rpn\.head\.dyhead_tower\.\d+\.b_attn\.")
    return DEEP_STRIDE if any(fuse.match(k) for k in state) else LATE_STRIDE


def export_official(model) -> dict[str, torch.Tensor]:
    """The model's weights under official GLIP key names (derived buffers included), as GLIP saves them."""
    state = {}
    stride = model_tower_stride(model)
    for key, value in model.state_dict().items():
        official = openglip_key_to_official(key, stride)
        if official is None:
            raise CheckpointError(f"{key} has no official GLIP name")
        state[official] = value
    for level, cell in enumerate(model.anchor_generator.cell_anchors()):
        state[f"rpn.anchor_generator.cell_anchors.{level}"] = cell.view(1, 4)
    positions = model.text_encoder.bert.config.max_position_embeddings
    state["language_backbone.body.model.embeddings.position_ids"] = torch.arange(positions).view(1, -1)
    return state


def _derived_ok(key: str, value: torch.Tensor, model) -> bool:
    key = key.removeprefix("module.")
    if key.endswith("position_ids"):
        return torch.equal(value.flatten().long(), torch.arange(value.numel()))
    level = int(key.rsplit(".", 1)[1])
    cells = model.anchor_generator.cell_anchors()
    return level < len(cells) and torch.allclose(value.float().view(-1, 4), cells[level].view(-1, 4))


def is_official_state_dict(state: Mapping[str, torch.Tensor]) -> bool:
    # "rpn.head." alone is not enough: any torchvision-style RPN module (RegionCLIP's) has such keys
    return any(
        k.removeprefix("module.").startswith(("rpn.head.dyhead_tower.", "language_backbone.body."))
        for k in state
    )


def guess_preset(state: Mapping[str, torch.Tensor]) -> str | None:
    """Which official preset a GLIP state dict was made for (from its Swin width and tower depth; a late-fusion
    GLIP-T (A) state dict gives ``"glip_t"``: :func:`guess_config` adds its ``fusion="late"``)."""
    keys = {k.removeprefix("module."): v for k, v in state.items()}
    proj = keys.get("backbone.body.patch_embed.proj.weight")
    if proj is None:
        return None
    towers = {int(m.group(1)) for k in keys if (m := re.match(r"rpn\.head\.dyhead_tower\.(\d+)\.", k))}
    stride = official_tower_stride(keys)
    width, depth = proj.shape[0], (max(towers) + 1) // stride if towers else 0
    if width == 96 and depth == 6:
        return "glip_t"
    if width == 192 and depth == 8:
        return "glip_l"
    return None


def guess_config(state: Mapping[str, torch.Tensor]) -> ModelConfig | None:
    """The config an official state dict loads into: :func:`guess_preset`'s preset, late fusion when the state
    dict has no VLFuse modules (GLIP-T (A)); ``None`` when the preset is not recognised."""
    name = guess_preset(state)
    if name is None:
        return None
    late = official_tower_stride(state) == LATE_STRIDE
    return dataclasses.replace(get_preset(name), fusion="late") if late else get_preset(name)


def convert_official(
    state: Mapping[str, torch.Tensor], model, optional: tuple[str, ...] = ()
) -> dict[str, torch.Tensor]:
    """Rename an official GLIP state dict to OpenGLIP names, checking that it matches ``model`` exactly
    (model keys starting with one of the ``optional`` prefixes may be missing).

    Raises:
        CheckpointError: unknown keys, keys left unmapped, missing parameters or shape mismatches, naming the
            first few of each.
    """
    expected = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    unexpected, bad_derived, mismatched = [], [], []
    stride = official_tower_stride(state)
    for key, value in state.items():
        ours = official_key_to_openglip(key, stride)
        if ours is None or (ours != DERIVED and ours not in expected):
            unexpected.append(key)
            continue
        if ours == DERIVED:
            if not _derived_ok(key, value, model):
                bad_derived.append(key)
            continue
        if ours in out:
            raise CheckpointError(f"two official keys map to {ours!r} (second: {key!r})")
        if tuple(value.shape) != tuple(expected[ours].shape):
            mismatched.append(
                f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(expected[ours].shape)}"
            )
        out[ours] = value
    missing = [k for k in expected if k not in out and not k.startswith(optional)]
    _raise_if_mismatch(missing, unexpected, mismatched, bad_derived, state, model)
    return out


def _raise_if_mismatch(missing, unexpected, mismatched, bad_derived, state, model) -> None:
    if not (missing or unexpected or mismatched or bad_derived):
        return
    lines = []
    if mismatched:
        lines.append(f"{len(mismatched)} shape mismatches, first: {'; '.join(mismatched[:3])}")
    if missing:
        lines.append(f"{len(missing)} model keys missing from the checkpoint, first: {missing[:3]}")
    if unexpected:
        lines.append(f"{len(unexpected)} unexpected checkpoint keys, first: {unexpected[:3]}")
    if bad_derived:
        lines.append(f"derived buffers differ from what this model computes: {bad_derived[:3]}")
    guess = guess_preset(state) if is_official_state_dict(state) else None
    name = getattr(getattr(model, "config", None), "name", "this")
    expected = model.state_dict()
    if state and not any(k in expected for k in state) and not is_official_state_dict(state):
        raise CheckpointError(
            f"this is not a GLIP or OpenGLIP checkpoint: none of its {len(state)} keys (first: {list(state)[:3]}) "
            f"belongs to the {name!r} model; give official GLIP weights or an OpenGLIP .safetensors"
        )
    hint = (
        f" The checkpoint looks like a {guess!r} checkpoint; load it with that preset."
        if guess and guess != name
        else ""
    )
    fusion_keys = re.compile(
        r"(module\.)?(tower\.layers\.\d+\.(cross_attn|text_layer)|rpn\.head\.dyhead_tower)\."
    )
    if unexpected and all(fusion_keys.match(k) for k in unexpected) and not (missing or mismatched):
        hint = (
            " The checkpoint has deep-fusion layers this late-fusion model lacks; load it with fusion=deep."
        )
    elif missing and all(fusion_keys.match(k) for k in missing) and not (unexpected or mismatched):
        hint = " The checkpoint has no deep-fusion layers (a fusion=late model); load it with fusion=late."
    raise CheckpointError(f"checkpoint does not match the {name!r} model: " + " | ".join(lines) + "." + hint)


# --------------------------------------------------------------------------------------------------------------
# Reading and writing files
# --------------------------------------------------------------------------------------------------------------


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], ModelConfig | None]:
    """Read a GLIP checkpoint file: returns (state dict, embedded config or None).

    Accepts an OpenGLIP ``.safetensors`` file, an official GLIP ``.pth`` (state under ``"model"``, keys with
    ``module.``), an OpenGLIP training checkpoint (``RUN/checkpoints/step_*.pt``: state under ``"model"``, the
    model config under ``"model_config"``, as :class:`~openglip.engine.trainer.Trainer` writes them), or a plain
    state dict.

    Raises:
        CheckpointError: no such file, or not GLIP weights; the message says what the file is (JSON, ONNX, a
            RegionCLIP model, a tuned prompt, ...) and what to do with it.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}: no such file")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory; give the weights file inside it")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint is empty (0 bytes): {path}")
    if is_safetensors(path):
        file = read_openglip_file(path)
        if file.kind not in (None, GLIP):
            raise CheckpointError(wrong_kind_message(path, file.kind))
        cfg = config_from_dict(json.loads(file.config), where=str(path)) if file.config else None
        return file.state, cfg
    foreign = foreign_file(path)
    if foreign:
        raise CheckpointError(f"{path} is {foreign}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter(
                "ignore"
            )  # torch's pickle-protocol notes: the error below says what matters
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        if "Weights only load failed" in first or "weights_only" in str(err):
            why = "it holds Python objects besides tensors (a training checkpoint of another library?)"
        else:
            why = f"not a PyTorch weights file ({type(err).__name__}: {first})"
        raise CheckpointError(
            f"cannot read checkpoint {path}: {why}; expected an OpenGLIP .safetensors or a PyTorch "
            ".pth/.pt state dict such as the official GLIP weights"
        ) from None
    cfg = None
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], Mapping):
        if isinstance(obj.get(MODEL_CONFIG_KEY), dict):
            cfg = config_from_dict(obj[MODEL_CONFIG_KEY], where=str(path))
        obj = obj["model"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not contain a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}, cfg


def load_into(model, state: Mapping[str, torch.Tensor], *, optional: tuple[str, ...] = ()) -> None:
    """Load an official or OpenGLIP state dict into ``model`` with strict semantics.

    Args:
        optional: key prefixes of parts the checkpoint may lack (e.g. GLIPv2 heads added for fine-tuning): such
            parts keep their fresh initialisation when absent and are loaded when present.
    """
    if is_official_state_dict(state):
        state = convert_official(state, model, optional)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.startswith(optional)]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    ]
    _raise_if_mismatch(missing, unexpected, mismatched, [], state, model)
    model.load_state_dict(state, strict=not optional)


def save_safetensors(model, path: str | os.PathLike, config: ModelConfig | None = None) -> None:
    """Write a GLIP model's weights and its config to one safetensors file (kind ``glip``, atomically)."""
    extra = {}
    if getattr(model, "answer_vocab", None):  # GLIPv2's VQA head: its classes travel with it
        extra["openglip_answers"] = json.dumps(list(model.answer_vocab))
    cfg = config or model.config
    write_checkpoint(path, model.state_dict(), kind=GLIP, config=config_to_json(cfg), extra=extra)


def names_a_file(preset_or_path: str) -> bool:
    """Preset names have no dots or slashes: anything else (``x.bin``, ``runs/a/model``) is a file."""
    return os.path.sep in preset_or_path or bool(Path(preset_or_path).suffix)


def resolve_config(preset_or_path: str, weights: str | None) -> tuple[ModelConfig, dict | None]:
    """Decide the config (and read the weights) for ``load_model``.

    ``preset_or_path`` is a preset name or a checkpoint file; ``weights`` an optional checkpoint file.
    """
    state, cfg = None, None
    if names_a_file(preset_or_path):
        if not Path(preset_or_path).exists():
            raise CheckpointError(f"{preset_or_path}: no such file (give a checkpoint file or a preset name)")
        state, cfg = read_checkpoint(preset_or_path)
        if cfg is None:
            cfg = guess_config(state) if is_official_state_dict(state) else None
            if cfg is None:
                raise CheckpointError(
                    f"{preset_or_path} carries no config and is not an official GLIP-T/L checkpoint; name its "
                    "preset (openglip ... --preset tiny, or load_model('tiny', weights=...))"
                )
    else:
        cfg = get_preset(preset_or_path)
    if weights is not None:
        state, embedded = read_checkpoint(weights)
        if embedded is not None:
            if embedded.name != cfg.name:
                raise CheckpointError(
                    f"{weights} is a GLIP checkpoint of preset {embedded.name!r}, not {cfg.name!r}; it carries its "
                    f"config: load it without a preset, load_model({str(weights)!r}) (CLI: drop --preset)"
                )
            cfg = embedded  # same preset, possibly with overrides recorded at training time
    return cfg, state
