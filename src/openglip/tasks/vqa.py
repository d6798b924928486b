"""GLIPv2's VQA as a trainer task (``openglip train PRESET task=vqa``): the fused [CLS] token of the question,
after the deep-fusion tower has let it attend to the image (and one attention-pooling step over the fused image,
see :class:`~openglip.models.vl_heads.VQAHead`), goes through a classifier over an answer vocabulary, trained with
VQAv2's soft-score binary cross-entropy.

Data (``TrainConfig.data``): ``"shapes"`` (the shapes world's questions) or comma-separated VQAv2
questions/annotations JSON pairs and ``{"filename", "question", "answers"}`` JSONL files. The answer vocabulary is
``VQAConfig.answer_vocab`` (a JSON list) or the ``max_answers`` most frequent answers of the training data; it is
saved in ``model.safetensors``'s metadata so ``load_model`` restores it with the head.
"""

from __future__ import annotations

import dataclasses
from functools import partial

import torch
from tqdm import tqdm

from ..api import Detector
from ..checkpoints import save_safetensors
from ..config import ModelConfig, TrainConfig, VQAConfig, config_to_dict
from ..data.records import SkipReport
from ..data.resolve import builtin_dataset
from ..data.transforms import default_train_transforms, to_model_input
from ..data.vl_datasets import VQACollate, VQADataset
from ..data.vqa import build_answer_vocab, load_answer_vocab, read_vqa_files
from ..distributed import unwrap
from ..errors import DataError, UsageError
from ..losses.language import vqa_loss
from ..models.glip import GLIP
from ..prompts import load_tokenizer
from ..vl_inference import answer_questions
from ..vl_metrics import vqa_summary
from .base import TaskBase
from .glip import GLIPTask


def vl_transforms(model_cfg: ModelConfig, cfg: TrainConfig):
    """Training transforms of the understanding tasks: multi-scale resize and colour jitter, no flip (it would
    falsify "left of" questions and left-to-right captions); and the model's normalisation."""

    transform = default_train_transforms(
        min_sizes=cfg.train_min_sizes, max_size=cfg.train_max_size, flip_p=0.0, jitter=cfg.color_jitter
    )
    to_tensor = partial(to_model_input, mean=model_cfg.pixel_mean, std=model_cfg.pixel_std, bgr=model_cfg.bgr)
    return transform, to_tensor


def drop_long_questions(records, max_tokens: int, report: SkipReport):
    """Records whose question fits the text limit; the others are counted as "question_too_long"."""

    tok = load_tokenizer()
    kept = [r for r in records if len(tok(r.question)["input_ids"]) <= max_tokens]
    report.add("question_too_long", len(records) - len(kept))
    return kept


def unused_image_side(out) -> torch.Tensor:
    """0 x the tower's image output. VQA and captioning read only the fused text, so the last block's image side
    (its DyConv, the image half of its cross-attention) feeds no loss; DDP needs a gradient for every trainable
    parameter, and this gives them an exact zero one."""
    return sum(f.sum() for f in out.fused_visual) * 0.0


class VQATask(GLIPTask):
    """Trains a GLIP with a VQA head (``ModelConfig.vqa_answers`` is set to the vocabulary's size).

    Args:
        model_cfg: the model (its detection parts are the starting point, e.g. from ``init_weights``).
        train_cfg: the run; ``data``, ``val_data``.
        cfg: ``answer_vocab``, ``max_answers``, ``blind``.
    """

    finalize = TaskBase.finalize  # no WiSE-FT: a new head has no starting weights to mix with

    def __init__(self, model_cfg: ModelConfig, train_cfg: TrainConfig, cfg: VQAConfig | None = None):
        cfg = cfg if cfg is not None else VQAConfig()
        self.model_cfg, self.train_cfg, self.cfg = model_cfg, train_cfg, cfg
        self.records, self.report = None, SkipReport(source=train_cfg.data)
        self.vocab = self._vocabulary(train_cfg)
        if model_cfg.vqa_answers not in (0, len(self.vocab)):
            raise UsageError(
                f"the answer vocabulary has {len(self.vocab)} answers but the model's VQA head {model_cfg.vqa_answers}"
                " (vqa_answers); give the vocabulary the head was trained with (answer_vocab=...)"
            )
        self.model_cfg = dataclasses.replace(model_cfg, vqa_answers=len(self.vocab))

    def _vocabulary(self, cfg: TrainConfig) -> list[str]:
        if self.cfg.answer_vocab:
            return load_answer_vocab(self.cfg.answer_vocab)
        builtin = builtin_dataset(cfg.data, cfg.data_options)
        if builtin is not None:
            return builtin.answers()
        records, self.report = read_vqa_files(cfg.data, cfg.image_root)
        self.records = records
        vocab = build_answer_vocab(records, self.cfg.max_answers)
        if not vocab:
            raise DataError(f"{cfg.data}: no usable VQA records (see the skipped-record counts above)")
        return vocab

    def trained_heads(self) -> set[str]:
        return {"vqa_head"}

    def build_model(self) -> GLIP:
        model = super().build_model()
        model.answer_vocab = list(self.vocab)
        return model

    def build_dataset(self):
        """The training dataset of ``cfg.data``."""

        run = self.train_cfg
        transform, to_tensor = vl_transforms(self.model_cfg, run)
        builtin = builtin_dataset(run.data, run.data_options)
        if builtin is not None:
            return builtin.train_dataset("vqa", self.model_cfg, run, transform, to_tensor)
        if self.records is None:
            self.records, self.report = read_vqa_files(run.data, run.image_root)
        records = drop_long_questions(self.records, self.model_cfg.max_text_len, self.report)
        self.report.log()
        if not records:
            raise DataError(f"{run.data}: no usable VQA records")
        return VQADataset(records, transform=transform, to_tensor=to_tensor, seed=run.seed)

    def collate_fn(self):
        return VQACollate(
            self.vocab,
            size_divisibility=self.model_cfg.size_divisibility,
            max_text_len=self.model_cfg.max_text_len,
        )

    def losses(self, model, batch) -> dict[str, torch.Tensor]:
        pixel_values = torch.zeros_like(batch.pixel_values) if self.cfg.blind else batch.pixel_values
        out = model(pixel_values, batch.image_sizes, input_ids=batch.input_ids,
                    attention_mask=batch.attention_mask, detect=False)  # fmt: skip
        logits = unwrap(model).vqa_head(out.fused_text[:, 0], out.fused_visual)  # (B, A)
        return {"loss_vqa": vqa_loss(logits, batch.scores)}

    def evaluate_builtin(self, detector: Detector, builtin) -> dict[str, float]:
        """VQA accuracy (overall and per question type) on the built-in's questions (``"shapes"``)."""
        return evaluate_vqa(detector, builtin.vqa_items(self.train_cfg.eval_images), blind=self.cfg.blind)

    def evaluate_files(self, detector: Detector) -> dict[str, float]:
        """VQA accuracy (overall and per question type) on the VQA files ``val_data``."""
        records, _ = read_vqa_files(self.train_cfg.val_data, self.train_cfg.image_root)
        items = [(r.file_name, r.question, r.answers, r.question_type) for r in records]
        return evaluate_vqa(detector, items, blind=self.cfg.blind)

    def task_config_dict(self) -> dict:
        return config_to_dict(self.cfg)

    def export(self, model: GLIP, path) -> None:
        model.answer_vocab = list(self.vocab)
        save_safetensors(model, path, self.model_cfg)


def evaluate_vqa(detector, items, *, blind: bool = False, batch_size: int = 16) -> dict[str, float]:
    """VQA accuracy of ``detector`` on ``[(image, question, answers, question_type), ...]``."""

    preds = []
    for start in tqdm(range(0, len(items), batch_size), desc="vqa", disable=len(items) <= batch_size):
        chunk = items[start : start + batch_size]
        preds += answer_questions(detector, [it[0] for it in chunk], [it[1] for it in chunk], blind=blind)
    return vqa_summary(preds, [it[2] for it in items], [it[3] for it in items])
