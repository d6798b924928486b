"""VQAv2 answer normalisation, soft scores and accuracy against hand-computed values; caption BLEU/CIDEr.

Tolerances: VQA accuracies are ratios of small integers in float64, measured equal to the hand values (difference 0)
on 1 and 2 threads; approx's default rel=1e-6. A perfect caption's BLEU-4 was measured 1.3e-10 from 1.0 (abs=1e-6).
"""

from __future__ import annotations

import pytest

from openglip.vl_metrics import answer_scores, caption_metrics, normalize_answer, vqa_accuracy, vqa_summary


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("Two", "2"),
        ("two.", "2"),
        ("none", "0"),
        ("a dog!", "dog"),
        ("  The  Cat ", "cat"),
        ("dont know.", "don't know"),
        ("1,000", "1000"),  # a digit-comma-digit group: punctuation removed, not spaced
        ("red/blue", "red blue"),  # punctuation not touching a space becomes a space
        ("3.5", "3.5"),  # a period next to a digit stays
        ("yes\tsir", "yes sir"),
    ],
)
def test_answer_normalisation_follows_the_official_rules(raw, normalised):
    assert normalize_answer(raw) == normalised


def test_vqa_accuracy_matches_hand_computed_values():
    ten = ["2"] * 3 + ["3"] * 7
    # 3 of 10 said "2": the 3 leave-one-out sets that drop a "2" see 2 matches (2/3), the 7 others see 3 (1)
    assert vqa_accuracy("Two", ten) == pytest.approx((3 * 2 / 3 + 7 * 1.0) / 10)  # 0.9
    assert vqa_accuracy("three", ten) == pytest.approx(1.0)
    assert vqa_accuracy("4", ten) == 0.0
    one = ["yes"] + ["no"] * 9
    assert vqa_accuracy("yes", one) == pytest.approx(9 * (1 / 3) / 10)  # 0.3
    two = ["yes"] * 2 + ["no"] * 8
    assert vqa_accuracy("Yes!", two) == pytest.approx((2 * (1 / 3) + 8 * (2 / 3)) / 10)  # 0.6
    assert vqa_accuracy("2", ["2"]) == 1.0 and vqa_accuracy("two", ["3"]) == 0.0  # a lone answer is unanimous
    with pytest.raises(ValueError, match="at least one"):
        vqa_accuracy("2", [])


def test_soft_scores_equal_the_accuracy_each_answer_would_earn():
    answers = ["2"] * 3 + ["3"] * 6 + ["4"]
    scores = answer_scores(answers)
    assert scores == pytest.approx({"2": 0.9, "3": 1.0, "4": 0.3})
    for answer, score in scores.items():
        assert vqa_accuracy(answer, answers) == pytest.approx(score)
    # training targets normalise the human answers too ("Four" -> "4"); VQAv2's own answers already are
    assert answer_scores(["2"] * 3 + ["3"] * 6 + ["Four"]) == pytest.approx(scores)
    assert answer_scores(["yes"]) == {"yes": 1.0}


def test_vqa_summary_reports_accuracy_per_question_type():
    out = vqa_summary(["red", "2", "no"], [["red"], ["3"], ["no"]], ["colour", "count", "exist"])
    assert out == pytest.approx(
        {"accuracy": 2 / 3, "accuracy/colour": 1.0, "accuracy/count": 0.0, "accuracy/exist": 1.0}
    )


def test_caption_metrics_are_perfect_for_references_and_lower_otherwise():
    refs = {0: ["a red circle and a blue square."], 1: ["a green star, a black cross and a white hexagon."]}
    perfect = caption_metrics(
        {0: "A red circle and a blue square.", 1: "a green star, a black cross and a white hexagon"}, refs
    )
    assert perfect["BLEU-4"] == pytest.approx(1.0, abs=1e-6) and perfect["CIDEr"] > 5.0
    worse = caption_metrics({0: "a red circle.", 1: "a blue square and a yellow triangle."}, refs)
    assert 0.0 <= worse["BLEU-4"] < 0.5 and worse["CIDEr"] < perfect["CIDEr"]
    with pytest.raises(ValueError, match="no reference"):
        caption_metrics({2: "x"}, refs)
