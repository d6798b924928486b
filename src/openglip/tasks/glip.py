"""GLIP as a trainer task: the grounding loss (ATSS, token-level focal loss, GIoU, centerness) plus GLIPv2's
inter-image region-word loss and mask loss when the model has those heads."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from ..api import Detector
from ..checkpoints import load_into, read_checkpoint, save_safetensors
from ..config import GLIPTaskConfig, ModelConfig, TrainConfig, config_to_dict
from ..data.build import build_train_dataset, read_annotations
from ..data.coco import coco_category_info
from ..data.collate import Batch, Collate
from ..data.resolve import builtin_dataset
from ..distributed import unwrap
from ..engine.evaluate import evaluate_file, evaluate_records
from ..engine.optim import freeze_parts, param_groups
from ..engine.wise import mix_with_start
from ..errors import UsageError
from ..hub import resolve_weights
from ..losses import GroundingLoss
from ..losses.contrastive import inter_image_loss
from ..losses.language import mask_tokens, mlm_loss
from ..losses.masks import mask_loss
from ..models.glip import GLIP, build_model
from .base import TaskBase

OPTIONAL_HEADS = ("contrastive.", "mask_head.", "mlm_head.", "vqa_head.", "caption_head.")  # GLIPv2 heads a
# starting checkpoint may lack


class GLIPTask(TaskBase):
    """Trains a :class:`~openglip.models.glip.GLIP` (the default task of ``openglip train``).

    Args:
        model_cfg: the model.
        train_cfg: the training run: ``data``, ``init_weights``, ``val_data`` for :meth:`evaluate`.
        cfg: the task's settings: losses, prompts, replay and WiSE-FT.
    """

    def __init__(self, model_cfg: ModelConfig, train_cfg: TrainConfig, cfg: GLIPTaskConfig | None = None):
        cfg = cfg if cfg is not None else GLIPTaskConfig()
        if cfg.inter_image_weight > 0 and model_cfg.inter_image_dim <= 0:
            raise UsageError("inter_image_weight > 0 needs the model's projections: set inter_image_dim=64")
        if cfg.mlm_weight > 0 and not model_cfg.mlm_head:
            raise UsageError("mlm_weight > 0 needs the model's MLM head: set mlm_head=true")
        self.model_cfg, self.train_cfg, self.cfg = model_cfg, train_cfg, cfg
        if wise_enabled(cfg):
            if not self.start_weights():
                raise UsageError(
                    "WiSE-FT (wise_alpha, wise_retain) mixes with the starting weights: set init_weights"
                )
            check_wise_config(cfg, has_holdout=self.has_holdout())
        self.criterion = GroundingLoss(
            topk=cfg.atss_topk,
            alpha=cfg.focal_alpha,
            gamma=cfg.focal_gamma,
            normalized_token_targets=cfg.normalized_token_targets,
        )

    def build_model(self) -> GLIP:
        return build_model(self.model_cfg)

    def build_dataset(self):
        """The training dataset of ``cfg.data`` (the shapes world or annotation files)."""

        return build_train_dataset(self.model_cfg, self.train_cfg, self.cfg)

    def load_weights(self, model: GLIP, path: str) -> None:
        """Strict loading, except that GLIPv2's extra heads (inter-image projections, mask, MLM, VQA and caption
        heads) may be absent from the checkpoint: new heads start fresh, heads the checkpoint has are loaded;
        heads the checkpoint has but this model lacks (the MLM head of pre-training, say) are left out."""

        state, _ = read_checkpoint(resolve_weights(path))
        ours = model.state_dict()
        state = {k: v for k, v in state.items() if k in ours or not k.startswith(OPTIONAL_HEADS)}
        load_into(model, state, optional=OPTIONAL_HEADS)

    # heads this task trains (the others are frozen: under DDP every trainable parameter needs a gradient)
    def trained_heads(self) -> set[str]:
        return {"head", "mask_head", "contrastive"} | ({"mlm_head"} if self.cfg.mlm_weight > 0 else set())

    def freeze(self, model: GLIP, spec: str) -> list[str]:
        parts = {
            "backbone": model.backbone,
            "fpn": model.fpn,
            "text": model.text_encoder,
            "tower": model.tower,
        }
        heads = ("head", "mask_head", "contrastive", "mlm_head", "vqa_head", "caption_head")
        idle = [n for n in heads if n not in self.trained_heads()]
        for name in idle:
            if getattr(model, name, None) is not None:
                getattr(model, name).requires_grad_(False)
        return freeze_parts(parts, spec, aliases={"all_but_head": list(parts)})

    def param_groups(self, model: GLIP, cfg: TrainConfig) -> list[dict]:
        return param_groups(model, cfg, is_text=lambda name: name.startswith("text_encoder."))

    def collate_fn(self) -> Collate:
        return Collate(
            size_divisibility=self.model_cfg.size_divisibility, max_text_len=self.model_cfg.max_text_len
        )

    def losses(self, model, batch: Batch) -> dict[str, torch.Tensor]:
        input_ids, mlm_labels = batch.input_ids, None
        if (
            self.cfg.mlm_weight > 0
        ):  # GLIPv2: the grounding loss is computed on the same, partly masked caption
            tok = unwrap(model).tokenizer
            input_ids, mlm_labels = mask_tokens(
                batch.input_ids, batch.attention_mask, mask_token_id=tok.mask_token_id,
                special_ids=tuple(tok.all_special_ids), vocab_size=len(tok), probability=self.cfg.mlm_probability,
            )  # fmt: skip
        out = model(
            batch.pixel_values,
            batch.image_sizes,
            input_ids=input_ids,
            attention_mask=batch.attention_mask,
        )
        matched = self.criterion.assign(out, batch.targets)
        losses = self.criterion(out, batch.targets, matched=matched)
        core = unwrap(model)
        if mlm_labels is not None:
            losses["loss_mlm"] = self.cfg.mlm_weight * mlm_loss(
                core.mlm_head, out.fused_text, mlm_labels, core.word_embeddings
            )
        if getattr(core, "mask_head", None) is not None and self.cfg.mask_weight > 0:
            shape = tuple(batch.pixel_values.shape[-2:])
            losses["loss_mask"] = self.cfg.mask_weight * mask_loss(
                core.mask_head, out.visual, batch.targets, shape
            )
        if self.cfg.inter_image_weight > 0:
            losses["loss_inter_image"] = self.cfg.inter_image_weight * inter_image_loss(
                core.contrastive,
                out,
                batch.targets,
                matched,
                batch.token_phrase_ids,
                self.cfg.inter_image_regions,
            )
        return losses

    def evaluate(self, model: GLIP, step: int) -> dict[str, float]:
        """Metrics on ``val_data`` (none without it): a built-in's val split (``"shapes"``) through
        :meth:`evaluate_builtin`, or files through :meth:`evaluate_files`."""
        run = self.train_cfg
        if not run.val_data:
            return {}

        detector = Detector(model, device=next(model.parameters()).device)
        builtin = builtin_dataset(run.val_data, run.data_options)
        if builtin is not None:
            return self.evaluate_builtin(detector, builtin)
        return self.evaluate_files(detector)

    def evaluate_builtin(self, detector: Detector, builtin) -> dict[str, float]:
        """Detection metrics on the built-in dataset's val split."""
        return builtin.evaluate(detector, self.train_cfg)

    def evaluate_files(self, detector: Detector) -> dict[str, float]:
        """Detection metrics on the annotation file ``val_data``."""
        run = self.train_cfg
        return evaluate_file(detector, run.val_data, run.image_root, batch_size=8)[0]

    # -- WiSE-FT --------------------------------------------------------------------------------------------
    def start_weights(self) -> str | None:
        """The weights training starts from, which WiSE-FT mixes the result with."""
        return self.train_cfg.init_weights

    def has_holdout(self) -> bool:
        """Whether there are held-out target data for WiSE-FT's automatic alpha (``val_data``)."""
        return bool(self.train_cfg.val_data)

    def holdout_ap(self, model: GLIP, step: int) -> float:
        """AP50 on the held-out target data."""
        return GLIPTask.evaluate(self, model, step).get("AP50", 0.0)

    def finalize(self, model: GLIP, step: int) -> GLIP:
        """WiSE-FT when asked for (``wise_alpha`` < 1 or ``wise_retain``): mix the trained weights with the
        starting weights (see :mod:`openglip.engine.wise`); otherwise the trained model as it is."""
        cfg = self.cfg
        if not wise_enabled(cfg):
            return model
        return mix_with_start(
            model,
            lambda m: self.load_weights(m, self.start_weights()),
            self.train_cfg.out_dir,
            alpha=cfg.wise_alpha,
            retain=cfg.wise_retain,
            keep=cfg.wise_keep,
            target_ap=lambda m: self.holdout_ap(m, step),
            retain_ap=retain_ap50(cfg.wise_retain) if cfg.wise_retain else None,
            save=lambda m, path: save_safetensors(m, path, self.model_cfg),
        )

    def config_dict(self) -> dict:
        return config_to_dict(self.model_cfg)

    def task_config_dict(self) -> dict:
        return config_to_dict(self.cfg)

    def export(self, model: GLIP, path) -> None:
        save_safetensors(model, path, self.model_cfg)


def wise_enabled(cfg: GLIPTaskConfig) -> bool:
    return cfg.wise_alpha != 1.0 or cfg.wise_retain is not None


def check_wise_config(cfg: GLIPTaskConfig, *, has_holdout: bool) -> None:
    """Refuse WiSE-FT settings that cannot work, before training starts.

    Raises:
        UsageError: alpha outside [0, 1], both a fixed alpha and a retain file, a retain file that does not
            exist, or no held-out target data for the automatic choice.
    """
    if not 0.0 <= cfg.wise_alpha <= 1.0:
        raise UsageError(f"wise_alpha must be between 0 and 1, got {cfg.wise_alpha}")
    if cfg.wise_retain is None:
        return
    if cfg.wise_alpha != 1.0:
        raise UsageError("give wise_alpha (a fixed mix) or wise_retain (choose it automatically), not both")
    if not Path(cfg.wise_retain).is_file():
        raise UsageError(
            f"wise_retain {cfg.wise_retain}: file not found (a COCO/ODVG file of what must be kept)"
        )
    if not has_holdout:
        raise UsageError(
            "WiSE-FT with an automatic alpha needs held-out target data: val_data=FILE in openglip train, "
            "--holdout in openglip tune"
        )
    if not 0.0 <= cfg.wise_keep <= 1.0:
        raise UsageError(f"wise_keep must be between 0 and 1, got {cfg.wise_keep}")


def retain_ap50(path: str) -> Callable[[torch.nn.Module], float]:
    """AP50 of a model on the retain file, with that file's own categories as the prompt."""

    records, categories = read_annotations(path)
    cats = coco_category_info(path) if Path(path).suffix == ".json" else None

    def metric(model: torch.nn.Module) -> float:
        det = Detector(model, device=next(model.parameters()).device)
        return evaluate_records(det, records, categories, cats)[0].get("AP50", 0.0)

    return metric
