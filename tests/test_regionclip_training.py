"""RegionCLIP stages through the project's Trainer with tiny models: teacher, RPN, pretraining and transfer run,
checkpoint and resume exactly; the transferred detector predicts novel class names; evaluation and the CLI."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from openglip.regionclip import ConceptPool, load_detector, load_student
from openglip.regionclip.config import PretrainConfig, RPNConfig, TeacherConfig, TransferConfig
from openglip.regionclip.evaluate import evaluate_predictor, evaluate_zero_shot, evaluation_data
from openglip.regionclip.tasks import TransferTask
from openglip.regionclip.train import default_train_config, run_pretrain, run_rpn, run_teacher, run_transfer
from openglip.shapes import BASE, NOVEL, ShapesWorld
from openglip.structures import Detections

from .test_regionclip_units import HashText

ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}
TINY = dict(backbone="tiny_cnn", pretrained=False)
STUDENT = dict(TINY, fpn_channels=16, roi_size=3, head_dim=32, embed_dim=16, image_size=64, epoch_size=16)


def _train(stage: str, out: Path, **changes):
    steps = dict(
        max_steps=4, batch_size=2, checkpoint_every=2, log_every=1, warmup_steps=0, schedule="constant"
    )
    return default_train_config(stage, str(out), **{**steps, **changes})


def _losses(run: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """A stub-text concept pool, a 2-step teacher and a 2-step RPN (tiny CNNs on 64 px images)."""
    root = tmp_path_factory.mktemp("regionclip")
    text = HashText(16)
    world = ShapesWorld(split="all", image_size=64, seed=21)
    captions = [c.caption for i in range(30) for c in world.sample(i).captions]
    from openglip.prompts import rule_based_noun_phrases

    pool = ConceptPool.build(
        captions, text=text, extractor=rule_based_noun_phrases, templates=("a {}.", "a photo of a {}.")
    )
    pool.save(root / "concepts.safetensors")
    concepts = str(root / "concepts.safetensors")
    teacher_cfg = TeacherConfig(
        **TINY, embed_dim=16, crop_size=16, concepts=concepts, image_size=64, epoch_size=8
    )
    teacher = run_teacher(
        teacher_cfg,
        _train("teacher", root / "teacher", max_steps=2, checkpoint_every=0),
        text=text,
        device="cpu",
    )
    rpn_cfg = RPNConfig(**TINY, fpn_channels=16, image_size=64, epoch_size=8, post_nms_top_n=20)
    rpn = run_rpn(rpn_cfg, _train("rpn", root / "rpn", max_steps=2, checkpoint_every=0), device="cpu")
    return {"root": root, "text": text, "concepts": concepts, "teacher": str(teacher), "rpn": str(rpn)}


def _pretrain_cfg(parts, **changes) -> PretrainConfig:
    return PretrainConfig(
        **STUDENT,
        concepts=parts["concepts"],
        teacher=parts["teacher"],
        rpn=parts["rpn"],
        regions_per_image=4,
        **changes,
    )


def test_teacher_and_rpn_runs_write_weights_and_losses(parts):
    for stage, keys in (("teacher", {"image_text"}), ("rpn", {"rpn_objectness", "rpn_box"})):
        rows = [
            json.loads(line) for line in (parts["root"] / stage / "metrics.jsonl").read_text().splitlines()
        ]
        assert [r["step"] for r in rows] == [1, 2] and keys <= set(rows[0])
        assert all(np.isfinite(r["loss"]) for r in rows)
    teacher = load_file(parts["teacher"])
    # the same saved float32 tensor read back: measured 0; allclose's defaults
    assert torch.allclose(teacher["text_centre"], ConceptPool.load(parts["concepts"]).centre)


def test_pretraining_resumes_exactly(parts, tmp_path):
    cfg = _pretrain_cfg(parts)
    full = run_pretrain(cfg, _train("pretrain", tmp_path / "full"), text=parts["text"], device="cpu")
    rows = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert {"region_text", "image_text", "distill"} <= set(rows[0]) and all(r["distill"] >= 0 for r in rows)
    # stop after 2 steps (a checkpoint), then resume to 4: the same losses and weights as the uninterrupted run
    run_pretrain(cfg, _train("pretrain", tmp_path / "cut", max_steps=2), text=parts["text"], device="cpu")
    resumed = run_pretrain(
        cfg, _train("pretrain", tmp_path / "cut"), text=parts["text"], resume=True, device="cpu"
    )
    assert _losses(tmp_path / "cut") == _losses(tmp_path / "full") and len(_losses(tmp_path / "full")) == 4
    a, b = load_file(str(full)), load_file(str(resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    student, saved = load_student(full)
    assert saved["encoder"] == "hash-stub" and student.region_proj.out_features == 16


def test_pretraining_with_random_crops_and_without_distillation(parts, tmp_path):
    cfg = _pretrain_cfg(parts, region_source="random", distill_weight=0.0)
    run_pretrain(
        cfg, _train("pretrain", tmp_path, max_steps=2, checkpoint_every=0), text=parts["text"], device="cpu"
    )
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(r["distill"] == 0.0 and r["region_text"] > 0 for r in rows)
    with pytest.raises(ValueError, match="region_source"):
        run_pretrain(
            _pretrain_cfg(parts, region_source="boxes"), _train("pretrain", tmp_path), text=parts["text"]
        )


def test_transfer_resumes_exactly_and_detects_novel_names(parts, tmp_path):
    pretrain = run_pretrain(
        _pretrain_cfg(parts),
        _train("pretrain", tmp_path / "student", max_steps=2),
        text=parts["text"],
        device="cpu",
    )
    cfg = TransferConfig(
        **STUDENT,
        concepts=parts["concepts"],
        rpn=parts["rpn"],
        student=str(pretrain),
        rois_per_image=16,
        min_size=64,
    )
    full = run_transfer(cfg, _train("transfer", tmp_path / "full"), text=parts["text"], device="cpu")
    rows = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert {"cls", "box"} <= set(rows[0])
    run_transfer(cfg, _train("transfer", tmp_path / "cut", max_steps=2), text=parts["text"], device="cpu")
    run_transfer(cfg, _train("transfer", tmp_path / "cut"), text=parts["text"], resume=True, device="cpu")
    assert _losses(tmp_path / "cut") == _losses(tmp_path / "full")

    detector = load_detector(full, text=parts["text"])
    detector.post.score_thresh = 0.0  # an untrained tiny detector: keep every box
    assert detector.seen_classes == tuple(BASE) and detector.pretrained is not None
    images = [ShapesWorld(split="val", image_size=64, seed=5).sample(i).image for i in range(2)]
    dets = detector.predict(images, list(NOVEL[:3]))
    assert len(dets) == 2 and all(isinstance(d, Detections) for d in dets)
    assert len(dets[0]) > 0 and set(dets[0].labels) <= {0, 1, 2}
    assert set(dets[0].phrases) <= set(NOVEL[:3]) and dets[0].image_size == (64, 64)
    assert (dets[0].xyxy >= 0).all() and (dets[0].xyxy <= 64).all()
    one = detector.predict(images[0], "pink elephant. red circle.")  # any name, one image, a caption prompt
    assert isinstance(one, Detections) and set(one.phrases) <= {"pink elephant", "red circle"}
    # ViLD's ensemble with the frozen pretrained student: p_det^(1-w) * p_pre^w, w = 2/3 unseen, 1/3 seen
    batch = torch.stack([torch.from_numpy(i).permute(2, 0, 1).float().sub(127).div(128) for i in images])
    names = [BASE[0], NOVEL[0]]
    text = detector.names(names, detector.centre())
    assert (detector.unseen_weight, detector.seen_weight) == (0.67, 0.33)
    ensembled = torch.cat([p for _, p in detector.score(batch, text, names)])
    detector.unseen_weight = detector.seen_weight = 0.0
    plain = torch.cat([p for _, p in detector.score(batch, text, names)])
    with torch.no_grad():
        out = detector(batch, text)
        pre = detector.pretrained(batch, out.regions)
        p_pre = (pre.logit_scale * pre.region_emb @ text.t()).softmax(-1)
        p_det = out.logits.softmax(-1)[:, :-1]
    objectness = torch.cat(out.objectness)[:, None]
    # both sides are the same float32 probabilities in [0, 1] computed in another order: a few ulps (6e-8 each)
    # apart; 1e-6 is about 16 ulps (reasoned from float32 rounding, not measured on a second CPU)
    assert torch.allclose(plain, (p_det * objectness).sqrt(), atol=1e-6)
    w = torch.tensor([0.33, 0.67])
    expected = (p_det.clamp(min=1e-12) ** (1 - w) * p_pre.clamp(min=1e-12) ** w * objectness).sqrt()
    assert torch.allclose(ensembled, expected, atol=1e-6) and not torch.allclose(ensembled, plain)
    # the pretrained student initialises the box head and is kept, frozen, for the calibration
    built = TransferTask(cfg, text=parts["text"], classes=list(BASE)).build_model()
    student = load_file(str(pretrain))
    for part in (built.student, built.pretrained):
        assert all(torch.equal(part.state_dict()[k], v) for k, v in student.items() if k != "text_centre")
    assert not any(p.requires_grad for p in built.pretrained.parameters())

    data = evaluation_data(num_images=3, image_size=64)
    metrics = evaluate_predictor(detector, data)
    assert {"AP50", "base/AP50", "novel/AP50"} <= set(metrics)
    zero = evaluate_zero_shot(parts["rpn"], data, student=pretrain, text=parts["text"])
    assert 0.0 <= zero["AP50"] <= 1.0


def test_transfer_puts_the_caption_concepts_in_foreground_rois_softmax(parts):
    from openglip.regionclip.data import BoxDataset, collate_regions, shapes_detection_data

    cfg = TransferConfig(**STUDENT, concepts=parts["concepts"], rpn=parts["rpn"], rois_per_image=16)
    task = TransferTask(cfg, text=parts["text"], classes=list(BASE))
    pool = ConceptPool.load(parts["concepts"])
    # every concept but the class names is a negative; a class is never the negative of a concept naming it
    assert len(task.negatives) == len([n for n in pool.names if n not in BASE]) > 0
    kept = [n for n in pool.names if n not in BASE]
    assert task.compatible.shape == (len(BASE), len(kept))
    novel = next(n for n in NOVEL if n in kept)  # a never-trained name from the captions: a negative of all
    assert not task.compatible[:, kept.index(novel)].any()
    larger = next(n for n in kept if n.split()[0] in ("small", "large") and " ".join(n.split()[1:]) in BASE)
    assert task.compatible[BASE.index(" ".join(larger.split()[1:])), kept.index(larger)]  # "small red circle"
    torch.manual_seed(0)
    model = task.build_model()
    dataset = BoxDataset(shapes_detection_data(2, image_size=64), classes=list(BASE), image_size=64)
    batch = collate_regions([dataset[i] for i in range(2)])
    torch.manual_seed(1)
    with_pool = task.losses(model, batch)["cls"]
    plain = TransferTask(
        dataclasses.replace(cfg, pool_negatives=False), text=parts["text"], classes=list(BASE)
    )
    torch.manual_seed(1)
    without = plain.losses(model, batch)["cls"]
    assert torch.isfinite(with_pool) and with_pool.item() > without.item()


def test_cli_pretraining_survives_a_kill_and_resumes_exactly(tmp_path, capsys, kill_at_step):
    """The real commands (MiniLM text, tiny CNNs): concepts, teacher, rpn and a reference pretraining in this process,
    then a pretraining killed after step 3 and resumed, in subprocesses (as a crashed job would be)."""
    from openglip.cli.regionclip import main

    tiny = [
        "backbone=tiny_cnn",
        "pretrained=false",
        "image_size=64",
        "epoch_size=8",
        "batch_size=2",
        "warmup_steps=0",
    ]
    concepts = str(tmp_path / "concepts.safetensors")
    assert main(["concepts", "--out", str(tmp_path), "num_images=20", "min_count=1", "image_size=64"]) == 0
    assert "concept pool:" in capsys.readouterr().out
    assert (
        main(
            [
                "teacher",
                "--out",
                str(tmp_path / "teacher"),
                "--concepts",
                concepts,
                *tiny,
                "crop_size=16",
                "max_steps=1",
            ]
        )
        == 0
    )
    assert main(["rpn", "--out", str(tmp_path / "rpn"), *tiny, "fpn_channels=16", "max_steps=1"]) == 0
    pretrain = ["--concepts", concepts, "--teacher", str(tmp_path / "teacher" / "model.safetensors"), "--rpn",
                str(tmp_path / "rpn" / "model.safetensors"), *tiny, "fpn_channels=16", "roi_size=3", "head_dim=32",
                "max_steps=4", "checkpoint_every=2", "log_every=1", "regions_per_image=3", "--device", "cpu"]  # fmt: skip
    assert main(["pretrain", "--out", str(tmp_path / "full"), *pretrain]) == 0

    env = {**ENV, "OMP_NUM_THREADS": str(torch.get_num_threads())}  # the same kernels as this process
    cmd = [
        sys.executable,
        "-m",
        "openglip.cli.regionclip",
        "pretrain",
        "--out",
        str(tmp_path / "cut"),
        *pretrain,
    ]
    first = kill_at_step(cmd, tmp_path / "cut", 3, env=env, timeout=300)
    assert first.returncode == -signal.SIGKILL
    assert [s for s, _ in _losses(tmp_path / "cut")] == [
        1,
        2,
        3,
    ]  # step 3 logged, its checkpoint never written
    second = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    assert _losses(tmp_path / "cut") == _losses(tmp_path / "full")

    assert (
        main(["pretrain", "--out", str(tmp_path / "x"), "--concepts", str(tmp_path / "nope.safetensors")])
        == 2
    )
    assert "nope.safetensors" in capsys.readouterr().err
    assert main(["pretrain", "--out", str(tmp_path / "x"), "max_stesp=3"]) == 2
    assert "did you mean max_steps" in capsys.readouterr().err


DDP_PRETRAIN = """
import sys, torch
sys.path.insert(0, sys.argv[2])
from tests.test_regionclip_units import HashText
from openglip.engine.trainer import Trainer
from openglip.regionclip import ConceptPool, load_region_teacher, load_rpn
from openglip.regionclip.config import PretrainConfig
from openglip.regionclip.data import RegionCaptionDataset, shapes_caption_data
from openglip.regionclip.tasks import PretrainTask
from openglip.regionclip.train import default_train_config
out, concepts, teacher, rpn = sys.argv[1], sys.argv[3], sys.argv[4], sys.argv[5]
cfg = PretrainConfig(backbone="tiny_cnn", pretrained=False, fpn_channels=16, roi_size=3, head_dim=32, embed_dim=16,
                     image_size=64, epoch_size=16, concepts=concepts, teacher=teacher, rpn=rpn, regions_per_image=4)
task = PretrainTask(cfg, pool=ConceptPool.load(concepts), text=HashText(16), teacher=load_region_teacher(teacher),
                    rpn=load_rpn(rpn))
data = RegionCaptionDataset(shapes_caption_data(16, image_size=64, seed=21), image_size=64)
tc = default_train_config("pretrain", out, max_steps=3, batch_size=2, checkpoint_every=0, log_every=1, warmup_steps=0)
trainer = Trainer(task, tc, data, device="cpu")
trainer.fit()
torch.save({k: v.clone() for k, v in trainer.model.state_dict().items()}, f"{out}/rank{trainer.dist.rank}.pt")
"""


def test_pretraining_under_torchrun_keeps_two_ranks_equal(parts, tmp_path):
    script = tmp_path / "ddp_pretrain.py"
    script.write_text(DDP_PRETRAIN)
    repo = str(Path(__file__).resolve().parents[1])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
           str(tmp_path), repo, parts["concepts"], parts["teacher"], parts["rpn"]]  # fmt: skip
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    a = torch.load(tmp_path / "rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # gradients were averaged
    fresh = load_file(str(tmp_path / "model.safetensors"))
    assert all(torch.equal(fresh[k], a[k]) for k in fresh)  # rank 0 exported what both ranks hold
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and all(
        r["region_text"] > 0 for r in rows
    )  # rank 0 logs alone
