"""GLIPv2's captioning as a trainer task (``openglip train PRESET task=caption``): the tower runs in caption mode
(causal text, the image attending only to [CLS]; see :mod:`openglip.models.vl_heads`) and a language-modelling
head tied to the word embeddings predicts each next token.

Data: ``"shapes"`` (whole-image captions whose phrases carry boxes) or comma-separated COCO Captions JSON and
``{"filename", "caption"}`` JSONL files. When the captions carry boxes (the shapes world) and ``grounding_weight``
is above 0, GLIP's grounding loss on the same caption (a second, bidirectional pass) keeps the detection head in
step, so the one model writes a caption and grounds its phrases (grounded captioning).
"""

from __future__ import annotations

import dataclasses

import torch
from tqdm import tqdm

from ..api import Detector
from ..config import CaptionConfig, ModelConfig, TrainConfig, config_to_dict
from ..data.captions import read_caption_files
from ..data.collate import Collate
from ..data.resolve import builtin_dataset
from ..data.vl_datasets import CaptionDataset
from ..distributed import unwrap
from ..errors import DataError
from ..losses import GroundingLoss
from ..losses.language import caption_loss
from ..metrics import coco_detection_metrics
from ..shapes import CATEGORIES, to_coco
from ..vl_inference import generate_captions, ground_captions
from ..vl_metrics import caption_metrics
from .base import TaskBase
from .glip import GLIPTask
from .vqa import unused_image_side, vl_transforms


class CaptionTask(GLIPTask):
    """Trains a GLIP with a caption head (``ModelConfig.caption_head`` is switched on).

    Args:
        model_cfg: the model.
        train_cfg: the run; ``data``, ``val_data``.
        cfg: ``grounding_weight`` (only the shapes world's captions carry boxes), ``blind``, the grounding loss.
    """

    finalize = TaskBase.finalize  # no WiSE-FT: a new head has no starting weights to mix with

    def __init__(self, model_cfg: ModelConfig, train_cfg: TrainConfig, cfg: CaptionConfig | None = None):
        cfg = cfg if cfg is not None else CaptionConfig()
        builtin = builtin_dataset(train_cfg.data, train_cfg.data_options)
        grounded = builtin is not None and builtin.grounded_captions
        grounding = cfg.grounding_weight if grounded and not cfg.blind else 0.0
        self.model_cfg = dataclasses.replace(model_cfg, caption_head=True)
        self.train_cfg, self.cfg, self.grounding_weight = train_cfg, cfg, grounding
        self.criterion = GroundingLoss(topk=cfg.atss_topk, alpha=cfg.focal_alpha, gamma=cfg.focal_gamma,
                                       normalized_token_targets=cfg.normalized_token_targets)  # fmt: skip

    def trained_heads(self) -> set[str]:
        return {"caption_head"} | ({"head"} if self.grounding_weight > 0 else set())

    def build_dataset(self):
        """The training dataset of ``cfg.data``."""

        run = self.train_cfg
        transform, to_tensor = vl_transforms(self.model_cfg, run)
        builtin = builtin_dataset(run.data, run.data_options)
        if builtin is not None:
            return builtin.train_dataset("caption", self.model_cfg, run, transform, to_tensor)
        records, report = read_caption_files(run.data, run.image_root)
        if not records:
            raise DataError(f"{run.data}: no usable caption records ({report})")
        return CaptionDataset(records, transform=transform, to_tensor=to_tensor, seed=run.seed)

    def collate_fn(self) -> Collate:
        return Collate(
            size_divisibility=self.model_cfg.size_divisibility, max_text_len=self.model_cfg.max_text_len
        )

    def losses(self, model, batch) -> dict[str, torch.Tensor]:
        pixel_values = torch.zeros_like(batch.pixel_values) if self.cfg.blind else batch.pixel_values
        core = unwrap(model)
        out = model(pixel_values, batch.image_sizes, input_ids=batch.input_ids,
                    attention_mask=batch.attention_mask, causal=True, detect=False)  # fmt: skip
        logits = core.caption_head(out.fused_text, core.word_embeddings)  # (B, T, V)
        losses = {
            "loss_caption": caption_loss(logits, batch.input_ids, batch.attention_mask)
            + unused_image_side(out)
        }
        if self.grounding_weight > 0:
            grounded = model(pixel_values, batch.image_sizes, input_ids=batch.input_ids,
                             attention_mask=batch.attention_mask)  # fmt: skip
            for k, v in self.criterion(grounded, batch.targets).items():
                losses[k] = self.grounding_weight * v
        return losses

    def evaluate_builtin(self, detector: Detector, builtin) -> dict[str, float]:
        """BLEU-4 and CIDEr on the built-in's captions, and the box AP50 of grounded captions (``"shapes"``)."""
        items = builtin.caption_items(self.train_cfg.eval_images)
        return evaluate_captions(detector, [s.image for s, _ in items], [r for _, r in items],
                                 samples=None if self.cfg.blind else [s for s, _ in items],
                                 blind=self.cfg.blind)  # fmt: skip

    def evaluate_files(self, detector: Detector) -> dict[str, float]:
        """BLEU-4 and CIDEr on the caption files ``val_data``."""
        records, _ = read_caption_files(self.train_cfg.val_data, self.train_cfg.image_root)
        return evaluate_captions(detector, [r.file_name for r in records], [r.captions for r in records],
                                 blind=self.cfg.blind)  # fmt: skip

    def task_config_dict(self) -> dict:
        return config_to_dict(self.cfg)


def evaluate_captions(
    detector,
    images,
    references,
    *,
    samples=None,
    blind: bool = False,
    beam_size: int = 1,
    batch_size: int = 16,
) -> dict[str, float]:
    """BLEU-1/4 and CIDEr of generated captions; with shapes ``samples`` also the box AP50 of the grounded
    captions (each grounded phrase is scored as the category it names: "small red circle" -> "red circle")."""

    captions = []
    for start in tqdm(range(0, len(images), batch_size), desc="caption", disable=len(images) <= batch_size):
        captions += generate_captions(detector, list(images[start : start + batch_size]), beam_size=beam_size,
                                      blind=blind)  # fmt: skip
    metrics = caption_metrics(dict(enumerate(captions)), dict(enumerate(references)))
    if samples is not None:
        metrics["grounded/AP50"] = grounded_ap50(detector, samples, captions)
    return metrics


def grounded_ap50(detector, samples, captions: list[str]) -> float:
    """Box AP50 (COCO, pycocotools) of grounded captioning on shapes samples: the phrases the extractor finds in
    each generated caption are grounded in its image; a box counts for the category its phrase names."""

    gt = to_coco(list(samples), [f"{i:06d}.png" for i in range(len(samples))])
    results = []
    grounded = ground_captions(
        detector, [s.image for s in samples], captions, box_threshold=0.0, extractor="rule"
    )
    for image_id, g in enumerate(grounded, start=1):
        dets = g.detections
        for box, score, phrase in zip(dets.xyxy.tolist(), dets.scores.tolist(), dets.phrases):
            name = " ".join(w for w in str(phrase).split() if w not in ("small", "large"))
            if name in CATEGORIES:
                x1, y1, x2, y2 = box
                results.append({"image_id": image_id, "category_id": CATEGORIES.index(name) + 1,
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score})  # fmt: skip
    return float(coco_detection_metrics(gt, results)["AP50"])
