"""GLIP as a trainer task: the grounding loss (ATSS, token-level focal loss, GIoU, centerness) plus GLIPv2's
inter-image region-word loss and mask loss when the model has those heads."""

from __future__ import annotations

import torch

from ..checkpoints import load_into, read_checkpoint, save_safetensors
from ..config import ModelConfig, TrainConfig, config_to_dict
from ..data.collate import Batch, Collate
from ..distributed import unwrap
from ..engine.optim import freeze_parts, param_groups
from ..errors import UsageError
from ..losses import GroundingLoss
from ..losses.contrastive import inter_image_loss
from ..losses.masks import mask_loss
from ..models.detector import GLIP, build_model
from .wise import apply_wise, check_wise_config, wise_enabled

OPTIONAL_HEADS = ("contrastive.", "mask_head.", "mlm_head.", "vqa_head.", "caption_head.")  # GLIPv2 heads a
# starting checkpoint may lack


class GLIPTask:
    """Trains a :class:`~openglip.models.detector.GLIP` (the default task of ``openglip train``).

    Args:
        model_cfg: the model.
        cfg: the training run: loss settings and weights, and ``val_data`` for :meth:`evaluate`.
    """

    def __init__(self, model_cfg: ModelConfig, cfg: TrainConfig):
        if cfg.inter_image_weight > 0 and model_cfg.inter_image_dim <= 0:
            raise UsageError("inter_image_weight > 0 needs the model's projections: set inter_image_dim=64")
        if cfg.mlm_weight > 0 and not model_cfg.mlm_head:
            raise UsageError("mlm_weight > 0 needs the model's MLM head: set mlm_head=true")
        self.model_cfg, self.cfg = model_cfg, cfg
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
        from ..data.build import build_train_dataset

        return build_train_dataset(self.model_cfg, self.cfg)

    def load_weights(self, model: GLIP, path: str) -> None:
        """Strict loading, except that GLIPv2's extra heads (inter-image projections, mask, MLM, VQA and caption
        heads) may be absent from the checkpoint: new heads start fresh, heads the checkpoint has are loaded;
        heads the checkpoint has but this model lacks (the MLM head of pre-training, say) are left out."""
        from ..hub import resolve_weights  # init_weights may name an official model

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
            from ..losses.language import mask_tokens

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
            from ..losses.language import mlm_loss

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
        """Metrics on ``cfg.val_data``: the shapes val split (``"shapes"``) or an annotation file."""
        if not self.cfg.val_data:
            return {}
        from ..api import Detector
        from ..engine.evaluate import evaluate_file, evaluate_shapes

        detector = Detector(model, device=next(model.parameters()).device)
        if self.cfg.val_data == "shapes":
            return evaluate_shapes(
                detector, num_images=self.cfg.eval_images, image_size=self.cfg.shapes_image_size
            )
        return evaluate_file(detector, self.cfg.val_data, self.cfg.image_root, batch_size=8)[0]

    # -- WiSE-FT --------------------------------------------------------------------------------------------
    def start_weights(self) -> str | None:
        """The weights training starts from, which WiSE-FT mixes the result with."""
        return self.cfg.init_weights

    def has_holdout(self) -> bool:
        """Whether there are held-out target data for WiSE-FT's automatic alpha (``val_data``)."""
        return bool(self.cfg.val_data)

    def holdout_ap(self, model: GLIP, step: int) -> float:
        """AP50 on the held-out target data."""
        return GLIPTask.evaluate(self, model, step).get("AP50", 0.0)

    def finalize(self, model: GLIP, step: int) -> GLIP:
        """WiSE-FT when asked for (``wise_alpha`` < 1 or ``wise_retain``): mix the trained weights with the
        starting weights (see :mod:`openglip.tasks.wise`); otherwise the trained model as it is."""
        if not wise_enabled(self.cfg):
            return model
        return apply_wise(
            model,
            lambda m: self.load_weights(m, self.start_weights()),
            self.cfg,
            target_ap=lambda m: self.holdout_ap(m, step),
            save=lambda m, path: save_safetensors(m, path, self.model_cfg),
        )

    def config_dict(self) -> dict:
        return config_to_dict(self.model_cfg)

    def export(self, model: GLIP, path) -> None:
        save_safetensors(model, path, self.model_cfg)
