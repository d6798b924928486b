"""Loading RegionCLIP's released files into :class:`~openglip.regionclip.rcnn.OfficialRegionCLIP`, and the one
OpenGLIP file (kind ``regionclip-official``) a converted release is kept in."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch

from ..checkpoint_format import CheckpointError, describe_kind, read_openglip_file, write_checkpoint
from ..data.coco import load_json
from ..errors import DataError, UsageError
from ..protocols.common import category_names, ovcoco_split
from .clip_text import load_concept_embeddings
from .rcnn import OFFICIAL_KIND, PRESETS, OfficialRegionCLIP, RCNNConfig
from .releases import Release, read_release


def _text_state(text: str | os.PathLike, arch: str) -> dict[str, torch.Tensor]:
    """The ``lang_encoder.*`` weights of a pretrained RegionCLIP file or an OpenAI CLIP file."""
    release = read_release(text)
    state = {k: v for k, v in release.state.items() if k.startswith("lang_encoder.")}
    if not state:
        raise CheckpointError(
            f"{text} holds no CLIP text encoder ({release.layout} file); give regionclip_pretrained-cc_*.pth or "
            "OpenAI's RN50.pt / RN50x4.pt"
        )
    if release.arch != arch:
        raise CheckpointError(f"{text} is a {release.arch} CLIP, but the detector is {arch}")
    return state


def _preset_for(release: Release, preset: str | None) -> RCNNConfig:
    if preset is not None:
        if preset not in PRESETS:
            raise UsageError(f"unknown RegionCLIP preset {preset!r}; choose one of {sorted(PRESETS)}")
        cfg = PRESETS[preset]
    elif release.layout == "finetuned":
        rows = int(release.state["roi_heads.box_predictor.cls_score.weight"].shape[0])
        cfg = PRESETS["lvis"] if rows > 80 else PRESETS["coco"]
    else:
        cfg = PRESETS["zeroshot"]
    rows = release.state.get("roi_heads.box_predictor.cls_score.weight")
    return dataclasses.replace(
        cfg, arch=release.arch, train_classes=1 if rows is None else int(rows.shape[0])
    )


def load_official(
    weights: str | os.PathLike,
    *,
    rpn: str | os.PathLike | None = None,
    text: str | os.PathLike | None = None,
    preset: str | None = None,
    device: str | torch.device | None = None,
    min_size: int | None = None,
    max_size: int | None = None,
    proposals: int | None = None,
) -> OfficialRegionCLIP:
    """A released RegionCLIP model as an :class:`OfficialRegionCLIP`, every key of the files mapped to one
    parameter and none left over.

    Args:
        weights: ``regionclip_finetuned-{coco,lvis}_*.pth`` (a transferred detector), or
            ``regionclip_pretrained-cc_*.pth`` / OpenAI's ``RN50.pt`` (zero-shot: proposals scored as they are).
        rpn: ``rpn_coco_48.pth``, ``rpn_lvis_866.pth``, ...; needed unless ``weights`` carries its RPN.
        text: where the CLIP text encoder comes from when ``weights`` has none (a transferred detector):
            ``regionclip_pretrained-cc_*.pth`` or OpenAI's CLIP file. Without it, class embeddings must be given
            to :meth:`OfficialRegionCLIP.set_vocabulary` (e.g. a released ``concept_emb`` file).
        preset: ``coco``, ``lvis`` or ``zeroshot`` (default: from the file: a detector transferred on more than 80
            classes is ``lvis``, one on fewer ``coco``, a pretrained model ``zeroshot``).
        device: where the model runs (default CPU).
        min_size, max_size: the test resize (default the official 800 / 1333; smaller is faster on a CPU and
            finds fewer small objects).
        proposals: RPN proposals per image (official 1000; fewer is faster on a CPU).

    Raises:
        CheckpointError: a file of the wrong layout or architecture, or keys that do not fit (named).
        UsageError: no RPN for a preset that needs one, or a transferred box head asked of a pretrained model.
    """
    release = read_release(weights)
    if release.layout == "rpn":
        raise CheckpointError(
            f"{weights} is an RPN (a detectron2 Mask R-CNN); give it as rpn=, with the detector"
        )
    state = dict(release.state)
    rpn_kind = release.rpn
    if rpn is not None:
        rpn_release = read_release(rpn)
        if rpn_release.layout != "rpn":
            raise CheckpointError(f"{rpn} is a {rpn_release.layout} file, not an RPN (rpn_coco_48.pth, ...)")
        state = {k: v for k, v in state.items() if not k.startswith("offline_")} | rpn_release.state
        rpn_kind = rpn_release.rpn
    cfg = _preset_for(release, preset)
    for name, value, least in (
        ("min_size", min_size, 32),
        ("max_size", max_size, 32),
        ("proposals", proposals, 1),
    ):
        if value is not None:
            if int(value) < least:
                raise UsageError(f"{name} must be at least {least}, not {value}")
            cfg = dataclasses.replace(cfg, **{name: int(value)})
    if rpn_kind is None:
        raise UsageError(
            f"{weights} carries no RPN: give one (rpn_coco_48.pth for COCO, rpn_lvis_866.pth for LVIS and "
            "zero-shot), e.g. --rpn rpn_coco_48.pth"
        )
    if rpn_kind != cfg.rpn:  # the RPN given decides its architecture; the preset keeps its other settings
        cfg = dataclasses.replace(
            cfg, rpn=rpn_kind, rpn_nms_thresh=cfg.rpn_nms_thresh if rpn_kind == "fpn" else None
        )
    if text is not None:
        state = {k: v for k, v in state.items() if not k.startswith("lang_encoder.")} | _text_state(
            text, cfg.arch
        )
    if not cfg.head.no_box_delta and "roi_heads.box_predictor.bbox_pred.weight" not in state:
        raise UsageError(
            f"{weights} is a {release.layout} model without a transferred box head: use preset='zeroshot' "
            "(its proposals are the boxes), or a regionclip_finetuned-*.pth detector"
        )
    model = OfficialRegionCLIP(cfg, text=any(k.startswith("lang_encoder.") for k in state))
    load_official_state(model, state, where=str(weights))
    return model.to(device or "cpu")


def load_official_state(model: OfficialRegionCLIP, state: dict[str, torch.Tensor], where: str) -> None:
    """Strict loading: every key of ``state`` fits one parameter or buffer; the model's keys a pretrained model
    cannot have (its ``roi_heads``: the background embedding is zero by construction, the box deltas unused) and
    the open-set classifier may be absent.

    Raises:
        CheckpointError: unexpected keys, missing keys or shape mismatches, named.
    """
    expected = model.state_dict()
    optional = (
        ("roi_heads.",) if model.cfg.head.no_box_delta else ("roi_heads.box_predictor.test_cls_score.",)
    )
    unexpected = [k for k in state if k not in expected]
    missing = [k for k in expected if k not in state and not k.startswith(optional)]
    wrong = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if unexpected or missing or wrong:
        parts = [
            f"{len(keys)} {what}: {', '.join(keys[:5])}"
            for what, keys in (
                ("unexpected keys", unexpected),
                ("missing keys", missing),
                ("wrong shapes", wrong),
            )
            if keys
        ]
        raise CheckpointError(
            f"{where} does not fit RegionCLIP {model.cfg.arch} ({model.cfg.rpn} RPN): " + "; ".join(parts)
        )
    model.load_state_dict(state, strict=False)


def read_names(path: str | os.PathLike, rows: int | None = None) -> list[str]:
    """The class names of a concept-embedding file's rows: a text file (one a line) or a COCO / LVIS JSON (its
    categories in id order, as the official datasets register them). A COCO file with more classes than a 65-row
    file (``coco_65_cls_emb.pth``) gives the OV-COCO 48 + 17 classes among them, in id order."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"class-name file {path} not found")
    if path.suffix != ".json":
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if not names:
            raise DataError(f"{path}: no class names (one a line)")
        return names
    data = load_json(path)
    cats = data.get("categories") if isinstance(data, dict) else None
    if not isinstance(cats, list) or not cats or not all(isinstance(c, dict) and "name" in c for c in cats):
        raise DataError(f"{path}: no 'categories' list with names to take the class names from")
    cats = sorted(cats, key=lambda c: c.get("id", 0))
    split = {n.lower() for n in ovcoco_split()}
    if rows is not None and len(cats) != rows and rows == len(split):
        cats = [c for c in cats if str(c["name"]).lower() in split]
    # cleaned as the benchmark protocols clean them for prompts, so their prompts find these rows
    return category_names(cats)


def with_concepts(model: OfficialRegionCLIP, concepts: str | os.PathLike, names) -> None:
    """Use a released ``concept_emb`` file (``coco_65_cls_emb.pth``, ``lvis_1203_cls_emb.pth``, ...) for
    ``names`` (a list, one name a row in order, or a file for :func:`read_names`), so a prompt of those names uses
    the official embeddings."""
    emb = load_concept_embeddings(concepts, dim=model.roi_heads.box_predictor.cls_score.in_features)
    if isinstance(names, (str, os.PathLike)):
        names = read_names(names, rows=emb.shape[0])
    if emb.shape[0] != len(names):
        raise UsageError(
            f"{concepts} holds {emb.shape[0]} class embeddings, but {len(names)} names were given"
        )
    model.set_vocabulary(names, emb)
    model.stored = (tuple(model.vocabulary), emb)


def save_official(model: OfficialRegionCLIP, path: str | os.PathLike) -> None:
    """One OpenGLIP file (kind ``regionclip-official``) with the config, every weight and the stored vocabulary,
    for ``openglip.load_model``, evaluation, benchmarks and ``openglip serve``."""
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("roi_heads.box_predictor.test_")}
    config = {"rcnn": model.cfg.to_dict(), "vocabulary": list(model.stored[0]) if model.stored else []}
    if model.stored:
        state["vocabulary_embeddings"] = model.stored[1]
    write_checkpoint(path, state, kind=OFFICIAL_KIND, config=json.dumps(config))


def load_converted(path: str | os.PathLike, device: str | torch.device | None = None) -> OfficialRegionCLIP:
    """An :class:`OfficialRegionCLIP` written by :func:`save_official`."""
    file = read_openglip_file(path)
    if file.kind != OFFICIAL_KIND:
        raise CheckpointError(f"{path} is {describe_kind(file.kind)}, not {describe_kind(OFFICIAL_KIND)}")
    config = json.loads(file.config)
    state = dict(file.state)
    stored = state.pop("vocabulary_embeddings", None)
    cfg = RCNNConfig.from_dict(config["rcnn"])
    model = OfficialRegionCLIP(cfg, text=any(k.startswith("lang_encoder.") for k in state))
    load_official_state(model, state, where=str(path))
    if stored is not None:
        model.set_vocabulary(config["vocabulary"], stored)
        model.stored = (tuple(model.vocabulary), stored)
    return model.to(device or "cpu")
