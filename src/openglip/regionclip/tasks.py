"""RegionCLIP's stages as tasks for :class:`openglip.engine.trainer.Trainer` (see ``GLIPTask`` there for the
contract): the teacher (image-caption InfoNCE), the class-agnostic RPN, region-text pretraining of the student,
and transfer to open-vocabulary detection. ``losses`` only *calls* the trained model (it may be DDP-wrapped);
frozen helpers (text encoder, teacher, RPN used for pretraining regions) live on the task and run under
``no_grad`` — they are deterministic, so a resumed run repeats the losses exactly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import nn

from ..config import TrainConfig, config_from_dict
from ..engine.optim import freeze_parts, param_groups
from ..errors import UsageError
from ..tasks.base import TaskBase
from .concepts import ConceptPool, SentenceEncoder
from .config import PretrainConfig, RPNConfig, TeacherConfig, TransferConfig
from .data import RegionBatch, collate_regions
from .losses import (
    box_regression_loss,
    compatible_concepts,
    distillation_kl,
    focal_softmax_loss,
    image_text_contrastive,
    region_text_contrastive,
    with_concept_negatives,
)
from .proposals import ProposalNetwork, top_regions
from .teacher import ContrastiveTeacher
from .weights import (
    build_detector,
    build_rpn,
    build_student,
    build_teacher,
    load_state,
    read_weights,
    required_path,
    save_weights,
)


def same_caption(captions: list[str], device) -> torch.Tensor:
    """``(B, B)`` bool: captions ``i`` and ``j`` are the same text (both are positives of both images)."""
    ids = {c: i for i, c in enumerate(dict.fromkeys(captions))}
    t = torch.tensor([ids[c] for c in captions], device=device)
    return t[:, None] == t[None, :]


class _Task(TaskBase):
    """What every stage shares: no text parameters inside the trained model, region batches, safetensors export
    (the stage's config is its model config; its dataset comes from :mod:`openglip.regionclip.train`)."""

    kind = ""

    evaluator = None  # optional (model, step) -> metrics

    def param_groups(self, model: nn.Module, cfg: TrainConfig) -> list[dict]:
        return param_groups(model, cfg)  # the text encoder is frozen and outside the trained model

    def evaluate(self, model: nn.Module, step: int) -> dict[str, float]:
        return self.evaluator(model, step) if self.evaluator is not None else {}

    def collate_fn(self):
        return collate_regions

    def load_weights(self, model: nn.Module, path: str) -> None:
        _, state = read_weights(path, self.kind)
        load_state(model, state, path)

    def export(self, model: nn.Module, path) -> None:
        save_weights(model, path, kind=self.kind, config=self.config_dict())

    def config_dict(self) -> dict:
        raise NotImplementedError


class TeacherTask(_Task):
    """Trains the teacher: symmetric InfoNCE between its image embeddings and the frozen, centred caption embeddings
    (equal captions in a batch count as positives of each other)."""

    kind = "teacher"

    def __init__(self, cfg: TeacherConfig, *, pool: ConceptPool, text: SentenceEncoder):
        if pool.dim != cfg.embed_dim:
            raise UsageError(f"the concept pool is {pool.dim}-d but embed_dim={cfg.embed_dim}")
        self.cfg, self.pool, self.text = cfg, pool, text

    def build_model(self) -> ContrastiveTeacher:
        return build_teacher(self.cfg, centre=self.pool.centre)

    def freeze(self, model: ContrastiveTeacher, spec: str) -> list[str]:
        return freeze_parts({"backbone": model.encoder}, spec)

    def losses(self, model, batch: RegionBatch) -> dict[str, torch.Tensor]:
        emb, scale = model(batch.images)  # (B, D), scalar
        with torch.no_grad():
            text = self.pool.centred(self.text.sentences(batch.captions)).to(emb)  # (B, D)
        return {
            "image_text": image_text_contrastive(emb, text, scale, same_caption(batch.captions, emb.device))
        }

    def config_dict(self) -> dict:
        return {
            "teacher": dataclasses.asdict(self.cfg),
            "templates": list(self.pool.templates),
            "encoder": self.pool.encoder,
        }


class RPNTask(_Task):
    """Trains the class-agnostic RPN on ground-truth boxes (labels ignored)."""

    kind = "rpn"

    def __init__(self, cfg: RPNConfig):
        self.cfg = cfg

    def build_model(self) -> ProposalNetwork:
        return build_rpn(self.cfg)

    def freeze(self, model: ProposalNetwork, spec: str) -> list[str]:
        return freeze_parts({"backbone": model.features.backbone}, spec)

    def losses(self, model, batch: RegionBatch) -> dict[str, torch.Tensor]:
        _, _, losses = model(batch.images, batch.boxes)
        return losses

    def config_dict(self) -> dict:
        return {"rpn": dataclasses.asdict(self.cfg)}


class PretrainTask(_Task):
    """Region-text pretraining of the student (RegionCLIP Sec. 3.2-3.3).

    Per batch: regions (the RPN's top proposals, or the dataset's random crops), the teacher's concept logits for
    each region (crops), the caption embeddings; then the student's region-text contrastive loss (target: the
    teacher's best concept), image-text contrastive loss and KL distillation, each times its weight.

    Args:
        cfg: the pretraining config.
        pool: the concept pool.
        text: the text encoder of the pool.
        teacher: the trained, frozen teacher.
        rpn: the trained, frozen RPN (needed when ``cfg.region_source == "rpn"``).
    """

    kind = "student"

    def __init__(
        self,
        cfg: PretrainConfig,
        *,
        pool: ConceptPool,
        text: SentenceEncoder,
        teacher: nn.Module,
        rpn: ProposalNetwork | None,
    ):
        if cfg.region_source not in ("rpn", "random"):
            raise UsageError(f"region_source must be rpn or random, not {cfg.region_source!r}")
        if cfg.region_source == "rpn" and rpn is None:
            raise UsageError("region_source=rpn needs a trained RPN: set rpn=PATH")
        if not torch.allclose(teacher.text_centre.cpu(), pool.centre.cpu(), atol=1e-5):
            raise UsageError(
                "the teacher was trained in another concept pool's text space: use the same concepts file"
            )
        self.cfg, self.pool, self.text = cfg, pool, text
        self.teacher = teacher.requires_grad_(False).eval()
        self.rpn = None if rpn is None else rpn.requires_grad_(False).eval()

    def build_model(self):
        student = build_student(self.cfg, centre=self.pool.centre)
        if student.embed_dim != self.pool.dim:
            raise UsageError(
                f"the student embeds into {student.embed_dim} dimensions but the concept pool's text space has "
                f"{self.pool.dim} (a CLIP student needs a pool built with encoder= the same CLIP)"
            )
        return student

    def freeze(self, model, spec: str) -> list[str]:
        return freeze_parts(model.parts(), spec)

    @torch.no_grad()
    def targets(
        self, batch: RegionBatch
    ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(regions per image, teacher's best concept (K,), teacher logits (K, C), caption embeddings (B, D))``."""
        device = batch.images.device
        self.teacher.to(device)
        if self.cfg.region_source == "rpn":
            self.rpn.to(device)
            boxes, scores, _ = self.rpn(batch.images)
            regions, _ = top_regions(boxes, scores, k=self.cfg.regions_per_image, iou=self.cfg.region_nms)
        else:
            regions = batch.boxes
        concepts = self.pool.embeddings.to(device)
        best, logits = self.teacher.align(self.teacher.embed_regions(batch.images, regions), concepts)
        captions = self.pool.centred(self.text.sentences(batch.captions)).to(device)
        return regions, best, logits, captions

    def losses(self, model, batch: RegionBatch) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        regions, best, teacher_logits, captions = self.targets(batch)
        out = model(batch.images, regions)
        concepts = self.pool.embeddings.to(out.region_emb)
        student_logits = out.logit_scale * out.region_emb @ concepts.t()  # (K, C)
        positives = same_caption(batch.captions, captions.device)
        # zero-weighted terms stay in the graph so that every parameter gets a gradient (DDP needs it)
        return {
            "region_text": cfg.region_weight
            * region_text_contrastive(out.region_emb, concepts, best, out.logit_scale),
            "image_text": cfg.image_weight
            * image_text_contrastive(out.image_emb, captions.to(out.image_emb), out.logit_scale, positives),
            "distill": cfg.distill_weight
            * distillation_kl(student_logits, teacher_logits.to(student_logits), cfg.distill_temperature),
        }

    def config_dict(self) -> dict:
        return {
            "pretrain": dataclasses.asdict(self.cfg),
            "templates": list(self.pool.templates),
            "encoder": self.pool.encoder,
        }


class TransferTask(_Task):
    """Open-vocabulary detection training on base categories (RegionCLIP Sec. 3.4): focal-scaled softmax CE over
    the base class names + background (background weighted), class-agnostic smooth-L1 box regression.

    Args:
        cfg: the transfer config (names the RPN, concept pool and optional pretrained student files).
        text: the sentence encoder of the pool.
        classes: the training class names (the base categories of the data).
        evaluator: optional ``(model, step) -> metrics`` run at ``eval_every`` steps and at the end.
    """

    kind = "detector"

    def __init__(
        self,
        cfg: TransferConfig,
        *,
        text: SentenceEncoder,
        classes: list[str],
        evaluator: Callable | None = None,
    ):
        self.cfg, self.text, self.evaluator = cfg, text, evaluator
        self.classes = list(classes)
        self.pool = ConceptPool.load(required_path(cfg.concepts, "concepts"))
        saved, _ = read_weights(required_path(cfg.rpn, "rpn"), "rpn")
        self.rpn_cfg = config_from_dict(saved["rpn"], RPNConfig)
        self.class_emb = self.pool.embed(self.classes, text)  # (C, D)
        # concept negatives: the pool minus the class names themselves (already in the classifier)
        names = set(self.classes)
        keep = [k for k, n in enumerate(self.pool.names) if n not in names]
        self.negatives = self.pool.embeddings[keep]  # (P, D)
        self.compatible = compatible_concepts(self.classes, [self.pool.names[k] for k in keep])  # (C, P)

    def build_model(self):
        return build_detector(self.cfg, text=self.text, seen_classes=tuple(self.classes))

    def freeze(self, model, spec: str) -> list[str]:
        return freeze_parts(model.student.parts(), spec)

    def losses(self, model, batch: RegionBatch) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        out = model(batch.images, self.class_emb.to(batch.images), batch.boxes, batch.labels)
        background = len(self.classes)
        logits, labels = out.logits, out.labels
        if cfg.pool_negatives and len(self.negatives):
            logits, labels = with_concept_negatives(
                logits, labels, out.region_emb, self.negatives.to(logits), self.compatible, cfg.temperature
            )
        return {
            "cls": focal_softmax_loss(
                logits, labels, gamma=cfg.focal_gamma, background_weight=cfg.background_weight
            ),
            "box": cfg.box_weight
            * box_regression_loss(out.box_deltas, out.box_targets, out.labels, background),
        }

    def config_dict(self) -> dict:
        return {
            "transfer": dataclasses.asdict(self.cfg),
            "rpn": dataclasses.asdict(self.rpn_cfg),
            "classes": self.classes,
            "templates": list(self.pool.templates),
            "encoder": self.pool.encoder,
        }
