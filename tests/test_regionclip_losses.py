"""RegionCLIP losses: known values on hand-made tensors, gradients reaching the inputs.

Tolerances: float32 losses against float64 hand values, measured at most 2.9e-7 relative (distillation_kl; the
others 0 to 8e-8) on 1 and 2 threads: rel=1e-6 is 3.5x the worst; KL(p, p) measured 0 against abs=1e-6.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from openglip.regionclip.losses import (
    box_regression_loss,
    compatible_concepts,
    distillation_kl,
    focal_softmax_loss,
    image_text_contrastive,
    region_text_contrastive,
    with_concept_negatives,
)


def _lse(*xs: float) -> float:
    return math.log(sum(math.exp(x) for x in xs))


def test_region_text_contrastive_known_value_and_gradients():
    # 2 regions, 3 concepts: region 0 = x axis, region 1 = y axis, concept 2 = (0.6, 0.8)
    regions = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    concepts = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], requires_grad=True)
    scale = torch.tensor(2.0, requires_grad=True)
    loss = region_text_contrastive(regions, concepts, torch.tensor([0, 2]), scale)
    # logits: region 0 -> (2, 0, 1.2), target 0; region 1 -> (0, 2, 1.6), target 2
    expected = ((_lse(2, 0, 1.2) - 2) + (_lse(0, 2, 1.6) - 1.6)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    for t in (regions, concepts, scale):
        assert t.grad is not None and t.grad.abs().sum() > 0
    # no region: zero, but still a graph
    empty = region_text_contrastive(
        torch.zeros(0, 2, requires_grad=True), concepts, torch.zeros(0, dtype=torch.long), scale
    )
    assert empty.item() == 0.0 and empty.requires_grad


def test_image_text_contrastive_is_symmetric_infonce():
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    texts = torch.tensor([[1.0, 0.0], [0.6, 0.8]], requires_grad=True)
    loss = image_text_contrastive(images, texts, 1.0)
    # S = [[1, .6], [0, .8]]; image->text uses rows, text->image uses columns
    i2t = ((_lse(1, 0.6) - 1) + (_lse(0, 0.8) - 0.8)) / 2
    t2i = ((_lse(1, 0) - 1) + (_lse(0.6, 0.8) - 0.8)) / 2
    assert loss.item() == pytest.approx((i2t + t2i) / 2, rel=1e-6)
    loss.backward()
    assert images.grad.abs().sum() > 0 and texts.grad.abs().sum() > 0


def test_image_text_contrastive_spreads_the_target_over_equal_captions():
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    texts = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    both = torch.ones(2, 2, dtype=torch.bool)
    loss = image_text_contrastive(images, texts, 1.0, both)
    # every row's target is (1/2, 1/2): CE = -(log p0 + log p1) / 2
    i2t = ((2 * _lse(1, 0.6) - 1.6) / 2 + (2 * _lse(0, 0.8) - 0.8) / 2) / 2
    t2i = ((2 * _lse(1, 0) - 1) / 2 + (2 * _lse(0.6, 0.8) - 1.4) / 2) / 2
    assert loss.item() == pytest.approx((i2t + t2i) / 2, rel=1e-6)
    eye = torch.eye(2, dtype=torch.bool)
    assert image_text_contrastive(images, texts, 3.0, eye).item() == pytest.approx(
        image_text_contrastive(images, texts, 3.0).item(), rel=1e-6
    )
    with pytest.raises(ValueError, match="diagonal"):
        image_text_contrastive(images, texts, 1.0, ~eye)


def test_distillation_kl_known_value_temperature_and_teacher_without_gradient():
    student = torch.zeros(1, 3, requires_grad=True)  # uniform
    teacher = torch.tensor([[0.0, math.log(2.0), 0.0]], requires_grad=True)  # q = (1/4, 1/2, 1/4)
    loss = distillation_kl(student, teacher)
    expected = 0.25 * math.log(0.75) + 0.5 * math.log(1.5) + 0.25 * math.log(0.75)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert student.grad.abs().sum() > 0 and teacher.grad is None
    # T = 2: q ~ (1, sqrt 2, 1), scaled by T^2
    q = torch.tensor([1.0, math.sqrt(2.0), 1.0])
    q = q / q.sum()
    expected_t2 = 4 * float((q * (q * 3).log()).sum())
    assert distillation_kl(torch.zeros(1, 3), teacher.detach(), 2.0).item() == pytest.approx(
        expected_t2, rel=1e-6
    )
    same = torch.randn(4, 5)
    assert distillation_kl(same, same).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="teacher"):
        distillation_kl(torch.zeros(2, 3), torch.zeros(2, 4))


def test_focal_softmax_loss_known_value_background_weight_and_ce_limit():
    # 2 classes + background; RoI 0 is class 0 with p = 1/4, RoI 1 is background with p = 1/2
    logits = torch.tensor([[0.0, 0.0, math.log(2.0)], [0.0, 0.0, math.log(2.0)]], requires_grad=True)
    labels = torch.tensor([0, 2])
    loss = focal_softmax_loss(logits, labels, gamma=0.5, background_weight=0.2)
    expected = (0.75**0.5 * -math.log(0.25) + 0.2 * 0.5**0.5 * -math.log(0.5)) / 1.2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert logits.grad.abs().sum() > 0
    plain = focal_softmax_loss(logits, labels, gamma=0.0, background_weight=0.2)
    reference = F.cross_entropy(logits, labels, weight=torch.tensor([1.0, 1.0, 0.2]))
    assert plain.item() == pytest.approx(reference.item(), rel=1e-6)


def test_box_regression_loss_counts_foreground_only():
    deltas = torch.tensor([[0.0, 0.0, 0.0, 0.0], [5.0, 5.0, 5.0, 5.0]], requires_grad=True)
    targets = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    loss = box_regression_loss(deltas, targets, torch.tensor([1, 3]), background=3)
    # one foreground row, |d| = 1 > beta = 1/9: 1 - beta / 2; divided by the 2 RoIs
    assert loss.item() == pytest.approx((1 - 1 / 18) / 2, rel=1e-6)
    loss.backward()
    assert deltas.grad[0].abs().sum() > 0 and deltas.grad[1].abs().sum() == 0


def test_compatible_concepts_are_the_ones_that_also_describe_the_class():
    compatible = compatible_concepts(
        ["red circle", "blue star"], ["small red circle", "circle", "red hexagon", "blue"]
    )
    assert compatible.tolist() == [[True, True, False, False], [False, False, False, True]]


def test_concept_negatives_join_foreground_rows_only_and_push_regions_off_never_trained_names():
    # 2 classes; concepts: "red hexagon" (a negative for both) and "small red circle" (describes class 0)
    classes, concepts = ["red circle", "blue star"], ["red hexagon", "small red circle"]
    negatives = F.normalize(torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.2, 0.0]]), dim=-1)
    region = F.normalize(torch.tensor([[1.0, 0.9, 0.0], [0.0, 0.0, 1.0]]), dim=-1).requires_grad_(True)
    logits = torch.tensor([[5.0, 0.0, 0.0], [0.0, 0.0, 3.0]])
    labels = torch.tensor([0, 2])  # RoI 0: red circle; RoI 1: background
    out, remapped = with_concept_negatives(
        logits, labels, region, negatives, compatible_concepts(classes, concepts), temperature=0.1
    )
    assert out.shape == (2, 5) and remapped.tolist() == [0, 4]  # background stays last
    assert out[0, 2].item() == pytest.approx(region[0, 1].item() / 0.1)  # "red hexagon": a negative of RoI 0
    assert out[0, 3].item() == float("-inf")  # "small red circle" describes a red circle: never its negative
    assert torch.isinf(out[1, 2:4]).all()  # background RoIs get no concept negatives
    assert torch.equal(out[:, [0, 1, 4]], logits)
    loss = focal_softmax_loss(out, remapped, gamma=0.5)
    assert torch.isfinite(loss)
    plain = focal_softmax_loss(logits, labels, gamma=0.5)
    assert loss.item() > plain.item()  # the region also pays for pointing at "red hexagon"
    loss.backward()
    # gradient descent moves RoI 0 away from the never-trained "red hexagon" direction; RoI 1 has no such pull
    assert region.grad[0, 1].item() > 0 and torch.isfinite(region.grad).all()
    assert region.grad[1].abs().sum().item() == 0
