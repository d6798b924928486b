"""Fine-tuning that keeps zero-shot ability: WiSE-FT weight mixing and replay of pre-training-style data, from
``openglip tune`` and ``openglip train``."""

from __future__ import annotations

import json
import shlex
from functools import partial
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from openglip.checkpoints import read_checkpoint
from openglip.cli import main
from openglip.data.build import ReplayMix, read_annotations
from openglip.engine.sampler import ReplaySampler
from openglip.engine.wise import choose_alpha, interpolate
from openglip.errors import UsageError
from openglip.shapes import write_dataset
from openglip.tasks.tune import MODES, tune_config

README = Path(__file__).resolve().parents[1] / "README.md"
TINY_SHAPES = [
    "shapes_image_size=96",
    "shapes_epoch_size=16",
]  # the built-in's settings (openglip.shapes.ShapesConfig)
TINY_TUNE = ["max_steps=2", "batch_size=2", "train_min_sizes=(96,)", "train_max_size=128", "log_every=1",
             *TINY_SHAPES]  # fmt: skip


@pytest.fixture(scope="module")
def task_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("forget")
    target = write_dataset(root / "target", num_images=6, split="val", image_size=96, seed=5)["coco"]
    retain = write_dataset(root / "retain", num_images=3, split="train", image_size=96, seed=6)["coco"]
    return target, retain


def test_modes_are_offered_by_name():
    assert {"prompt", "linear", "full", "wise", "replay"} <= set(MODES)
    assert tune_config("wise")[1].wise_alpha == 0.5 and tune_config("full")[1].wise_alpha == 1.0


def test_interpolation_endpoints_are_bitwise_and_the_middle_is_the_mean():
    g = torch.Generator().manual_seed(0)
    start = {"w": torch.randn(5, 3, generator=g), "b": torch.tensor([-0.0, 1.0]), "n": torch.tensor(3)}
    tuned = {"w": torch.randn(5, 3, generator=g), "b": torch.tensor([0.0, 2.0]), "n": torch.tensor(7),
             "new": torch.ones(2)}  # fmt: skip
    zero, one = interpolate(start, tuned, 0.0), interpolate(start, tuned, 1.0)
    for k in ("w", "b"):
        assert zero[k].numpy().tobytes() == start[k].numpy().tobytes()  # -0.0 stays -0.0
        assert one[k].numpy().tobytes() == tuned[k].numpy().tobytes()
    # float32 lerp vs (a + b) / 2: measured 6e-8, allclose's defaults (rtol 1e-5)
    assert torch.allclose(interpolate(start, tuned, 0.5)["w"], (start["w"] + tuned["w"]) / 2)
    assert zero["n"] == 7 and torch.equal(zero["new"], tuned["new"])  # counters and new heads: fine-tuned's
    with pytest.raises(UsageError, match="between 0 and 1"):
        interpolate(start, tuned, 1.5)
    with pytest.raises(UsageError, match="cannot mix w"):
        interpolate(start, {"w": torch.zeros(3, 5)}, 0.5)


def test_automatic_alpha_keeps_the_retain_set_and_maximises_the_target():
    # target AP rises with alpha; retain AP falls: 0.8 at alpha 0, below 95% of it from alpha 0.4 on
    choice = choose_alpha(lambda a: 0.3 + 0.5 * a, lambda a: 0.8 - 0.2 * a, keep=0.95)
    assert choice.alpha == 0.2 and len(choice.rows) == 11
    assert all(r["ok"] == (r["retain_AP50"] >= 0.76) for r in choice.rows)
    # a flat target: the smallest alpha wins the tie; keep=0 lets alpha 1 through
    assert choose_alpha(lambda a: 0.5, lambda a: 1.0 - a).alpha == 0.0
    assert choose_alpha(lambda a: a, lambda a: float("nan"), keep=0.0).alpha == 1.0


class _Items(Dataset):
    def __init__(self, n, tag):
        self.n, self.tag = n, tag

    def __len__(self):
        return self.n

    def __getitem__(self, key):
        return self.tag


@pytest.mark.parametrize(("batch", "ratio"), [(8, 0.25), (4, 0.3), (6, 0.5)])
def test_replay_batches_hold_the_requested_ratio(batch, ratio):
    mix = ReplayMix(_Items(10, "target"), _Items(7, "replay"), ratio)
    sampler = ReplaySampler(mix.target_size, mix.replay_size, mix.replay_ratio, seed=3)
    loader = iter(DataLoader(mix, batch_size=batch, sampler=sampler, collate_fn=list))
    counts = [next(loader).count("replay") for _ in range(25)]
    for k, c in enumerate(counts):  # floor((k+1) B r) - floor(k B r): exactly B r when it is a whole number
        assert c == int((k + 1) * batch * ratio + 1e-9) - int(k * batch * ratio + 1e-9)
    assert sum(counts) == int(25 * batch * ratio + 1e-9)
    # the position alone decides: a sampler resumed at item 40 continues the same key sequence
    keys = [k for _, k in zip(range(80), ReplaySampler(10, 7, ratio, seed=3))]
    assert [k for _, k in zip(range(40), ReplaySampler(10, 7, ratio, seed=3, start=40))] == keys[40:]
    assert {i for _, i in keys if i >= 10} == set(range(10, 17))  # every replay item is drawn


def test_replay_mode_mixes_pretraining_data_into_tuning_batches(tiny_checkpoint, task_files, tmp_path):
    from openglip.data.build import with_replay
    from openglip.data.datasets import GroundingDataset
    from openglip.data.transforms import to_model_input
    from openglip.engine.trainer import Trainer
    from openglip.prompts import build_prompt
    from openglip.tasks.tune import TuneTask

    records, categories = read_annotations(task_files[0])
    _, model_cfg = read_checkpoint(tiny_checkpoint)
    cfg, tune_cfg = tune_config("replay", [*TINY_TUNE, "replay_data=shapes", "batch_size=4", "replay_ratio=0.25",
                                 "num_negatives=5"], out_dir=str(tmp_path))  # fmt: skip
    assert cfg.data_options == tuple(TINY_SHAPES)  # the built-in's settings travel with the run's config
    to_tensor = partial(to_model_input, mean=model_cfg.pixel_mean, std=model_cfg.pixel_std, bgr=model_cfg.bgr)
    target = GroundingDataset(records, categories, transform=None, to_tensor=to_tensor, fixed_prompt=True)
    dataset = with_replay(target, model_cfg, cfg, tune_cfg)
    task = TuneTask(model_cfg, cfg, tune_cfg, weights=str(tiny_checkpoint), categories=categories)
    trainer = Trainer(task, cfg, dataset, device="cpu")
    fixed = build_prompt(categories).caption
    loader = iter(trainer._loader())
    replayed = [sum(c != fixed for c in next(loader).captions) for _ in range(6)]
    assert replayed == [1] * 6  # 4 images a batch, a quarter of them replayed, in every batch
    with pytest.raises(UsageError, match="replay_data"):
        TuneTask(model_cfg, *tune_config("replay"), weights=str(tiny_checkpoint), categories=categories)


def _state(path):
    return read_checkpoint(path)[0]


def test_wise_cli_endpoints_are_the_starting_and_the_fine_tuned_model(tiny_checkpoint, task_files, tmp_path):
    out = tmp_path / "wise"
    base = ["tune", "--mode", "wise", "--weights", str(tiny_checkpoint), "--data", str(task_files[0]), "--out",
            str(out), "--device", "cpu", *TINY_TUNE, "lr=0.01"]  # fmt: skip
    assert main([*base, "--alpha", "0.5"]) == 0
    start, tuned, mixed = (
        _state(tiny_checkpoint),
        _state(out / "finetuned.safetensors"),
        _state(out / "model.safetensors"),
    )
    changed = [k for k in start if not torch.equal(start[k], tuned[k])]
    assert changed
    k = changed[0]
    # measured 0, allclose's defaults (rtol 1e-5)
    assert torch.allclose(mixed[k], (start[k] + tuned[k]) / 2)
    info = json.loads((out / "tune.json").read_text())
    assert info["mode"] == "wise" and info["wise"] == {"alpha": 0.5, "choice": "fixed"}
    # re-mixing a finished run needs no training: --resume with another alpha
    assert main([*base, "--resume", "--alpha", "0"]) == 0
    assert all(torch.equal(v, start[k]) for k, v in _state(out / "model.safetensors").items())
    assert main([*base, "--resume", "--alpha", "1"]) == 0
    assert all(torch.equal(v, tuned[k]) for k, v in _state(out / "model.safetensors").items())


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--alpha", "auto"], "--alpha auto needs --retain"),
        (["--alpha", "1.5"], "between 0 and 1"),
        (["--alpha", "half"], "must be a number between 0 and 1 or auto"),
        (["--retain", "x.json"], "only read with --alpha auto"),
        (["--alpha", "auto", "--retain", "missing.json"], "file not found"),
    ],
)
def test_wise_cli_bad_flags_are_one_line_errors(tiny_checkpoint, task_files, tmp_path, flags, words, capsys):
    argv = ["tune", "--mode", "wise", "--weights", str(tiny_checkpoint), "--data", str(task_files[0]), "--out",
            str(tmp_path / "x"), *flags, *TINY_TUNE]  # fmt: skip
    assert main(argv) == 2
    assert words in capsys.readouterr().err


def _readme_commands(title: str) -> list[str]:
    section = README.read_text().split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line.split("  #")[0].strip() for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def test_readme_forgetting_commands_run(tiny_checkpoint, task_files, tmp_path, monkeypatch):
    """The README's forgetting-aware fine-tuning commands, on tiny weights and data."""
    import shutil

    monkeypatch.chdir(tmp_path)
    shutil.copy(tiny_checkpoint, tmp_path / "base.safetensors")
    shutil.copytree(Path(task_files[0]).parent, tmp_path / "mine")
    shutil.copytree(Path(task_files[1]).parent, tmp_path / "kept")
    commands = _readme_commands("Fine-tune without forgetting")
    assert len(commands) == 4
    for line in commands:
        for readme, here in (("mine.coco.json", "mine/annotations.coco.json"), ("kept.coco.json",
                             "kept/annotations.coco.json"), ("train glip_nano", "train tiny")):  # fmt: skip
            line = line.replace(readme, here)
        argv = shlex.split(line)
        assert argv[0] == "openglip", line
        assert main([*argv[1:], *TINY_TUNE, "--device", "cpu"]) == 0, line
    auto = json.loads((tmp_path / "runs/mine_auto/wise.json").read_text())
    assert auto["choice"] == "auto" and [r["alpha"] for r in auto["rows"]] == [i / 10 for i in range(11)]
    assert json.loads((tmp_path / "runs/mine_replay/tune.json").read_text())["replay"]["ratio"] == 0.25
    task_cfg = json.loads((tmp_path / "runs/mine_train/config.json").read_text())["task"]
    assert task_cfg["replay_data"] == "shapes" and task_cfg["wise_alpha"] == 0.5
    assert (tmp_path / "runs/mine_train/finetuned.safetensors").exists()
