"""RegionCLIP's CLIP teacher, text encoder and student through open_clip, on CLIP RN50 built with random weights
(nothing is downloaded: ``clip:RN50:random``)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from openglip.errors import UsageError
from openglip.regionclip.clip import CLIPSentenceEncoder, CLIPTeacher, load_clip, parse_clip_spec
from openglip.regionclip.features import image_to_tensor
from openglip.regionclip.model import CLIPStudent
from openglip.regionclip.weights import load_region_teacher

SPEC = "clip:RN50:random"


@pytest.fixture(scope="module")
def teacher() -> CLIPTeacher:
    return CLIPTeacher(SPEC)


def _patches() -> list[np.ndarray]:
    from skimage import data

    return [
        np.asarray(Image.fromarray(x).resize((64, 64)))
        for x in (data.chelsea(), data.coffee(), data.astronaut())
    ]


def test_clip_teacher_region_embeddings_and_alignment_shapes(teacher):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # open_clip may never reach for the hub
    image = image_to_tensor(np.concatenate(_patches(), 1))  # (3, 64, 192)
    boxes = torch.tensor([[0.0, 0, 64, 64], [64.0, 0, 128, 64], [10.0, 5, 30, 60], [128.0, 0, 192, 64]])
    emb = teacher.embed_regions(image, boxes)
    # float32 unit norms: measured 1.2e-7; batched vs alone: measured 0 (1 and 2 threads), 1e-4 leaves room for
    # another CPU's conv order
    assert emb.shape == (4, 1024) and torch.allclose(emb.norm(dim=1), torch.ones(4), atol=1e-5)
    two = teacher.embed_regions(image[None].repeat(2, 1, 1, 1), [boxes[:1], boxes[1:]])
    assert torch.allclose(two, emb, atol=1e-4)  # batching does not change a region's embedding
    best, logits = teacher.align(emb, torch.nn.functional.normalize(torch.randn(7, 1024), dim=-1))
    assert (
        best.shape == (4,)
        and logits.shape == (4, 7)
        # exp of the checkpoint's stored log-scale: measured 9.5e-9 relative; rel 1e-3 tells CLIP's 1/0.07 from a
        # trained scale
        and teacher.scale().item() == pytest.approx(1 / 0.07, rel=1e-3)
    )


def test_a_region_scores_its_own_concept_highest(teacher):
    """With random weights there is no language to test, so the concepts are the model's own embeddings of the
    same three photos placed elsewhere (reversed order, another canvas): a region must align to the concept of
    its own photo. Random ResNets map every input near one direction, so both sides are centred on the concepts'
    mean, as the concept pool does."""
    patches = _patches()
    boxes = torch.tensor([[0.0, 0, 64, 64], [64.0, 0, 128, 64], [128.0, 0, 192, 64]])
    regions = teacher.embed_regions(image_to_tensor(np.concatenate(patches, 1)), boxes)
    elsewhere = teacher.embed_regions(image_to_tensor(np.concatenate(patches[::-1], 1)), boxes).flip(0)
    centre = elsewhere.mean(0)
    concepts = torch.nn.functional.normalize(elsewhere - centre, dim=-1)
    best, logits = teacher.align(torch.nn.functional.normalize(regions - centre, dim=-1), concepts)
    assert best.tolist() == [0, 1, 2]
    margin = logits.diagonal() - logits.masked_fill(torch.eye(3, dtype=torch.bool), -1e9).amax(1)
    assert (margin > 0).all()


def test_clip_text_tower_is_a_cached_sentence_encoder():
    text = CLIPSentenceEncoder(SPEC)
    emb = text.sentences(["a photo of a cat.", "a photo of a dog.", "a photo of a cat."])
    # unit norms: measured 0 to 1.2e-7; a cat and a dog caption: measured 3.3e-2 apart (the not-allclose below)
    assert emb.shape == (3, 1024) and torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.equal(emb[0], emb[2]) and not torch.allclose(emb[0], emb[1]) and text.name == SPEC


def test_clip_student_starts_from_the_clip_image_tower_and_trains(teacher):
    student = CLIPStudent(SPEC)
    assert student.embed_dim == student.feat_dim == 1024 and set(student.parts()) == {"backbone", "head"}
    images = image_to_tensor(np.concatenate(_patches(), 1))[None]
    boxes = [torch.tensor([[0.0, 0, 64, 64], [64.0, 0, 128, 64]])]
    with torch.no_grad():
        out = student.eval()(images, boxes)
    # initialised from the same CLIP: the student's region embeddings are the teacher's
    # measured 0 on 1 and 2 threads; 1e-4 leaves room for another CPU's conv order. Scale: measured 9.5e-9 relative
    assert torch.allclose(out.region_emb, teacher.embed_regions(images, boxes), atol=1e-4)
    assert out.image_emb.shape == (1, 1024) and out.logit_scale.item() == pytest.approx(1 / 0.07, rel=1e-3)
    student.train()
    loss = student(images, boxes).region_emb.sum()
    loss.backward()
    assert student.encoder.visual.layer4[0].conv1.weight.grad is not None
    assert (
        teacher.encoder.visual.layer4[0].conv1.weight.grad is None
    )  # the teacher's CLIP is not the student's


def test_missing_or_foreign_clip_weights_are_one_clear_error(tmp_path):
    with pytest.raises(UsageError, match=r"CLIP weights file .*RN50\.pt not found \(download it yourself"):
        load_region_teacher(f"clip:RN50:{tmp_path / 'RN50.pt'}")
    with pytest.raises(UsageError, match="must be given as clip:ARCH:PATH"):
        parse_clip_spec("clip:RN50")
    with pytest.raises(UsageError, match="unknown CLIP architecture 'RN42'"):
        parse_clip_spec("clip:RN42:random")
    with pytest.raises(UsageError, match="need a CLIP ResNet"):
        parse_clip_spec("clip:ViT-B-32:random")
    foreign = tmp_path / "resnet18.pt"  # an ImageNet ResNet-18's weights, not a CLIP
    import torchvision

    torch.save(torchvision.models.resnet18().state_dict(), foreign)
    with pytest.raises(UsageError, match=r"resnet18\.pt: not RN50 CLIP weights"):
        load_region_teacher(f"clip:RN50:{foreign}")
    scripted = tmp_path / "scripted.pt"  # a TorchScript archive (OpenAI's release format) of something else
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), scripted)
    with pytest.raises(UsageError, match=r"scripted\.pt: not RN50 CLIP weights"):
        load_region_teacher(f"clip:RN50:{scripted}")


def test_regionclip_release_files_are_clip_specs(tmp_path):
    """``clip:RN50:regionclip_pretrained-cc_rn50.pth``: RegionCLIP's pretrained model as the CLIP of the concept
    pool, teacher or student (``--student`` of transfer): its student ResNet and text encoder fill open_clip's RN50;
    a transferred detector has no text encoder and says so when asked for text."""
    import open_clip

    from openglip.regionclip.weights import released_student

    from .regionclip_releases import write_pretrained_from_clip

    source = open_clip.create_model("RN50", pretrained=None, force_quick_gelu=True)
    path = write_pretrained_from_clip(tmp_path / "regionclip_pretrained-cc_rn50.pth", source)
    model = load_clip(f"clip:RN50:{path}")
    want = source.state_dict()
    for key, value in model.state_dict().items():
        if key != "logit_scale" and not key.endswith("num_batches_tracked"):
            assert torch.equal(value, want[key]), key
    assert released_student(str(path)) == "RN50" and released_student(str(tmp_path / "x.safetensors")) is None
    assert CLIPSentenceEncoder(f"clip:RN50:{path}").sentences(["a photo of a cat."]).shape == (1, 1024)
    detector = write_pretrained_from_clip(tmp_path / "regionclip_finetuned-coco_rn50.pth", source, text=False)
    with pytest.raises(UsageError, match="no CLIP text encoder"):
        CLIPSentenceEncoder(f"clip:RN50:{detector}")
    with pytest.raises(UsageError, match="holds a RN50 CLIP, not RN101"):
        load_clip(f"clip:RN101:{path}")
