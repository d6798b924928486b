"""VQA and captioning runs end to end (tiny preset, shapes world): MLM pre-training, exact resume after a kill,
2-process DDP on CPU, and the README's GLIPv2 VQA/captioning commands with tiny settings."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
TINY = ["--device", "cpu", "batch_size=2", "log_every=1", "warmup_steps=1", "lr=1e-3", "shapes_epoch_size=8",
        "train_min_sizes=(96,128)", "train_max_size=160"]  # fmt: skip


def _train(out, *extra, env=ENV, check=True):
    cmd = [
        sys.executable,
        "-m",
        "openglip.cli",
        "train",
        "tiny",
        "--data",
        "shapes",
        "--out",
        str(out),
        *TINY,
        *extra,
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


def _losses(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """README: ``openglip train glip_nano --data shapes --out runs/mlm mlm_head=true mlm_weight=0.5``, then
    ``task=vqa`` and ``task=caption`` runs starting from it."""
    root = tmp_path_factory.mktemp("vl_runs")
    _train(
        root / "mlm",
        "mlm_head=true",
        "mlm_weight=0.5",
        "num_negatives=10",
        "max_steps=2",
        "checkpoint_every=0",
    )
    init = f"init_weights={root / 'mlm' / 'model.safetensors'}"
    for task in ("vqa", "caption"):
        _train(root / task, f"task={task}", init, "max_steps=4", "checkpoint_every=2")
    return root


def test_mlm_pretraining_logs_the_mlm_loss(runs):
    rows = _losses(runs / "mlm")
    assert [r["step"] for r in rows] == [1, 2]
    assert all(np.isfinite(r["loss_mlm"]) and r["loss_mlm"] > 0 and "loss_align" in r for r in rows)


@pytest.mark.parametrize("task", ["vqa", "caption"])
def test_killed_and_resumed_vl_run_repeats_the_losses_exactly(runs, tmp_path, task, kill_at_step):
    args = [
        f"task={task}",
        f"init_weights={runs / 'mlm' / 'model.safetensors'}",
        "max_steps=4",
        "checkpoint_every=2",
    ]
    cmd = [sys.executable, "-m", "openglip.cli", "train", "tiny", "--data", "shapes", "--out", str(tmp_path), *TINY,
           *args]  # fmt: skip
    assert kill_at_step(cmd, tmp_path, 3, env=ENV).returncode == -signal.SIGKILL
    _train(tmp_path, *args, "--resume")
    resumed, full = _losses(tmp_path), _losses(runs / task)
    key = "loss_vqa" if task == "vqa" else "loss_caption"
    assert [r["step"] for r in resumed] == [1, 2, 3, 4] and all(r[key] > 0 for r in resumed)
    assert [(r["step"], r["loss"]) for r in resumed] == [
        (r["step"], r["loss"]) for r in full
    ]  # bit-identical
    from safetensors.torch import load_file

    a, b = load_file(str(tmp_path / "model.safetensors")), load_file(str(runs / task / "model.safetensors"))
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    if (
        task == "caption"
    ):  # grounded captions on shapes: the grounding loss trains the detection head alongside
        assert all("loss_align" in r for r in resumed)


DDP_SCRIPT = """
import sys, torch
from openglip.config import TrainConfig, tiny
from openglip.tasks import TASKS
from openglip.engine.trainer import Trainer
out, task = sys.argv[1], sys.argv[2]
tc = TrainConfig(out_dir=out, task=task, max_steps=2, batch_size=2, lr=1e-3, warmup_steps=1, checkpoint_every=0,
                 log_every=1, train_min_sizes=(96,), train_max_size=128, data_options=("shapes_epoch_size=8",))
t = TASKS[task](tiny(), tc)
dataset = t.build_dataset()
trainer = Trainer(t, tc, dataset, device="cpu")
trainer.fit()
torch.save({k: v.clone() for k, v in trainer.model.state_dict().items()}, f"{out}/rank{trainer.dist.rank}.pt")
"""


@pytest.mark.parametrize("task", ["vqa", "caption"])
def test_two_process_ddp_keeps_ranks_equal(tmp_path, task):
    script = tmp_path / "ddp_vl.py"
    script.write_text(DDP_SCRIPT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
           str(tmp_path), task]  # fmt: skip
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    a = torch.load(tmp_path / "rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "rank1.pt", weights_only=True)
    head = [k for k in a if k.startswith(f"{task}_head.")]
    assert head and set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)  # gradients were averaged
    from openglip.config import TrainConfig, tiny
    from openglip.tasks import TASKS

    torch.manual_seed(0)
    fresh = TASKS[task](tiny(), TrainConfig(task=task)).build_model().state_dict()
    assert any(not torch.equal(a[k], fresh[k]) for k in head)  # and the head trained
    rows = _losses(tmp_path)
    assert [r["step"] for r in rows] == [1, 2] and all(r[f"loss_{task}"] > 0 for r in rows)
    if task == "caption":  # shapes captions carry boxes: the grounding loss ran under DDP too
        assert all(r["loss_align"] > 0 for r in rows)


def test_readme_vqa_and_caption_commands(runs, tmp_path, capsys):
    """README: ``openglip vqa ... --question``, ``openglip caption ... [--grounded]`` and the Python snippet."""
    from PIL import Image

    import openglip
    from openglip.cli import main
    from openglip.shapes import ShapesWorld
    from openglip.shapes.language import ANSWERS

    photo = tmp_path / "shapes.png"
    Image.fromarray(ShapesWorld(split="val").sample(0).image).save(photo)
    vqa, cap = runs / "vqa" / "model.safetensors", runs / "caption" / "model.safetensors"
    assert main(["vqa", str(photo), "--question", "how many hexagons are there?", "--weights", str(vqa)]) == 0
    assert capsys.readouterr().out.strip().split("\t")[1] in ANSWERS
    assert main(["caption", str(photo), "--weights", str(cap), "--max-length", "6"]) == 0
    assert main(["caption", str(photo), "--weights", str(cap), "--grounded", "--max-length", "6"]) == 0
    det = openglip.load_model(str(vqa))
    assert det.answer(str(photo), "what colour is the star?") in ANSWERS and det.model.answer_vocab == ANSWERS
    captioner = openglip.load_model(str(cap))
    text = captioner.caption(str(photo), max_length=6)
    caption, dets = captioner.caption(str(photo), grounded=True, max_length=6)
    assert caption == text and len(dets.scores) == len(dets.phrases)
    # bad input on the train command: a vocabulary file that does not fit, an unknown task
    bad = tmp_path / "answers.json"
    bad.write_text(json.dumps(["yes", "no"]))
    assert (
        main(
            ["train", str(runs / "vqa" / "config.json"), "--out", str(tmp_path / "r"), f"answer_vocab={bad}"]
        )
        == 2
    )
    assert main(["train", "tiny", "--out", str(tmp_path / "r2"), "task=poetry"]) == 2


def test_vqa_and_caption_training_on_files(tmp_path):
    """README: ``--data questions.json,annotations.json ... task=vqa image_root=images/`` and a COCO Captions run,
    each evaluated on its ``--val-data``; a record whose image is missing is skipped and counted."""
    from PIL import Image

    from openglip.data.captions import CaptionRecord, write_coco_captions
    from openglip.data.vqa import VQARecord, write_vqav2

    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        Image.fromarray(np.full((40, 56, 3), 60 * i, np.uint8)).save(images / f"{i}.png")
    qa = [VQARecord(str(images / f"{i}.png"), f"what is shown in {i}?", [("red", "blue", "2")[i]] * 10, "other",
                    i + 1, i + 1) for i in range(3)]  # fmt: skip
    qa.append(VQARecord(str(images / "missing.png"), "where?", ["here"] * 10, "other", 9, 9))
    write_vqav2(tmp_path / "questions.json", tmp_path / "annotations.json", qa)
    questions = json.loads((tmp_path / "questions.json").read_text())
    for q in questions[
        "questions"
    ]:  # names relative to the image root, as in the README's image_root=images/
        q["file_name"] = q["file_name"].removeprefix("images/")
    (tmp_path / "questions.json").write_text(json.dumps(questions))
    data = f"{tmp_path / 'questions.json'},{tmp_path / 'annotations.json'}"
    done = _train(tmp_path / "vqa_mine", "--data", data, "--val-data", data, "task=vqa", f"image_root={images}", "max_steps=1",
                  "checkpoint_every=0")  # fmt: skip
    assert "missing_image: 1" in done.stderr
    rows = _losses(tmp_path / "vqa_mine")
    assert (
        rows[0]["loss_vqa"] > 0
        and 0.0 <= rows[-1]["eval/accuracy"] <= 1.0
        and "eval/accuracy/other" in rows[-1]
    )
    caps = [
        CaptionRecord(str(images / f"{i}.png"), [f"a picture number {i}.", "a grey image."], i + 1)
        for i in range(3)
    ]
    write_coco_captions(tmp_path / "captions.json", caps)
    _train(tmp_path / "cap_mine", "--data", str(tmp_path / "captions.json"), "--val-data", str(tmp_path / "captions.json"),
           "task=caption", "max_steps=1", "checkpoint_every=0")  # fmt: skip
    rows = _losses(tmp_path / "cap_mine")
    assert rows[0]["loss_caption"] > 0 and "loss_align" not in rows[0]  # no boxes: no grounding loss
    assert 0.0 <= rows[-1]["eval/BLEU-4"] <= 1.0 and rows[-1]["eval/CIDEr"] >= 0.0
