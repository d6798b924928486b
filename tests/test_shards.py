"""WebDataset shards: conversion (every record in exactly one shard), reading split by rank and data-loader
worker, exact resume (sampler and trainer), training from shards, and ``openglip label`` reading and writing
shards."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from openglip.cli import main
from openglip.config import GLIPTaskConfig, TrainConfig, tiny
from openglip.data.captions import write_captions
from openglip.data.datasets import GroundingDataset
from openglip.data.odvg import read_odvg
from openglip.data.shard_writing import write_shards
from openglip.data.shards import MANIFEST, ShardDataset, ShardSampler, ShardSet
from openglip.data.transforms import to_model_input
from openglip.errors import DataError, UsageError
from openglip.shapes import write_dataset


@pytest.fixture(scope="module")
def shapes_files(tmp_path_factory):
    """A 14-image shapes dataset on disk (COCO, ODVG detection and grounding files) plus a caption JSONL."""
    root = tmp_path_factory.mktemp("shapes")
    paths = write_dataset(root, num_images=14, image_size=64, seed=3)
    grounding = [json.loads(line) for line in paths["grounding"].read_text().splitlines()]
    write_captions(
        root / "captions.jsonl", [(str(root / g["filename"]), g["grounding"]["caption"]) for g in grounding]
    )
    return root, paths


@pytest.fixture(scope="module")
def shards(shapes_files, tmp_path_factory):
    _, paths = shapes_files
    out = tmp_path_factory.mktemp("shards") / "train"
    assert main(["data", "shard", str(paths["coco"]), str(paths["grounding"]), "--out", str(out),
                 "--shard-size", "3"]) == 0  # fmt: skip
    return out


def _to_tensor():
    cfg = tiny()
    return partial(to_model_input, mean=cfg.pixel_mean, std=cfg.pixel_std, bgr=cfg.bgr)


def test_every_record_lands_in_exactly_one_shard(shapes_files, shards):
    import webdataset as wds

    root, paths = shapes_files
    manifest = json.loads((shards / MANIFEST).read_text())
    grounding_lines = len(paths["grounding"].read_text().splitlines())
    assert manifest["total"] == 14 + grounding_lines
    assert manifest["kinds"] == {"detection": 14, "grounding": grounding_lines}
    assert [s["count"] for s in manifest["shards"]][:-1] == [3] * (len(manifest["shards"]) - 1)
    assert sum(s["count"] for s in manifest["shards"]) == manifest["total"]
    # a plain WebDataset pipeline reads every sample once, keys 0..N-1, with the image bytes of the files
    keys, images = [], {}
    for sample in wds.WebDataset(sorted(str(p) for p in shards.glob("shard-*.tar")), shardshuffle=False):
        keys.append(int(sample["__key__"]))
        record = json.loads(sample["json"])
        images.setdefault(record["filename"], set()).add(sample["png"])
    assert sorted(keys) == list(range(manifest["total"])) and len(set(keys)) == len(keys)
    for name, blobs in images.items():
        assert blobs == {(root / name).read_bytes()}
    # the random-access reader agrees, and detection records keep their category names
    shard_set = ShardSet(shards)
    record, data, ext = shard_set.read(5)
    assert ext == "png" and data == (root / record["filename"]).read_bytes()
    for inst in record["detection"]["instances"]:
        assert manifest["categories"][inst["label"]] == inst["category"]


def test_shard_items_equal_the_file_items(shapes_files, shards):
    """The training item of a sample read from shards is the item of the same record read from the files."""
    _, paths = shapes_files
    from openglip.data.coco import read_coco

    records, categories, _ = read_coco(paths["coco"])
    files = GroundingDataset(records, categories, transform=None, to_tensor=_to_tensor(), num_negatives=5)
    sharded = ShardDataset(shards, transform=None, to_tensor=_to_tensor(), num_negatives=5)
    assert sharded.categories == categories
    for index in (0, 7, 13):
        (a, ta), (b, tb) = files[(2, index)], sharded[(2, index)]
        assert torch.equal(a, b)
        assert ta["caption"] == tb["caption"] and ta["spans"] == tb["spans"]
        # the same float32 values through both paths: measured 0, assert_allclose's default rtol 1e-7
        np.testing.assert_allclose(ta["boxes"], tb["boxes"])


class _Probe(Dataset):
    """Returns (epoch, index, worker id) so that the test can see who read what."""

    def __getitem__(self, key):
        info = torch.utils.data.get_worker_info()
        return key[0], key[1], -1 if info is None else info.id


def _read(sampler, batches: int, workers: int) -> list[tuple[int, int, int]]:
    loader = DataLoader(_Probe(), batch_size=sampler.batch_size, sampler=sampler, num_workers=workers,
                        collate_fn=lambda items: items)  # fmt: skip
    out, it = [], iter(loader)
    for _ in range(batches):
        out.extend(next(it))
    return out


def test_two_ranks_by_two_workers_read_disjoint_shards_covering_everything():
    counts = [5, 3, 4, 5, 2, 4, 3, 5, 1]  # 9 shards of uneven sizes, 32 samples
    starts = np.cumsum([0, *counts[:-1]])
    shard_of = {i: s for s in range(len(counts)) for i in range(starts[s], starts[s] + counts[s])}
    readers = {}
    seen = []
    for rank in range(2):
        sampler = ShardSampler(counts, batch_size=2, num_workers=2, seed=5, rank=rank, world_size=2)
        for epoch, index, worker in _read(sampler, batches=24, workers=2):
            if epoch == 0:
                seen.append(index)
                readers.setdefault(shard_of[index], set()).add((rank, worker))
    assert sorted(seen) == list(range(sum(counts)))  # every sample of epoch 0 once, across ranks and workers
    assert all(len(r) == 1 for r in readers.values()), readers  # each shard read by one worker of one rank
    assert {r for rs in readers.values() for r in rs} == {(0, 0), (0, 1), (1, 0), (1, 1)}
    with pytest.raises(DataError, match="cannot be split"):
        ShardSampler(counts[:3], batch_size=2, num_workers=2, world_size=2)


def test_resumed_sampler_continues_the_same_order():
    counts = [4, 6, 3, 5, 2]
    full = _read(ShardSampler(counts, batch_size=3, num_workers=2, seed=1), batches=12, workers=2)
    for consumed in (3, 9, 15):  # batches already consumed: 1, 3, 5
        resumed = ShardSampler(counts, batch_size=3, num_workers=2, seed=1, start=consumed)
        got = _read(resumed, batches=12 - consumed // 3, workers=2)
        assert [k[:2] for k in got] == [k[:2] for k in full[consumed:]]
    with pytest.raises(ValueError, match="multiple of the batch size"):
        ShardSampler(counts, batch_size=3, start=4)


def test_training_from_shards_resumes_exactly(shards, tmp_path, monkeypatch):
    from openglip.data.build import build_train_dataset
    from openglip.engine.trainer import Trainer
    from openglip.tasks import GLIPTask

    def run(out: Path, resume: bool) -> list[float]:
        cfg = TrainConfig(data=str(shards), out_dir=str(out), max_steps=4, batch_size=2, log_every=1,
                          checkpoint_every=2, ema_decay=0, warmup_steps=1, train_min_sizes=(64,), train_max_size=96)  # fmt: skip
        dataset = build_train_dataset(tiny(), cfg, GLIPTaskConfig(num_negatives=5))
        assert isinstance(dataset, ShardDataset)
        torch.manual_seed(0)
        Trainer(GLIPTask(tiny(), cfg), cfg, dataset, device="cpu", resume=resume).fit()
        return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]

    straight = run(tmp_path / "a", False)
    # the same run dies while loading its 5th sample (step 3), after the step-2 checkpoint, and is resumed
    calls, original = [], ShardDataset.__getitem__

    def dies(self, key):
        calls.append(key)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return original(self, key)

    monkeypatch.setattr(ShardDataset, "__getitem__", dies)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", False)
    monkeypatch.setattr(ShardDataset, "__getitem__", original)
    resumed = run(tmp_path / "b", True)
    assert len(straight) == 4 and all(np.isfinite(straight))
    assert resumed == straight


def test_caption_shards_are_refused_for_training(shapes_files, tmp_path):
    root, _ = shapes_files
    out = tmp_path / "captions"
    write_shards([root / "captions.jsonl"], out, shard_size=4, progress=False)
    with pytest.raises(DataError, match="pseudo-label them"):
        ShardDataset(out, transform=None, to_tensor=_to_tensor())
    with pytest.raises(UsageError, match="already holds shards"):
        write_shards([root / "captions.jsonl"], out, progress=False)
    assert main(["data", "shard", str(root / "missing.json"), "--out", str(tmp_path / "x")]) == 2
    (tmp_path / "empty").mkdir()
    assert main(["train", "tiny", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "run")]) == 2


def test_label_reads_caption_shards_and_writes_shards(shapes_files, tmp_path, tiny_checkpoint):
    """The README's ``openglip data shard captions.jsonl --out caption_shards/`` and ``openglip label --captions
    caption_shards/ ... --out pseudo_shards/``."""
    root, _ = shapes_files
    captions = tmp_path / "caption_shards"
    assert (
        main(["data", "shard", str(root / "captions.jsonl"), "--out", str(captions), "--shard-size", "4"])
        == 0
    )
    out = tmp_path / "labelled"
    code = main(["label", "--captions", str(captions), "--teacher", str(tiny_checkpoint), "--out", f"{out}/",
                 "--threshold", "0.0", "--device", "cpu", "--extractor", "rule", "--shard-size", "5"])  # fmt: skip
    assert code == 0
    manifest = json.loads((out / MANIFEST).read_text())
    pairs = len((root / "captions.jsonl").read_text().splitlines())
    assert manifest["total"] == pairs == manifest["kinds"]["grounding"]
    labelled = ShardSet(out)
    for index, record in labelled.records():
        assert record["kind"] == "grounding" and record["grounding"]["regions"]
        data = labelled.read(index)[1]
        assert data == (root / record["filename"]).read_bytes()  # the caption shard's image bytes, unchanged
    # the labelled shards train; a rerun labels nothing new and rebuilds the same shards
    items = ShardDataset(out, transform=None, to_tensor=_to_tensor())
    image, target = items[(0, 0)]
    assert image.shape[0] == 3 and len(target["boxes"]) == len(target["spans"]) > 0
    assert main(["label", "--captions", str(captions), "--teacher", str(tiny_checkpoint), "--out", str(out),
                 "--shards", "--threshold", "0.0", "--device", "cpu", "--extractor", "rule"]) == 0  # fmt: skip
    assert json.loads((out / MANIFEST).read_text())["total"] == pairs
    # JSONL output from shard input names images as the caption shards do
    jsonl = tmp_path / "pseudo.odvg.jsonl"
    assert main(["label", "--captions", str(captions), "--teacher", str(tiny_checkpoint), "--out", str(jsonl),
                 "--threshold", "0.0", "--device", "cpu", "--extractor", "rule"]) == 0  # fmt: skip
    records, _, _ = read_odvg(jsonl, root)
    assert len(records) == pairs


def test_a_listed_shard_missing_or_cut_is_refused_before_training(shards, tmp_path, capsys):
    """Issue 23.6: every shard the manifest lists is checked (present, its size) when the set is opened, and
    ``openglip train`` stops with one line and exit 2 before the first step."""
    import shutil

    broken = tmp_path / "shards"
    shutil.copytree(shards, broken)
    manifest = json.loads((broken / MANIFEST).read_text())
    names = [s["name"] for s in manifest["shards"]]
    assert len(names) >= 4 and all(
        s["bytes"] == (broken / s["name"]).stat().st_size for s in manifest["shards"]
    )
    (broken / names[-1]).unlink()  # the last one: a sampler would reach it last, if at all
    with pytest.raises(DataError, match=rf"1 of the {len(names)} shards .* {names[-1]} is missing"):
        ShardSet(broken)
    cut = broken / names[1]
    cut.write_bytes(cut.read_bytes()[:1024])
    with pytest.raises(DataError, match=rf"{names[1]} has 1024 bytes, not \d+.*{names[-1]} is missing"):
        ShardSet(broken)
    out = tmp_path / "run"
    code = main(["train", "tiny", "--data", str(broken), "--out", str(out), "--device", "cpu", "max_steps=2",
                 "batch_size=2", "train_min_sizes=(64,)", "train_max_size=96"])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("openglip: error:") and names[-1] in err[0]
    assert not (out / "metrics.jsonl").exists()


def test_train_command_streams_shards_with_workers(shards, tmp_path):
    """The README's ``openglip train ... --data shards/`` with two data-loader workers."""
    out = tmp_path / "run"
    code = main(["train", "tiny", "--data", str(shards), "--out", str(out), "--device", "cpu", "max_steps=2",
                 "batch_size=2", "num_workers=2", "train_min_sizes=(64,)", "train_max_size=96", "num_negatives=5",
                 "log_every=1", "ema_decay=0"])  # fmt: skip
    assert code == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2] and all(
        np.isfinite(r["loss"]) for r in rows if "loss" in r
    )
    assert (out / "model.safetensors").exists()
