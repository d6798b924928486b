"""Running RegionCLIP's stages end to end: concept pool -> teacher -> RPN -> pretraining -> transfer.

Each stage reads the files its config names (``data``: image-caption pairs, or COCO detection JSON with a
base/novel split) or, without one, the built-in shapes world through the same records (:mod:`.data`). Each
``run_*`` function builds the stage's dataset and task and trains with the project's
:class:`~openglip.engine.trainer.Trainer` (checkpoints, exact resume, EMA, DDP under torchrun); the final weights
are ``<out_dir>/model.safetensors``. :func:`default_train_config` holds CPU-sized training recipes.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path

from ..config import TrainConfig
from ..engine.trainer import Trainer
from ..errors import UsageError
from ..prompts import get_extractor
from ..shapes import ShapesWorld
from .clip import CLIP_TEMPLATES, is_clip
from .concepts import ConceptPool, SentenceEncoder, load_sentence_encoder
from .config import TEMPLATES, ConceptConfig, PretrainConfig, RPNConfig, TeacherConfig, TransferConfig
from .data import (
    BoxDataset,
    DetectionData,
    RegionCaptionDataset,
    read_caption_data,
    read_detection_data,
    shapes_caption_data,
    shapes_detection_data,
)
from .tasks import PretrainTask, RPNTask, TeacherTask, TransferTask
from .weights import load_region_teacher, load_rpn, required_path

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


def _text(text: SentenceEncoder | None, name: str, device) -> SentenceEncoder:
    return (
        text if text is not None else load_sentence_encoder(name, device="cpu" if device is None else device)
    )


def _pool_and_text(
    cfg: TeacherConfig | PretrainConfig | TransferConfig, text: SentenceEncoder | None, device
) -> tuple[ConceptPool, SentenceEncoder]:
    """The stage's concept pool (``cfg.concepts``) and the sentence encoder it was built with (or ``text``)."""
    pool = ConceptPool.load(required_path(cfg.concepts, "concepts"))
    return pool, _text(text, pool.encoder, device)


def caption_records(cfg: ConceptConfig | TeacherConfig | PretrainConfig, *, num_images: int, min_objects: int = 1,
                    caption: str = "listing"):  # fmt: skip
    """The stage's image-caption pairs: ``cfg.data`` when set, else the shapes corpus."""
    if cfg.data:
        return read_caption_data(cfg.data, cfg.image_root or None)
    return shapes_caption_data(
        num_images, image_size=cfg.image_size, min_objects=min_objects, max_objects=cfg.max_objects,
        seed=cfg.data_seed, caption=caption,
    )  # fmt: skip


def detection_data(cfg: RPNConfig | TransferConfig) -> DetectionData:
    """The stage's box-annotated images: ``cfg.data`` (with ``cfg.split_file``) when set, else the shapes "train"
    split (base categories only)."""
    if cfg.data:
        data = read_detection_data(cfg.data, cfg.image_root or None, split_file=cfg.split_file)
        if not any("split" in c for c in data.categories):
            print(
                f"openglip: warning: {cfg.data} has no base/novel split (no 'split' on its categories, no "
                "split_file): every category counts as base and training uses every box; give --split-file "
                "NOVEL.txt to hold the novel categories out",
                file=sys.stderr,
            )
        return data
    if cfg.split_file:
        raise UsageError("split_file needs data=FILE (the shapes world carries its own split)")
    return shapes_detection_data(
        cfg.epoch_size,
        split="train",
        image_size=cfg.image_size,
        max_objects=cfg.max_objects,
        seed=cfg.data_seed,
    )


def run_concepts(
    cfg: ConceptConfig, out_path: str | Path, *, text: SentenceEncoder | None = None
) -> ConceptPool:
    """Parse the caption corpus (``cfg.data``, or both captions of the first ``cfg.num_images`` shapes images),
    build the pool and save it to ``out_path``. A CLIP encoder embeds with CLIP's templates, uncentred."""
    text = _text(text, cfg.encoder, None)
    if cfg.data:
        captions = [r.caption for r in read_caption_data(cfg.data, cfg.image_root or None)]
    else:
        world = ShapesWorld(
            split="all", image_size=cfg.image_size, max_objects=cfg.max_objects, seed=cfg.data_seed
        )
        captions = [c.caption for i in range(cfg.num_images) for c in world.sample(i).captions]
    clip = is_clip(text.name)
    pool = ConceptPool.build(
        captions, text=text, extractor=get_extractor(cfg.extractor), min_count=cfg.min_count,
        templates=CLIP_TEMPLATES if clip else TEMPLATES, centre=not clip,
    )  # fmt: skip
    pool.save(out_path)
    return pool


def _fit(task, train_cfg: TrainConfig, dataset, *, resume: bool, device) -> Path:
    trainer = Trainer(task, train_cfg, dataset, resume=resume, device=device)
    trainer.fit()
    return Path(train_cfg.out_dir) / "model.safetensors"


def run_teacher(
    cfg: TeacherConfig,
    train_cfg: TrainConfig,
    *,
    text: SentenceEncoder | None = None,
    resume: bool = False,
    device=None,
) -> Path:
    """Train the stand-in teacher by image-caption InfoNCE (shapes default: 1-2-object images, listing captions)."""
    pool, text = _pool_and_text(cfg, text, device)
    records = caption_records(cfg, num_images=cfg.epoch_size, min_objects=cfg.min_objects)
    dataset = RegionCaptionDataset(records, image_size=cfg.image_size, seed=cfg.data_seed)
    task = TeacherTask(cfg, pool=pool, text=text)
    return _fit(task, train_cfg, dataset, resume=resume, device=device)


def run_rpn(cfg: RPNConfig, train_cfg: TrainConfig, *, resume: bool = False, device=None) -> Path:
    """Train the class-agnostic RPN on the base-category boxes of ``cfg.data`` (shapes: the "train" split)."""
    dataset = BoxDataset(detection_data(cfg), image_size=cfg.image_size)
    return _fit(RPNTask(cfg), train_cfg, dataset, resume=resume, device=device)


def run_pretrain(
    cfg: PretrainConfig,
    train_cfg: TrainConfig,
    *,
    text: SentenceEncoder | None = None,
    resume: bool = False,
    device=None,
) -> Path:
    """Region-text pretraining on the caption corpus (``cfg.data``; shapes: split "all", every category)."""
    pool, text = _pool_and_text(cfg, text, device)
    teacher = load_region_teacher(required_path(cfg.teacher, "teacher"))
    rpn = load_rpn(required_path(cfg.rpn, "rpn")) if cfg.region_source == "rpn" else None
    records = caption_records(cfg, num_images=cfg.epoch_size, caption=cfg.caption)
    dataset = RegionCaptionDataset(
        records, image_size=cfg.image_size, seed=cfg.data_seed,
        random_regions=cfg.regions_per_image if cfg.region_source == "random" else 0,
    )  # fmt: skip
    task = PretrainTask(cfg, pool=pool, text=text, teacher=teacher, rpn=rpn)
    return _fit(task, train_cfg, dataset, resume=resume, device=device)


def run_transfer(
    cfg: TransferConfig,
    train_cfg: TrainConfig,
    *,
    text: SentenceEncoder | None = None,
    resume: bool = False,
    device=None,
    evaluate_fn: Callable | None = None,
    classes: list[str] | None = None,
) -> Path:
    """Train the open-vocabulary detector on the base categories of ``cfg.data`` (shapes: the "train" split).

    ``classes`` narrows the training classes further (default: every base category); boxes of other categories
    are dropped, so their objects count as background, as unannotated novel objects do in COCO's
    open-vocabulary split.
    """
    data = detection_data(cfg)
    dataset = BoxDataset(data, classes=classes, image_size=cfg.image_size)
    _, text = _pool_and_text(cfg, text, device)
    task = TransferTask(cfg, text=text, classes=dataset.classes, evaluator=evaluate_fn)
    return _fit(task, train_cfg, dataset, resume=resume, device=device)
