"""RegionCLIP parts: the concept pool (threshold, prompt averaging, file round trip), teacher crops and alignment,
proposals, datasets."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from openglip.errors import UsageError
from openglip.regionclip.concepts import ConceptPool, count_phrases, normalize_concept, template_embeddings
from openglip.regionclip.data import collate_regions
from openglip.regionclip.proposals import random_crops, top_regions
from openglip.regionclip.teacher import ContrastiveTeacher, square_context_boxes

TEMPLATES = ("a photo of a {}.", "a {}.")


class HashText:
    """A deterministic stub sentence encoder: the normalised sum of fixed random word vectors."""

    name = "hash-stub"

    def __init__(self, dim: int = 16):
        self.dim = dim

    def word(self, w: str) -> torch.Tensor:
        return torch.randn(self.dim, generator=torch.Generator().manual_seed(zlib.crc32(w.encode())))

    def sentences(self, texts):
        rows = [
            sum((self.word(w) for w in t.lower().replace(".", " ").split()), torch.zeros(self.dim))
            for t in texts
        ]
        return F.normalize(torch.stack(rows), dim=-1)


def _rule(caption: str):
    from openglip.prompts import rule_based_noun_phrases

    return rule_based_noun_phrases(caption)


def test_phrases_are_normalised_and_counted():
    assert normalize_concept("  The  Red   Car.") == "red car"
    assert normalize_concept("an apple") == "apple"
    counts = count_phrases(["A red circle and a Blue Star.", "the red circle"], _rule)
    assert counts == {"red circle": 2, "blue star": 1}


def test_concept_pool_threshold_and_prompt_average_before_centring():
    text = HashText()
    captions = [
        "a red circle and a blue star.",
        "the red circle",
        "a red circle.",
        "a green cross and a blue star.",
    ]
    pool = ConceptPool.build(captions, text=text, extractor=_rule, min_count=2, templates=TEMPLATES)
    assert pool.names == ["red circle", "blue star"] and pool.counts == [3, 2]  # "green cross" (1) is dropped
    # uncentred embedding = normalised mean of the per-template sentence embeddings, exactly
    per_template = torch.stack([text.sentences([t.format(n) for n in pool.names]) for t in TEMPLATES])
    raw = F.normalize(per_template.mean(0), dim=-1)
    # the same float32 ops on both sides: measured 0 below (6e-8 on the unit norms) on 1 and 2 threads, against
    # allclose's defaults (rtol 1e-5) or atol 1e-6
    assert torch.allclose(template_embeddings(text, pool.names, TEMPLATES), raw)
    assert torch.allclose(pool.centre, raw.mean(0), atol=1e-6)
    assert torch.allclose(pool.embeddings, F.normalize(raw - raw.mean(0), dim=-1), atol=1e-6)
    assert torch.allclose(pool.embeddings.norm(dim=1), torch.ones(2))
    # any name embeds into the same space; a concept of the pool maps onto its own embedding
    assert torch.allclose(pool.embed(["red circle"], text)[0], pool.embeddings[0], atol=1e-6)
    with pytest.raises(ValueError, match="no noun phrase occurs at least 9 times"):
        ConceptPool.build(captions, text=text, extractor=_rule, min_count=9)


def test_concept_pool_file_round_trip_and_errors(tmp_path):
    text = HashText()
    pool = ConceptPool.build(
        ["a red circle.", "a blue star."], text=text, extractor=_rule, templates=TEMPLATES
    )
    path = tmp_path / "pool" / "concepts.safetensors"
    pool.save(path)
    assert [p.name for p in path.parent.iterdir()] == ["concepts.safetensors"]  # no temporary file left
    back = ConceptPool.load(path)
    assert back.names == pool.names and back.counts == pool.counts
    assert back.templates == TEMPLATES and back.encoder == "hash-stub"
    assert torch.equal(back.embeddings, pool.embeddings) and torch.equal(back.centre, pool.centre)
    with pytest.raises(UsageError, match="regionclip concepts"):
        ConceptPool.load(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_text("not a pool")
    with pytest.raises(ValueError, match=r"junk\.safetensors"):
        ConceptPool.load(tmp_path / "junk.safetensors")
    with pytest.raises(ValueError, match="hash-stub"):
        pool.embed(["red circle"], type("Other", (HashText,), {"name": "other"})())


class MeanColour(nn.Module):
    """Stub image encoder: the mean normalised RGB of the input."""

    out_channels = 3

    def forward(self, x):
        return x.mean((2, 3))


def _colour_teacher(context: float = 0.5) -> ContrastiveTeacher:
    teacher = ContrastiveTeacher(
        backbone="tiny_cnn",
        pretrained=False,
        embed_dim=3,
        init_temperature=0.01,
        crop_size=16,
        crop_context=context,
    )
    teacher.encoder = MeanColour()
    teacher.proj = nn.Linear(3, 3)
    with torch.no_grad():
        teacher.proj.weight.copy_(torch.eye(3))
        teacher.proj.bias.zero_()
    return teacher.eval()


def test_teacher_assigns_each_region_the_concept_of_its_own_object():
    from openglip.regionclip.features import image_to_tensor
    from openglip.shapes import COLOUR_RGB

    names = ["red", "green", "blue", "yellow"]
    concepts = F.normalize(torch.tensor([COLOUR_RGB[n] for n in names], dtype=torch.float32) - 127.0, dim=-1)
    image = np.full((64, 96, 3), 127, dtype=np.uint8)  # grey = 0 after normalisation
    boxes = torch.tensor([[4.0, 4.0, 20.0, 24.0], [40.0, 30.0, 60.0, 46.0], [70.0, 2.0, 94.0, 20.0]])
    for box, name in zip(boxes.int().tolist(), ["blue", "yellow", "red"]):
        image[box[1] : box[3], box[0] : box[2]] = COLOUR_RGB[name]
    teacher = _colour_teacher()
    emb = teacher.embed_regions(image_to_tensor(image), boxes)  # (3, 3)
    best, logits = teacher.align(emb, concepts)
    assert [names[i] for i in best] == ["blue", "yellow", "red"]
    assert logits.shape == (3, 4)
    # the same float32 ops: measured 0 here and for the batched embeddings below (1 and 2 threads)
    assert torch.allclose(logits, teacher.scale() * emb @ concepts.t())
    # a batch of images with one box list each gives the same embeddings
    two = teacher.embed_regions(image_to_tensor(image)[None].repeat(2, 1, 1, 1), [boxes[:1], boxes[1:]])
    assert torch.allclose(two, emb, atol=1e-6)


def test_teacher_crops_are_context_padded_squares_with_grey_outside_the_image():
    sq = square_context_boxes(torch.tensor([[10.0, 20.0, 30.0, 30.0]]), 0.5)
    assert sq.tolist() == [[0.0, 5.0, 40.0, 45.0]]  # side 20 * 2 around the centre (20, 25)
    teacher = _colour_teacher(context=1.0)
    image = torch.ones(3, 32, 32)
    crop = teacher.crops(image, torch.tensor([[0.0, 0.0, 8.0, 8.0]]))  # square (-8, -8, 16, 16)
    assert crop.shape == (1, 3, 16, 16)
    assert crop[0, :, 0, 0].abs().max() == 0 and crop[0, :, -1, -1].min() == 1.0


def test_random_crops_lie_inside_the_image_and_replay_from_the_seed():
    a = random_crops(64, 96, 50, np.random.default_rng([1, 2]))
    b = random_crops(64, 96, 50, np.random.default_rng([1, 2]))
    assert a.shape == (50, 4) and a.dtype == np.float32 and np.array_equal(a, b)
    assert (a[:, 0] >= 0).all() and (a[:, 1] >= 0).all() and (a[:, 2] <= 96).all() and (a[:, 3] <= 64).all()
    assert (a[:, 2] - a[:, 0] > 0).all() and (a[:, 3] - a[:, 1] > 0).all()


def test_top_regions_removes_duplicates_across_levels():
    boxes = [torch.tensor([[0.0, 0, 10, 10], [0.0, 0, 10, 11], [20.0, 20, 30, 30]])]
    scores = [torch.tensor([0.9, 0.8, 0.5])]
    kept, s = top_regions(boxes, scores, k=2, iou=0.5)
    # float32 scores vs the float64 literals: measured 2.4e-8, approx's default rel=1e-6
    assert kept[0].tolist() == [[0.0, 0, 10, 10], [20.0, 20, 30, 30]] and s[0].tolist() == pytest.approx(
        [0.9, 0.5]
    )


def test_shapes_records_feed_the_same_datasets_as_files_and_keep_only_the_requested_classes():
    from openglip.regionclip.data import (
        BoxDataset,
        RegionCaptionDataset,
        shapes_caption_data,
        shapes_detection_data,
    )
    from openglip.shapes import BASE, CATEGORIES

    records = shapes_caption_data(4, image_size=64, seed=3, caption="random")
    cap = RegionCaptionDataset(records, image_size=64, random_regions=5, seed=3)
    x, y = cap[(1, 2)], cap[(1, 2)]
    assert torch.equal(x.image, y.image) and torch.equal(x.boxes, y.boxes) and x.caption == y.caption
    assert x.image_id == 3 and x.boxes.shape == (5, 4) and x.caption and x.image.shape == (3, 64, 64)
    data = shapes_detection_data(4, image_size=64, seed=0)
    assert data.split_names("novel") == [c for c in CATEGORIES if c not in BASE]
    boxes = BoxDataset(data, classes=BASE[:10], image_size=64)
    for i in range(4):
        item = boxes[(0, i)]
        assert len(item.boxes) == len(item.labels) and (item.labels < 10).all()
    # a smaller image side rescales the boxes with the image
    half = BoxDataset(data, image_size=32)[(0, 0)]
    full = BoxDataset(data, image_size=64)[(0, 0)]
    # boxes scaled by powers of two: measured 0
    assert half.image.shape == (3, 32, 32) and torch.allclose(half.boxes * 2, full.boxes)
    batch = collate_regions([boxes[(0, i)] for i in range(3)])
    assert batch.images.shape == (3, 3, 64, 64) and len(batch) == 3
    with pytest.raises(UsageError, match="pink elephant"):
        BoxDataset(data, classes=["pink elephant"], image_size=64)


def test_openglip_cli_has_the_regionclip_stages(capsys):
    from openglip.cli import main

    assert main(["regionclip", "evaluate", "--images", "3"]) == 2
    assert "give one of --detector" in capsys.readouterr().err
    assert main(["regionclip", "evaluate", "--student", "s.safetensors"]) == 2
    assert "--rpn" in capsys.readouterr().err


def test_evaluation_reports_splits_and_perfect_predictions_score_one():
    from openglip.regionclip.evaluate import evaluate_predictor, evaluation_data
    from openglip.shapes import CATEGORIES
    from openglip.structures import Detections

    data = evaluation_data(num_images=6, image_size=64)
    truth = {}
    for i in range(6):
        rec = data.records[i]
        truth[rec.image.tobytes()] = rec

    class Oracle:  # the ground truth of each image, looked up by its pixels
        def predict(self, images, prompt, box_threshold=0.0):
            names = list(prompt.phrases)
            out = []
            for image in images:
                r = truth[image.tobytes()]
                out.append(Detections(r.boxes, np.ones(len(r.boxes)), r.labels, [names[k] for k in r.labels],
                                      prompt_phrases=tuple(names)))  # fmt: skip
            return out

    hexagons = [c for c in CATEGORIES if c.endswith("hexagon")]
    m = evaluate_predictor(Oracle(), data, extra_splits={"hexagon": hexagons})
    # float64 AP of a perfect detector: measured 1.1e-16 from 1.0
    assert m["AP50"] == pytest.approx(1.0) and m["novel/AP50"] == pytest.approx(1.0)
    assert m["base/AP50"] == pytest.approx(1.0) and m["hexagon/AP50"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="pink elephant"):
        evaluate_predictor(Oracle(), data, extra_splits={"x": ["pink elephant"]})
