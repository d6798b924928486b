"""Building RegionCLIP's models from their configs, and saving / loading their weights.

Every model is saved in OpenGLIP's one checkpoint format (:mod:`openglip.checkpoint_format`): a safetensors file
whose metadata holds its ``kind`` (``regionclip-teacher``, ``-rpn``, ``-student`` or ``-detector``) and the JSON
config needed to rebuild it, so ``load_*`` needs nothing else and :func:`openglip.load_model` opens a detector.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from pathlib import Path

import torch
from torch import nn

from ..checkpoint_format import CheckpointError, describe_kind, read_openglip_file, write_checkpoint
from ..checkpoints import load_into
from ..config import config_from_dict
from ..errors import UsageError
from .clip import CLIPTeacher, is_clip
from .concepts import ConceptPool, SentenceEncoder
from .config import RPNConfig, StudentConfig, TeacherConfig, TransferConfig
from .detector import OpenVocabDetector
from .inference import Postprocess
from .model import CLIPStudent, RegionStudent
from .proposals import ProposalNetwork
from .releases import read_release
from .teacher import ContrastiveTeacher

KINDS = (
    "teacher",
    "rpn",
    "student",
    "detector",
)  # saved as kind "regionclip-<kind>" in the one OpenGLIP format


def save_weights(model: nn.Module, path: str | os.PathLike, *, kind: str, config: dict) -> None:
    """Write ``model``'s state dict and ``config`` to one OpenGLIP safetensors file (kind ``regionclip-<kind>``),
    atomically."""
    if kind not in KINDS:
        raise UsageError(f"kind must be one of {KINDS}, not {kind!r}")
    write_checkpoint(path, model.state_dict(), kind=f"regionclip-{kind}", config=json.dumps(config))


def read_weights(path: str | os.PathLike, kind: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(config, state dict)`` of a file written by :func:`save_weights` (or by the older RegionCLIP format,
    with a :class:`DeprecationWarning`).

    Raises:
        UsageError: no such file, not OpenGLIP weights, or a file of another kind (the message says which).
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{kind} weights {path} not found (train them with: openglip regionclip ...)")
    try:
        file = read_openglip_file(path)
    except CheckpointError as err:
        raise UsageError(str(err)) from None
    if file.kind != f"regionclip-{kind}" or file.config is None:
        raise UsageError(f"{path} is {describe_kind(file.kind)}, expected a RegionCLIP {kind}")
    return json.loads(file.config), file.state


def load_state(model: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """The core's strict loader (:func:`openglip.checkpoints.load_into`), its error naming the file."""
    try:
        load_into(model, state)
    except CheckpointError as err:
        raise UsageError(f"{where}: {err}") from None


# -- builders -------------------------------------------------------------------------------------------------


def _pick(cfg, *names: str) -> dict:
    """``{name: cfg.name}`` (JSON lists as tuples): the constructor arguments a config holds under the same names."""
    return {n: tuple(v) if isinstance(v := getattr(cfg, n), list) else v for n in names}


def build_teacher(
    cfg: TeacherConfig, *, pretrained: bool | None = None, centre: torch.Tensor | None = None
) -> ContrastiveTeacher:
    """A teacher from its config (``pretrained`` overrides ``cfg.pretrained``)."""
    return ContrastiveTeacher(
        pretrained=cfg.pretrained if pretrained is None else pretrained,
        text_centre=centre,
        **_pick(cfg, "backbone", "embed_dim", "init_temperature", "crop_size", "crop_context"),
    )


def build_rpn(cfg: RPNConfig, *, pretrained: bool | None = None) -> ProposalNetwork:
    """An RPN from its config."""
    fields = ("backbone", "fpn_channels", "anchor_sizes", "aspect_ratios", "pre_nms_top_n", "post_nms_top_n")
    return ProposalNetwork(
        pretrained=cfg.pretrained if pretrained is None else pretrained,
        nms_thresh=cfg.nms_thresh,
        **_pick(cfg, *fields),
    )


def build_student(
    cfg: StudentConfig, *, pretrained: bool | None = None, centre: torch.Tensor | None = None
) -> RegionStudent | CLIPStudent:
    """A student from the :class:`StudentConfig` fields of ``cfg`` (a pretraining or transfer config); a CLIP
    student when ``cfg.backbone`` is ``clip:ARCH:PATH`` (initialised from those weights)."""
    if is_clip(cfg.backbone):
        student = CLIPStudent(cfg.backbone)
        if centre is not None:
            student.text_centre.copy_(centre)
        return student
    student = RegionStudent(
        pretrained=cfg.pretrained if pretrained is None else pretrained,
        **_pick(cfg, "backbone", "fpn_channels", "roi_size", "head_dim", "embed_dim", "init_temperature"),
    )
    if centre is not None:
        student.text_centre.copy_(centre)
    return student


def build_detector(
    cfg: TransferConfig,
    *,
    rpn_config: RPNConfig | None = None,
    templates: tuple[str, ...] | None = None,
    encoder: str | None = None,
    text: SentenceEncoder | None = None,
    seen_classes: tuple[str, ...] = (),
) -> OpenVocabDetector:
    """A detector from a transfer config.

    Without ``rpn_config`` the parts are loaded from the files the config names (``rpn``, ``concepts``, and
    ``student`` when set: frozen, it is the ensemble partner of the class scores, and it initialises the box head
    unless ``init_from_student`` is off); with it (and
    ``templates``/``encoder``) an empty detector of that shape is built, to receive an exported state dict.
    """
    pretrained = None
    release = released_student(cfg.student)
    if release is not None:  # RegionCLIP's own pretrained model: the paper's initialisation of the detector
        cfg = dataclasses.replace(cfg, backbone=f"clip:{release}:{cfg.student}", student="")
    if rpn_config is None:
        rpn = load_rpn(required_path(cfg.rpn, "rpn"))
        pool = ConceptPool.load(required_path(cfg.concepts, "concepts"))
        templates, encoder = pool.templates, pool.encoder
        init = bool(cfg.student) and cfg.init_from_student
        student = build_student(cfg, pretrained=cfg.pretrained and not init)
        if cfg.student:
            _, state = read_weights(cfg.student, "student")
            pretrained = copy.deepcopy(student) if init else build_student(cfg, pretrained=False)
            load_state(pretrained, state, cfg.student)
            pretrained.text_centre.copy_(pool.centre)
            if init:
                student.load_state_dict(pretrained.state_dict())
        if release is not None:  # frozen, the ensemble partner of the class scores, as a pretrained student
            pretrained = copy.deepcopy(student)
        student.text_centre.copy_(pool.centre)  # the pool's space, whatever the student was pretrained with
    else:
        rpn = build_rpn(rpn_config, pretrained=False)
        student = build_student(cfg, pretrained=False)
        pretrained = copy.deepcopy(student) if cfg.student or release is not None else None
    # the detector uses neither the global image embedding nor the student's temperature
    for p in student.image_only():
        p.requires_grad_(False)
    return OpenVocabDetector(
        rpn=rpn,
        student=student,
        post=Postprocess.of(cfg),
        **_pick(cfg, "temperature", "rois_per_image", "positive_fraction", "fg_iou"),
        templates=tuple(templates),
        encoder=str(encoder),
        text=text,
        pretrained=pretrained,
        seen_classes=seen_classes,
        unseen_weight=cfg.unseen_weight,
        seen_weight=cfg.seen_weight,
    )


def released_student(path: str | None) -> str | None:
    """The CLIP architecture (``RN50``, ``RN50x4``) of a released RegionCLIP model or OpenAI CLIP file given as
    ``--student``, or None for an OpenGLIP student file (or none)."""
    if not path or str(path).endswith(".safetensors") or not Path(path).is_file():
        return None
    try:
        release = read_release(path)
    except CheckpointError:
        return None
    return release.arch if release.layout in ("pretrained", "finetuned", "openai-clip") else None


def required_path(path: str, what: str) -> str:
    """``path`` itself; a ``ValueError`` naming the config key when it is empty (the loaders report missing files)."""
    if not path:
        raise UsageError(f"no {what} file given: set {what}=PATH")
    return path


# -- loaders --------------------------------------------------------------------------------------------------


def load_region_teacher(path: str | os.PathLike) -> ContrastiveTeacher | CLIPTeacher:
    """The teacher that aligns regions to concepts (eval mode, frozen): a CLIP ResNet for ``clip:ARCH:PATH``,
    else a trained stand-in teacher file (``openglip regionclip teacher``)."""
    if is_clip(str(path)):
        return CLIPTeacher(str(path))
    cfg, state = read_weights(path, "teacher")
    teacher = build_teacher(
        config_from_dict(cfg["teacher"], TeacherConfig, where=str(path)), pretrained=False
    )
    load_state(teacher, state, str(path))
    return teacher.requires_grad_(False).eval()


def load_rpn(path: str | os.PathLike) -> ProposalNetwork:
    """A trained RPN (eval mode, frozen)."""
    cfg, state = read_weights(path, "rpn")
    rpn = build_rpn(config_from_dict(cfg["rpn"], RPNConfig, where=str(path)), pretrained=False)
    load_state(rpn, state, str(path))
    return rpn.requires_grad_(False).eval()


def load_student(path: str | os.PathLike) -> tuple[RegionStudent, dict]:
    """A pretrained student (eval mode) and its saved config (``{"pretrain": {...}, "templates", "encoder"}``)."""
    cfg, state = read_weights(path, "student")
    fields = {f.name for f in dataclasses.fields(StudentConfig)}
    arch = config_from_dict({k: v for k, v in cfg["pretrain"].items() if k in fields}, StudentConfig)
    student = build_student(arch, pretrained=False)
    load_state(student, state, str(path))
    return student.eval(), cfg


def load_detector(path: str | os.PathLike, *, text: SentenceEncoder | None = None) -> OpenVocabDetector:
    """A transferred detector, ready for :meth:`OpenVocabDetector.predict` (eval mode)."""
    cfg, state = read_weights(path, "detector")
    detector = build_detector(
        config_from_dict(cfg["transfer"], TransferConfig, where=str(path)),
        rpn_config=config_from_dict(cfg["rpn"], RPNConfig, where=str(path)),
        templates=tuple(cfg["templates"]),
        encoder=cfg["encoder"],
        text=text,
        seen_classes=tuple(cfg.get("classes", ())),
    )
    load_state(detector, state, str(path))
    return detector.eval()
