"""Every command and snippet of the README's RegionCLIP section, run end to end on files written to disk (caption
JSONL, COCO detection JSON without splits + a split file of novel names, a val file with LVIS frequencies), each
stage for one step with tiny models; CLIP is RN50 with random weights (``RN50.pt`` -> ``random``)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import open_clip
import pytest

from openglip.cli import main
from openglip.data.captions import write_captions
from openglip.shapes import NOVEL, write_dataset

from .regionclip_releases import write_pretrained_from_clip

README = Path(__file__).resolve().parents[1] / "README.md"
TRAIN = ["image_size=64", "max_steps=1", "batch_size=2", "warmup_steps=0", "checkpoint_every=0"]
TINY = ["backbone=tiny_cnn", "pretrained=false", "fpn_channels=16"]
STUDENT = [*TINY, "roi_size=3", "head_dim=32"]
OVERRIDES = {
    "concepts": ["min_count=1"],
    "teacher": ["backbone=tiny_cnn", "pretrained=false", "crop_size=16", *TRAIN],
    "rpn": [*TINY, "post_nms_top_n=10", *TRAIN],
    "pretrain": [*STUDENT, "regions_per_image=2", *TRAIN],
    "transfer": [*STUDENT, "rois_per_image=16", "min_size=64", "max_size=64", *TRAIN],
    "evaluate": ["--images", "3"],
}


def readme_section() -> tuple[list[str], list[str]]:
    """``(shell commands, python snippets)`` of the RegionCLIP section (continuation lines joined)."""
    text = README.read_text()
    section = text[text.index("## RegionCLIP") :]
    section = section[: section.index("\n## ", 5)]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", section, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands, re.findall(r"```python\n(.*?)```", section, re.S)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """captions.jsonl, train.json (no split in its categories) + novel.txt, val.json (splits and frequencies)."""
    root = tmp_path_factory.mktemp("readme")
    train = write_dataset(root / "train", num_images=6, split="all", image_size=64, seed=3)
    coco = json.loads(train["coco"].read_text())
    write_captions(
        root / "captions.jsonl",
        [(str(root / "train" / im["file_name"]), im["caption"]) for im in coco["images"]],
    )
    for c in coco["categories"]:
        del c["split"]
    for im in coco["images"]:
        im["file_name"] = f"train/{im['file_name']}"
    (root / "train.json").write_text(json.dumps(coco))
    (root / "novel.txt").write_text("".join(f"{n}\n" for n in NOVEL))
    val = write_dataset(root / "val", num_images=3, split="val", image_size=64, seed=4)
    coco = json.loads(val["coco"].read_text())
    for k, c in enumerate(coco["categories"]):
        c["frequency"] = "rcf"[k % 3]
    for im in coco["images"]:
        im["file_name"] = f"val/{im['file_name']}"
    (root / "val.json").write_text(json.dumps(coco))
    (root / "image.png").write_bytes((root / "val" / "images" / "000000.png").read_bytes())
    # RegionCLIP's released pretrained model, in its layout, made of a random CLIP RN50
    clip = open_clip.create_model("RN50", pretrained=None, force_quick_gelu=True)
    write_pretrained_from_clip(root / "regionclip_pretrained-cc_rn50.pth", clip)
    return root


def test_readme_regionclip_commands_run_end_to_end_from_files(files, monkeypatch, capsys):
    commands, snippets = readme_section()
    assert len(commands) == 12 and len(snippets) == 1
    monkeypatch.chdir(files)
    for command in commands:
        words = shlex.split(command.replace("clip:RN50:RN50.pt", "clip:RN50:random"))
        assert words[:2] == ["openglip", "regionclip"], command
        stage = words[2]
        extra = OVERRIDES[stage]
        if stage == "pretrain" and "--student-init" in words:
            extra = ["regions_per_image=2", *TRAIN]  # CLIP's own architecture
        assert main([*words[1:], *extra]) == 0, command
        if "--out" in words and stage == "evaluate":
            metrics = json.loads(Path(words[words.index("--out") + 1]).read_text())
            keys = {"AP50", "novel/AP50", "base/AP50", "r/AP", "c/AP", "f/AP"}
            assert keys <= set(metrics) and all(
                0.0 <= metrics[k] <= 1.0 for k in keys - {"r/AP", "c/AP", "f/AP"}
            )
    out = capsys.readouterr().out
    assert "novel AP50" in out and "base/accuracy" in out
    namespace: dict = {}
    exec(snippets[0], namespace)  # load_detector + predict on image.png
    dets = namespace["dets"]
    assert set(dets.phrases) <= {"purple circle", "black star"} and dets.image_size == (64, 64)
