"""GLIPv2's inter-image region-word contrastive loss."""

from __future__ import annotations

import dataclasses
import math
from functools import partial

import torch

from openglip.config import GLIPTaskConfig, TrainConfig, tiny
from openglip.data.collate import Collate, phrase_key
from openglip.data.transforms import to_model_input
from openglip.losses.contrastive import inter_image_loss, region_word_loss, soft_cross_entropy
from openglip.models.contrastive import InterImageContrastive
from openglip.models.glip import build_model
from openglip.shapes.datasets import ShapesDataset
from openglip.tasks import GLIPTask


def _identity_module() -> InterImageContrastive:
    m = InterImageContrastive(visual_dim=2, text_dim=2, dim=2)
    with torch.no_grad():
        m.image_proj.weight.copy_(torch.eye(2))
        m.text_proj.weight.copy_(torch.eye(2))
        m.image_proj.bias.zero_()
        m.text_proj.bias.zero_()
    return m


def test_two_image_case_has_the_hand_computed_value_and_propagates_labels():
    """Image 1 has a region of phrase A and words A, B (B is a negative class of its prompt); image 2 has a
    region of phrase B and a word A. Region A must count image 2's word A as a positive too."""
    module = _identity_module()
    A, B = phrase_key("red circle"), phrase_key("blue square")
    regions = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    region_ids = torch.tensor([A, B])
    words = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], requires_grad=True)
    word_ids = torch.tensor([A, B, A])
    loss = region_word_loss(module, regions, region_ids, words, word_ids)
    e = math.e
    region_side = (math.log(2 * e + 1) - 1) + (math.log(e + 2) - 1)  # region A: 2 positives of 3 words
    word_side = 3 * (math.log(e + 1) - 1)
    # float32 loss vs this float64 hand value: measured 1.5e-7 (1 thread), 1e-6 is 6x that
    assert abs(loss.item() - (region_side + word_side) / 2) < 1e-6
    # without label propagation (word 3 marked as outside any phrase) the value changes
    alone = region_word_loss(module, regions, region_ids, words, torch.tensor([A, B, -1]))
    # a bar from below: measured 0.16 apart, 160x the 1e-3 that the float noise above (1.5e-7) could not reach
    assert abs(alone.item() - loss.item()) > 1e-3
    loss.backward()
    assert regions.grad.abs().sum() > 0 and words.grad.abs().sum() > 0


def test_soft_cross_entropy_ignores_rows_without_positives():
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    positives = torch.tensor([[True, False], [False, False]])
    expected = -torch.log_softmax(logits[0], 0)[0]
    # the same float32 ops on both sides: measured 0; allclose's defaults (rtol 1e-5)
    assert torch.allclose(soft_cross_entropy(logits, positives), expected)


def test_gradients_reach_pre_fusion_features_only_through_the_projections():
    cfg = dataclasses.replace(tiny(), inter_image_dim=16)
    torch.manual_seed(0)
    model = build_model(cfg)
    ds = ShapesDataset(
        size=4, transform=None, fresh_each_epoch=False, num_negatives=5, grounding_ratio=0.5,
        to_tensor=partial(to_model_input, mean=cfg.pixel_mean, std=cfg.pixel_std, bgr=cfg.bgr),
    )  # fmt: skip
    batch = Collate()([ds[(0, i)] for i in range(4)])
    out = model(
        batch.pixel_values, batch.image_sizes, input_ids=batch.input_ids, attention_mask=batch.attention_mask
    )
    task = GLIPTask(cfg, TrainConfig(), GLIPTaskConfig(inter_image_weight=1.0))
    matched = task.criterion.assign(out, batch.targets)
    loss = inter_image_loss(model.contrastive, out, batch.targets, matched, batch.token_phrase_ids)
    assert torch.isfinite(loss) and loss > 0
    loss.backward()

    def touched(module):
        return any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())

    assert (
        touched(model.contrastive)
        and touched(model.backbone)
        and touched(model.fpn)
        and touched(model.text_encoder)
    )
    assert not touched(model.tower) and not touched(model.head)  # the fused path is not used


def test_task_adds_the_weighted_loss_and_requires_the_projections():
    cfg = dataclasses.replace(tiny(), inter_image_dim=8)
    assert "loss_inter_image" in _one_step_losses(cfg, 0.5)
    assert "loss_inter_image" not in _one_step_losses(cfg, 0.0)
    try:
        GLIPTask(tiny(), TrainConfig(), GLIPTaskConfig(inter_image_weight=1.0))
    except ValueError as err:
        assert "inter_image_dim" in str(err)
    else:
        raise AssertionError("expected ValueError")


def _one_step_losses(cfg, weight):
    torch.manual_seed(0)
    ds = ShapesDataset(
        size=2, transform=None, fresh_each_epoch=False, num_negatives=5,
        to_tensor=partial(to_model_input, mean=cfg.pixel_mean, std=cfg.pixel_std, bgr=cfg.bgr),
    )  # fmt: skip
    batch = Collate()([ds[(0, i)] for i in range(2)])
    return GLIPTask(cfg, TrainConfig(), GLIPTaskConfig(inter_image_weight=weight)).losses(
        build_model(cfg), batch
    )
