"""Running RegionCLIP's stages end to end: concept pool -> teacher -> RPN -> pretraining -> transfer.

Each ``run_*`` function builds the stage's dataset and task and trains with the project's
:class:`~openglip.engine.trainer.Trainer` (checkpoints, exact resume, EMA, DDP under torchrun); the final weights
are ``<out_dir>/model.safetensors``. :func:`default_train_config` holds CPU-sized training recipes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from ..config import TrainConfig
from ..data.shapes import ShapesWorld
from ..errors import UsageError
from ..prompts import get_extractor
from .concepts import ConceptPool, TextEncoder, load_text_encoder
from .config import ConceptConfig, PretrainConfig, RPNConfig, TeacherConfig, TransferConfig
from .data import ShapesBoxes, ShapesCaptions
from .tasks import PretrainTask, RPNTask, TeacherTask, TransferTask
from .weights import load_rpn, load_teacher, required_path

_COMMON = dict(checkpoint_every=100, log_every=10, schedule="cosine", warmup_factor=0.01, ema_decay=0.0)
STAGE_DEFAULTS: dict[str, dict] = {
    "teacher": dict(max_steps=300, batch_size=32, lr=1e-3, warmup_steps=20, weight_decay=1e-4),
    "rpn": dict(max_steps=300, batch_size=16, lr=1e-3, warmup_steps=20, weight_decay=1e-4),
    "pretrain": dict(max_steps=300, batch_size=16, lr=5e-4, warmup_steps=20, weight_decay=1e-4),
    "transfer": dict(max_steps=300, batch_size=16, lr=5e-4, warmup_steps=20, weight_decay=1e-4),
}


def default_train_config(stage: str, out_dir: str, **changes) -> TrainConfig:
    """The CPU-sized :class:`TrainConfig` of a stage (``teacher``, ``rpn``, ``pretrain``, ``transfer``)."""
    if stage not in STAGE_DEFAULTS:
        raise UsageError(f"unknown stage {stage!r}; choose from {', '.join(STAGE_DEFAULTS)}")
    return dataclasses.replace(
        TrainConfig(), out_dir=str(out_dir), **{**_COMMON, **STAGE_DEFAULTS[stage], **changes}
    )


def _text(text: TextEncoder | None, device) -> TextEncoder:
    return text if text is not None else load_text_encoder(device="cpu" if device is None else device)


def run_concepts(cfg: ConceptConfig, out_path: str | Path, *, text: TextEncoder | None = None) -> ConceptPool:
    """Parse the caption corpus (both captions of the first ``cfg.num_images`` pretraining images), build the
    pool and save it to ``out_path``."""
    world = ShapesWorld(
        split="all", image_size=cfg.image_size, max_objects=cfg.max_objects, seed=cfg.data_seed
    )
    captions = [c.caption for i in range(cfg.num_images) for c in world.sample(i).captions]
    pool = ConceptPool.build(
        captions, text=_text(text, None), extractor=get_extractor(cfg.extractor), min_count=cfg.min_count
    )
    pool.save(out_path)
    return pool


def _fit(task, train_cfg: TrainConfig, dataset, *, resume: bool, device) -> Path:
    from ..engine.trainer import Trainer

    trainer = Trainer(task, train_cfg, dataset, resume=resume, device=device)
    trainer.fit()
    return Path(train_cfg.out_dir) / "model.safetensors"


def run_teacher(
    cfg: TeacherConfig,
    train_cfg: TrainConfig,
    *,
    text: TextEncoder | None = None,
    resume: bool = False,
    device=None,
) -> Path:
    """Train the teacher on 1-2-object shapes images with listing captions (split "all")."""
    pool = ConceptPool.load(required_path(cfg.concepts, "concepts"))
    dataset = ShapesCaptions(
        size=cfg.epoch_size, split="all", image_size=cfg.image_size, min_objects=cfg.min_objects,
        max_objects=cfg.max_objects, seed=cfg.data_seed, caption="listing",
    )  # fmt: skip
    return _fit(
        TeacherTask(cfg, pool=pool, text=_text(text, device)),
        train_cfg,
        dataset,
        resume=resume,
        device=device,
    )


def run_rpn(cfg: RPNConfig, train_cfg: TrainConfig, *, resume: bool = False, device=None) -> Path:
    """Train the class-agnostic RPN on the boxes of the shapes "train" split (base categories only)."""
    dataset = ShapesBoxes(
        size=cfg.epoch_size,
        split="train",
        image_size=cfg.image_size,
        max_objects=cfg.max_objects,
        seed=cfg.data_seed,
    )
    return _fit(RPNTask(cfg), train_cfg, dataset, resume=resume, device=device)


def run_pretrain(
    cfg: PretrainConfig,
    train_cfg: TrainConfig,
    *,
    text: TextEncoder | None = None,
    resume: bool = False,
    device=None,
) -> Path:
    """Region-text pretraining on the caption corpus (shapes split "all", every category)."""
    pool = ConceptPool.load(required_path(cfg.concepts, "concepts"))
    teacher = load_teacher(required_path(cfg.teacher, "teacher"))
    rpn = load_rpn(required_path(cfg.rpn, "rpn")) if cfg.region_source == "rpn" else None
    dataset = ShapesCaptions(
        size=cfg.epoch_size, split="all", image_size=cfg.image_size, max_objects=cfg.max_objects, seed=cfg.data_seed,
        caption=cfg.caption, random_regions=cfg.regions_per_image if cfg.region_source == "random" else 0,
    )  # fmt: skip
    task = PretrainTask(cfg, pool=pool, text=_text(text, device), teacher=teacher, rpn=rpn)
    return _fit(task, train_cfg, dataset, resume=resume, device=device)


def run_transfer(
    cfg: TransferConfig,
    train_cfg: TrainConfig,
    *,
    text: TextEncoder | None = None,
    resume: bool = False,
    device=None,
    evaluate_fn: Callable | None = None,
    classes: list[str] | None = None,
) -> Path:
    """Train the open-vocabulary detector on the shapes "train" split (base categories only).

    ``classes`` narrows the training classes further (default: all 40 base categories); boxes of other
    categories are dropped, so their objects count as background, as unannotated novel objects do in COCO's
    open-vocabulary split.
    """
    task = TransferTask(cfg, text=_text(text, device), classes=classes, evaluator=evaluate_fn)
    dataset = ShapesBoxes(
        size=cfg.epoch_size, classes=task.classes, split="train", image_size=cfg.image_size,
        max_objects=cfg.max_objects, seed=cfg.data_seed,
    )  # fmt: skip
    return _fit(task, train_cfg, dataset, resume=resume, device=device)
