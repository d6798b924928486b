"""GLIP's ablation ladder: late fusion (GLIP-T (A)), the shapes world's detection / grounding / caption corpora, and
the README's commands that climb the ladder."""

from __future__ import annotations

import dataclasses
import json
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch

import openglip
from openglip.checkpoints import (
    LATE_STRIDE,
    CheckpointError,
    load_into,
    official_key_to_openglip,
    openglip_key_to_official,
    save_safetensors,
)
from openglip.cli import main
from openglip.config import glip_t, tiny
from openglip.models.glip import build_model, build_tower
from openglip.shapes import CATEGORIES, NOVEL, write_dataset
from openglip.shapes.ladder import (
    CAPTION_SHAPES,
    DETECTION_CATEGORIES,
    GROUNDING_SHAPES,
    concept_counts,
    corpus_samples,
    pseudo_label_quality,
    write_ladder,
)

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def late_model():
    torch.manual_seed(0)
    model = build_model(dataclasses.replace(tiny(), fusion="late")).eval()
    with torch.no_grad():
        model.head.bias0.fill_(0.0)  # so that a random model returns boxes
    return model


def test_late_fusion_has_no_cross_modality_parameters(late_model):
    deep = build_model(tiny())
    late_keys, deep_keys = set(late_model.state_dict()), set(deep.state_dict())
    assert late_keys < deep_keys
    dropped = deep_keys - late_keys
    assert dropped and all(".cross_attn." in k or ".text_layer." in k for k in dropped)
    tower = [n for n, _ in late_model.tower.named_parameters()]
    assert tower and all(n.split(".")[2] == "dyconv" for n in tower)  # layers.<i>.dyconv.* only
    assert all(b.cross_attn is None and b.text_layer is None for b in late_model.tower.layers)


def test_late_fusion_image_features_do_not_depend_on_the_prompt(late_model):
    deep = build_model(tiny()).eval()
    image = torch.randn(2, 3, 96, 128)
    prompts = (["red circle. blue square.", "a cat"], ["green star", "the small white cross left of a dog"])
    with torch.no_grad():
        late = [late_model(image, captions=p) for p in prompts]
        deeps = [deep(image, captions=p) for p in prompts]
    # bitwise: the prompt never reaches the image side of a late-fusion tower
    assert all(torch.equal(a, b) for a, b in zip(late[0].fused_visual, late[1].fused_visual))
    assert not all(torch.equal(a, b) for a, b in zip(deeps[0].fused_visual, deeps[1].fused_visual))
    # the text still meets the image in the alignment logits, and passes the tower unchanged
    assert torch.equal(late[0].fused_text, late[0].text)
    assert late[0].logits[0].shape[-1] != late[1].logits[0].shape[-1] or not torch.equal(
        late[0].logits[0], late[1].logits[0]
    )


def test_late_glip_t_keys_map_to_the_official_layout():
    """A late-fusion glip_t has the official DyConv keys and nothing else in its tower. The official GLIP-T (A)
    (EARLY_FUSE_ON: False) tower holds the DyConvs alone, block i's at index i (tests/official_layouts.py; the
    whole layout is checked in tests/test_checkpoints.py)."""
    late = {f"tower.{k}" for k in build_tower(dataclasses.replace(glip_t(), fusion="late")).state_dict()}
    deep = {f"tower.{k}" for k in build_tower(glip_t()).state_dict()}
    assert late < deep and len(deep) > len(late) > 0
    for key in late:
        official = openglip_key_to_official(key, LATE_STRIDE)
        block = int(key.split(".")[2])
        assert official.startswith(f"rpn.head.dyhead_tower.{block}.")  # the DyConv of block i, at index i
        assert official_key_to_openglip(official, LATE_STRIDE) == key


def test_late_and_deep_checkpoints_refuse_each_other_with_a_hint(late_model):
    deep = build_model(tiny())
    with pytest.raises(CheckpointError, match="load it with fusion=deep"):
        load_into(late_model, deep.state_dict())
    with pytest.raises(CheckpointError, match="load it with fusion=late"):
        load_into(deep, late_model.state_dict())


def test_late_fusion_checkpoint_loads_in_load_model_and_the_cli(tmp_path, late_model, chelsea):
    from PIL import Image

    path = tmp_path / "late.safetensors"
    save_safetensors(late_model, path)
    det = openglip.load_model(str(path), device="cpu")
    assert det.config.fusion == "late"
    dets = det.predict(chelsea, "cat. dog.", box_threshold=0.0)
    assert len(dets) > 0 and np.isfinite(dets.scores).all()
    Image.fromarray(chelsea).save(tmp_path / "cat.png")
    out = tmp_path / "dets.json"
    assert main(["detect", str(tmp_path / "cat.png"), "--prompt", "cat", "--weights", str(path), "--threshold",
                 "0", "--out", str(out)]) == 0  # fmt: skip
    assert len(json.loads(out.read_text())) > 0
    data = write_dataset(tmp_path / "val", num_images=2, split="val", image_size=96, seed=1)
    metrics = tmp_path / "m.json"
    assert main(["evaluate", "--weights", str(path), "--data", str(data["coco"]), "--out", str(metrics)]) == 0
    assert 0.0 <= json.loads(metrics.read_text())["metrics"]["AP50"] <= 1.0
    onnx = tmp_path / "late.onnx"
    assert main(["export", "--weights", str(path), "--out", str(onnx), "--prompt", "cat. dog.", "--exporter",
                 "torchscript"]) == 0  # fmt: skip
    assert onnx.stat().st_size > 0


def test_ladder_corpora_teach_what_the_mapping_says(tmp_path):
    paths = write_ladder(tmp_path, detection_images=40, grounding_images=20, caption_images=30, seed=3,
                         image_size=96, preset="tiny")  # fmt: skip
    det = concept_counts(paths["detection"])
    grd = concept_counts(paths["grounding"])
    cap = concept_counts(paths["captions_truth"])
    assert set(det) <= {"circle", "square", "triangle", "star"} and det
    assert set(GROUNDING_SHAPES) <= set(grd) and not set(CAPTION_SHAPES) & set(grd)
    assert set(CAPTION_SHAPES) <= set(cap)
    coco = json.loads(paths["detection"].read_text())
    assert [c["name"] for c in coco["categories"]] == DETECTION_CATEGORIES
    # the detection images hold no other object than their boxes (so no unlabelled hexagon or cross)
    for sample in corpus_samples("detection", 40, seed=3, image_size=96):
        assert all(CATEGORIES[int(label)] in DETECTION_CATEGORIES for label in sample.labels)
    # the 8 novel combinations are named nowhere
    text = "".join(paths[k].read_text() for k in ("detection", "grounding", "captions", "captions_truth"))
    assert not any(name in text for name in NOVEL)
    captions = [json.loads(line) for line in paths["captions"].read_text().splitlines()]
    assert len(captions) == 30 and all("bbox" not in json.dumps(c) for c in captions)
    recipe = json.loads(paths["recipe"].read_text())
    assert recipe["train"]["data"] == str(paths["detection"]) and recipe["model"]["name"] == "tiny"
    # perfect pseudo labels are scored as perfect
    quality = pseudo_label_quality(paths["captions_truth"], paths["captions_truth"])
    assert quality["all/precision"] == quality["all/recall"] == quality["caption-only/recall"] == 1.0
    # each pseudo box twice: still all right, but a true box is found once (recall never exceeds 1)
    doubled = tmp_path / "doubled.jsonl"
    rows = [json.loads(line) for line in paths["captions_truth"].read_text().splitlines()]
    for row in rows:
        row["grounding"]["regions"] = row["grounding"]["regions"] * 2
    doubled.write_text("".join(json.dumps(r) + "\n" for r in rows))
    quality = pseudo_label_quality(doubled, paths["captions_truth"])
    assert quality["all/precision"] == quality["all/recall"] == 1.0
    assert quality["all/boxes"] == 2 * sum(len(r["grounding"]["regions"]) // 2 for r in rows)


def _readme_commands(title: str) -> list[str]:
    section = README.read_text().split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line.split("  #")[0].strip() for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def test_readme_ladder_commands_run(tmp_path, monkeypatch, capsys):
    """Every command of the README's ladder section, with tiny settings appended."""
    monkeypatch.chdir(tmp_path)
    tiny_train = ["max_steps=2", "batch_size=2", "train_min_sizes=(96,)", "train_max_size=128", "log_every=1",
                  "pre_nms_thresh=0.0"]  # a 2-step teacher scores low: keep every candidate  # fmt: skip
    extra = {
        "data": ["--detection-images", "6", "--grounding-images", "4", "--caption-images", "4", "--size", "96",
                 "--preset", "tiny"],
        "train": tiny_train,
        "label": ["--threshold", "0.0"],
        "evaluate": ["--images", "4", "--image-size", "96"],
    }  # fmt: skip
    commands = _readme_commands("GLIP's ablation ladder")
    assert [c.split()[1] for c in commands] == [
        "data",
        "train",
        "train",
        "train",
        "label",
        "train",
        "evaluate",
    ]
    for line in commands:
        argv = shlex.split(line)
        assert argv[0] == "openglip", line
        assert main([*argv[1:], *extra[argv[1]]]) == 0, line
    for run in ("A", "B", "C", "student"):
        cfg = json.loads((tmp_path / "runs" / run / "config.json").read_text())
        assert cfg["model"]["fusion"] == ("late" if run == "A" else "deep")
        assert (tmp_path / "runs" / run / "model.safetensors").exists()
    data = {run: json.loads((tmp_path / "runs" / run / "config.json").read_text())["train"]["data"]
            for run in ("B", "C", "student")}  # fmt: skip
    assert data["B"].count(",") == 0 and data["C"].count(",") == 1 and "pseudo.odvg.jsonl" in data["student"]
    pseudo = [
        json.loads(line) for line in (tmp_path / "data/ladder/pseudo.odvg.jsonl").read_text().splitlines()
    ]
    assert len(pseudo) == 4 and all(r["grounding"]["regions"] for r in pseudo)  # threshold 0 keeps boxes
    assert "novel/AP50" in capsys.readouterr().out
