"""``openglip label`` (GLIP's teacher step) and the self-training loop built on it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from openglip.data.captions import write_captions
from openglip.data.odvg import read_odvg
from openglip.engine.label import label_pairs
from openglip.errors import UsageError
from openglip.prompts import rule_based_noun_phrases

ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}


@pytest.fixture()
def caption_set(tmp_path):
    """Six shapes images on disk with their listing captions, as an image-caption JSONL."""
    from openglip.shapes import ShapesWorld

    world = ShapesWorld(split="val", seed=11, image_size=96)
    (tmp_path / "imgs").mkdir()
    pairs = []
    for i in range(6):
        s = world.sample(i)
        path = tmp_path / "imgs" / f"{i}.png"
        Image.fromarray(s.image).save(path)
        pairs.append((str(path), s.captions[1].caption))
    captions = tmp_path / "captions.jsonl"
    write_captions(captions, [(f"{i}.png", c) for i, (_, c) in enumerate(pairs)])
    return tmp_path, captions, pairs


def _keys(path: Path) -> list[tuple[str, str]]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [(r["filename"], r["grounding"]["caption"]) for r in rows]


def test_label_writes_odvg_that_the_training_reader_accepts(caption_set, tiny_detector):
    root, _, pairs = caption_set
    out = root / "pseudo.odvg.jsonl"
    stats = label_pairs(pairs, tiny_detector, out, extractor=rule_based_noun_phrases, threshold=0.2)
    assert stats.labelled == 6 and stats.boxes > 0
    records, _, report = read_odvg(out, root)
    assert len(records) >= 1 and report.counts.get("missing_image", 0) == 0
    for rec in records:
        assert rec.caption and len(rec.boxes) == len(rec.spans) > 0
        for box, spans in zip(rec.boxes, rec.spans):
            s, e = spans[0]
            assert rec.caption[s:e] in rec.caption and (box[2:] > box[:2]).all()
    raw = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(r["score"] >= 0.2 for rec in raw for r in rec["grounding"]["regions"])


class FlakyTeacher:
    """A detector that dies (like a killed process) on its second batch."""

    calls = 0

    def __init__(self, detector):
        self.detector = detector

    def predict(self, images, prompt=None, **kwargs):
        FlakyTeacher.calls += 1
        if FlakyTeacher.calls == 2:
            raise KeyboardInterrupt
        return self.detector.predict(images, prompt, **kwargs)


def test_killed_and_rerun_labelling_yields_each_pair_exactly_once(caption_set, tiny_detector):
    root, _, pairs = caption_set
    out = root / "pseudo.odvg.jsonl"
    with pytest.raises(KeyboardInterrupt):
        label_pairs(pairs, FlakyTeacher(tiny_detector), out, extractor=rule_based_noun_phrases, batch_size=2)
    assert len(_keys(out)) == 2  # the first batch survived
    with open(out, "a") as f:
        f.write('{"filename": "imgs/4.png", "height": 96, "wid')  # a line cut by the kill
    stats = label_pairs(pairs, tiny_detector, out, extractor=rule_based_noun_phrases, batch_size=2)
    assert stats.skipped_done == 2 and stats.labelled == 4
    keys = _keys(out)
    assert len(keys) == len(set(keys)) == 6
    again = label_pairs(pairs, tiny_detector, out, extractor=rule_based_noun_phrases)
    assert again.labelled == 0 and len(_keys(out)) == 6


def test_two_process_torchrun_labelling_merges_shards(caption_set, tiny_checkpoint):
    """The README's ``torchrun --nproc_per_node N -m openglip.cli label ...``: every rank labels its part, the
    parts are merged into one file."""
    root, captions, _ = caption_set
    out = root / "merged.odvg.jsonl"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "openglip.cli", "label", "--images", str(root / "imgs"), "--captions", str(captions),
           "--teacher", str(tiny_checkpoint), "--out", str(out), "--threshold", "0.2", "--device", "cpu",
           "--extractor", "rule"]  # fmt: skip
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    keys = _keys(out)
    assert len(keys) == len(set(keys)) == 6
    assert not list(root.glob("*.part")) and not list(root.glob("*.part.lock"))


@pytest.mark.slow
def test_zero_shot_teacher_boxes_are_inside_the_image_with_probability_scores(chelsea, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENGLIP_CACHE", str(tmp_path))
    from openglip.teachers.zero_shot import ZeroShotTeacher

    teacher = ZeroShotTeacher(device="cpu")
    dets = teacher.predict(chelsea, ["cat", "dog", "cup"], box_threshold=0.0)
    h, w = chelsea.shape[:2]
    assert len(dets) > 0 and dets.image_size == (h, w)
    assert (dets.xyxy >= 0).all() and (dets.xyxy[:, [0, 2]] <= w).all() and (dets.xyxy[:, [1, 3]] <= h).all()
    assert ((dets.scores >= 0) & (dets.scores <= 1)).all()
    best = {p: float(dets.scores[dets.phrases == p].max(initial=0)) for p in ("cat", "dog", "cup")}
    assert best["cat"] > 0.5 > best["cup"]  # it knows a cat from a cup
    assert list(tmp_path.glob("imagenet-minilm-*.pt"))  # class embeddings cached on disk


def test_self_training_loop_on_tiny_data(caption_set, tiny_checkpoint, tmp_path):
    """Teacher labels a caption set; a glip_nano student trains on gold shapes + the pseudo labels; both are
    evaluated."""
    from openglip.cli import main
    from openglip.shapes import write_dataset

    root, captions, _ = caption_set
    gold = write_dataset(tmp_path / "gold", num_images=6, split="train", image_size=96)
    pseudo = root / "pseudo.odvg.jsonl"
    assert main(["label", "--images", str(root / "imgs"), "--captions", str(captions), "--teacher",
                 str(tiny_checkpoint), "--out", str(pseudo), "--threshold", "0.2", "--extractor", "rule"]) == 0  # fmt: skip
    run = tmp_path / "student"
    code = main(["train", "glip_nano", "--data", f"{gold['coco']},{pseudo}", "--out", str(run), "--device", "cpu",
                 "max_steps=2", "batch_size=2", "train_min_sizes=(96,)", "train_max_size=128", "freeze=text",
                 "checkpoint_every=0", "min_size=96", "max_size=128", "num_negatives=5"])  # fmt: skip
    assert code == 0 and (run / "model.safetensors").exists()
    weights = str(run / "model.safetensors")
    for data, key in ((str(gold["coco"]), "AP50"), (str(pseudo), "R@1")):
        out = tmp_path / f"{key}.json"
        assert main(["evaluate", "--weights", weights, "--data", data, "--out", str(out)]) == 0
        value = json.loads(out.read_text())["metrics"][key]
        # both are defined here (gold boxes; pseudo records with regions): None (NaN) must fail
        assert value is not None and 0.0 <= value <= 1.0, (key, value)


class WholeImageTeacher:
    """A predictor that finds each phrase as one box over the whole image it is given, in that image's pixels
    (as every predictor does with an image object: it cannot know the file was bigger)."""

    def __init__(self):
        self.calls = []

    def predict(self, images, prompt=None, *, prompts=None, box_threshold=0.3, batch_size=4):
        from openglip.images import load_image
        from openglip.structures import Detections

        self.calls.append([list(p) for p in prompts])
        out = []
        for image, phrases in zip(images, prompts):
            _, (h, w) = load_image(image)
            n = len(phrases)
            out.append(Detections(np.tile([0.0, 0.0, w, h], (n, 1)), np.full(n, 0.9), np.arange(n), phrases,
                                  prompt_phrases=tuple(phrases), image_size=(h, w)))  # fmt: skip
        return out


def test_label_boxes_of_huge_images_are_in_original_pixels(tmp_path):
    """Bug: images above 4096 px are reduced when read; the pseudo boxes stopped at 4072x3048 while the record
    said 12000x9000."""
    path = tmp_path / "huge.png"
    Image.new("L", (12000, 9000), 128).save(path, compress_level=1)  # solid colour: a small file
    out = tmp_path / "pseudo.odvg.jsonl"
    label_pairs([(str(path), "a grey wall")], WholeImageTeacher(), out, extractor=rule_based_noun_phrases)
    (rec,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert (rec["width"], rec["height"]) == (12000, 9000)
    (region,) = rec["grounding"]["regions"]
    assert region["phrase"] == "grey wall"
    # measured 0 px (1 and 2 threads); 3 px of 12000 allows a box decoded at the model's scale and rescaled
    np.testing.assert_allclose(region["bbox"], [0, 0, 12000, 9000], atol=3)  # beyond 4096, where the wall is


def test_label_skips_captions_without_a_noun_phrase_and_duplicates(caption_set, capsys):
    """Bugs: one caption without a noun phrase stopped the whole run without naming it (and every rerun stopped
    there); a pair listed twice was labelled twice; warnings went to stdout."""
    root, _, pairs = caption_set
    no_phrase = (pairs[1][0], "of the and with")
    todo = [pairs[0], no_phrase, pairs[0], (str(root / "gone.png"), "a red circle"), *pairs[2:4]]
    teacher = WholeImageTeacher()
    out = root / "pseudo.odvg.jsonl"
    stats = label_pairs(todo, teacher, out, extractor=rule_based_noun_phrases, batch_size=2)
    assert (stats.labelled, stats.no_phrase, stats.duplicates, stats.unreadable) == (3, 1, 1, 1)
    captured = capsys.readouterr()
    assert captured.out == ""  # warnings go to stderr
    (line,) = [x for x in captured.err.splitlines() if "no noun phrase" in x]
    assert pairs[1][0] in line and "'of the and with'" in line
    assert len(_keys(out)) == len(set(_keys(out))) == 3
    again = label_pairs(todo, teacher, out, extractor=rule_based_noun_phrases)  # a rerun gets past it too
    assert again.labelled == 0 and again.skipped_done == 3 and again.no_phrase == 1


def test_repeated_phrases_are_grounded_once(caption_set):
    root, _, pairs = caption_set
    teacher = WholeImageTeacher()
    out = root / "p.jsonl"
    label_pairs([(pairs[0][0], "a cat. a dog. a Cat.")], teacher, out, extractor=rule_based_noun_phrases)
    assert teacher.calls == [[["cat", "dog"]]]
    (rec,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["tokens_positive"] for r in rec["grounding"]["regions"]] == [[[2, 5]], [[9, 12]]]


def test_a_second_label_run_on_the_same_out_is_refused(caption_set, tmp_path):
    """Bug: two concurrent ``label`` runs on one --out labelled every pair twice."""
    import fcntl

    root, _, pairs = caption_set
    out = root / "pseudo.odvg.jsonl"
    with open(root / "pseudo.odvg.jsonl.lock", "a") as held:  # another run is writing (flock: per open file)
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(UsageError, match=r"another openglip label run is writing pseudo\.odvg\.jsonl"):
            label_pairs(pairs, WholeImageTeacher(), out, extractor=rule_based_noun_phrases)
    assert not out.exists()
    stats = label_pairs(pairs[:1], WholeImageTeacher(), out, extractor=rule_based_noun_phrases)  # free again
    assert stats.labelled == 1
    assert not (root / "pseudo.odvg.jsonl.lock").exists()  # issue 23.8: a finished run leaves no lock file
