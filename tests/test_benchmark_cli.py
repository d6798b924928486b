"""``openglip benchmark ...`` end to end on the shapes-world fixtures (``openglip data shapes --format ...``) with
the tiny model: every protocol prints its table and writes its results; an ODinW run that is killed continues
where it stopped; the README's benchmark commands run as written (paths and sizes swapped for tiny ones)."""

from __future__ import annotations

import json
import math
import re
import shlex
from pathlib import Path

import pytest

from openglip.cli import main
from openglip.data.odinw import find_odinw_datasets, read_odinw_split
from openglip.protocols.common import ovcoco_split
from openglip.protocols.odinw import OdinwPlan, run_odinw

REPO = Path(__file__).resolve().parents[1]
TINY_TUNE = ["max_steps=1", "batch_size=2", "train_min_sizes=(64,)", "train_max_size=96"]


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    root = tmp_path_factory.mktemp("formats")
    for fmt in ("odinw", "lvis", "flickr", "refcoco", "ovcoco"):
        images = "5" if fmt == "lvis" else "3"  # 5 images hold rare, common and frequent categories
        argv = [
            "data",
            "shapes",
            "--format",
            fmt,
            "--out",
            str(root / fmt),
            "--images",
            images,
            "--size",
            "64",
        ]
        assert main(argv) == 0
    lvis = json.loads((root / "lvis" / "lvis_v1_val.json").read_text())
    frequency = {c["id"]: c["frequency"] for c in lvis["categories"]}
    assert {frequency[a["category_id"]] for a in lvis["annotations"]} == {"r", "c", "f"}
    return root


def test_shapes_formats_have_each_layout(fixtures):
    datasets = find_odinw_datasets(fixtures / "odinw")
    assert len(datasets) >= 5 and all(set(d.splits) == {"train", "valid", "test"} for d in datasets)
    raw = json.loads((datasets[0].splits["test"]).read_text())
    assert (
        raw["categories"][0]["id"] == 0 and raw["categories"][0]["supercategory"] == "none"
    )  # Roboflow's extra
    coco, _ = read_odinw_split(datasets[0], "test")
    assert coco["categories"][0]["id"] == 1 and len(coco["images"]) == 3
    vocabularies = {tuple(c["name"] for c in read_odinw_split(d, "test")[0]["categories"]) for d in datasets}
    assert len(vocabularies) == len(datasets)  # a different category subset per dataset
    lvis = json.loads((fixtures / "lvis" / "lvis_v1_val.json").read_text())
    assert {c["frequency"] for c in lvis["categories"]} == {"r", "c", "f"}
    assert all("neg_category_ids" in im and "coco_url" in im for im in lvis["images"])
    flickr = json.loads((fixtures / "flickr" / "final_flickr_separateGT_test.json").read_text())
    assert all(im["tokens_positive_eval"] for im in flickr["images"])
    refcoco = json.loads((fixtures / "refcoco" / "final_refcoco_val.json").read_text())
    assert len(refcoco["annotations"]) == len(refcoco["images"])


@pytest.mark.parametrize(
    ("protocol", "args", "keys"),
    [
        ("lvis", ["lvis/lvis_v1_val.json"], ["AP", "APr", "APc", "APf"]),
        ("flickr", ["flickr/final_flickr_separateGT_test.json", "--protocol", "merged"], ["R@1", "R@10"]),
        ("refcoco", ["refcoco/final_refcoco_val.json"], ["refcoco_val/P@1"]),
        (
            "ovcoco",
            ["ovcoco/annotations.coco.json", "--split", "ovcoco/split.json"],
            ["novel/AP50", "base/AP50"],
        ),
    ],
)
def test_benchmark_commands_print_tables(fixtures, tiny_checkpoint, tmp_path, capsys, protocol, args, keys):
    args = [str(fixtures / a) if "/" in a else a for a in args]
    code = main(
        [
            "benchmark",
            protocol,
            *args,
            "--weights",
            str(tiny_checkpoint),
            "--out",
            str(tmp_path),
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert printed.startswith("**") and "| --- |" in printed
    metrics = json.loads((tmp_path / f"{protocol}.json").read_text())["metrics"]
    for key in keys:
        assert 0.0 <= metrics[key] <= 1.0 and not math.isnan(metrics[key]), key
    assert (tmp_path / f"{protocol}.md").read_text().strip() == printed.strip()


def test_benchmark_errors_are_one_line(fixtures, tiny_checkpoint, tmp_path, capsys):
    assert main(["benchmark", "odinw", str(tmp_path), "--weights", str(tiny_checkpoint)]) == 2
    assert "no ODinW dataset found" in capsys.readouterr().err
    code = main(["benchmark", "odinw", str(fixtures / "odinw"), "--weights", str(tiny_checkpoint), "--shots", "1",
                 "--mode", "bogus"])  # fmt: skip
    assert code == 2 and "unknown; choose from prompt, linear, full, wise, replay" in capsys.readouterr().err
    code = main(
        [
            "benchmark",
            "lvis",
            str(fixtures / "ovcoco" / "annotations.coco.json"),
            "--weights",
            str(tiny_checkpoint),
        ]
    )
    assert code == 2 and "frequency" in capsys.readouterr().err


def test_odinw_says_which_split_each_dataset_was_scored_on(fixtures, tiny_checkpoint, tmp_path, capsys):
    """Issue 23.5: a dataset without a test file is scored on valid, and the log, the table and the JSON say so."""
    import shutil

    root = tmp_path / "odinw"
    for name in ("Circles", "Stars"):
        shutil.copytree(fixtures / "odinw" / name, root / name)
    shutil.rmtree(root / "Stars" / "test")
    argv = [
        "benchmark",
        "odinw",
        str(root),
        "--weights",
        str(tiny_checkpoint),
        "--out",
        str(tmp_path / "out"),
    ]
    assert main([*argv, "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert "odinw: Stars has no test split; it is scored on its valid split" in captured.err
    table = (tmp_path / "out" / "odinw.md").read_text()
    assert (
        "| Stars (valid split) |" in table and "| Circles |" in table and "test split unless marked" in table
    )
    report = json.loads((tmp_path / "out" / "odinw.json").read_text())
    assert report["summary"]["splits"] == {"Circles": "test", "Stars": "valid"}
    assert report["datasets"]["Stars"]["zero_shot"]["split"] == "valid"


def test_ovcoco_without_split_on_a_non_coco_file_names_the_default_split(fixtures, tiny_checkpoint, capsys):
    """Issue 23.5: without --split the error blames the default COCO split, not a split file never given."""
    argv = ["benchmark", "ovcoco", str(fixtures / "ovcoco" / "annotations.coco.json")]
    assert main([*argv, "--weights", str(tiny_checkpoint), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert (
        "wrong split file" not in err
        and "OVR-CNN's 48 base / 17 novel COCO split" in err
        and "--split" in err
    )


def test_killed_odinw_run_continues_where_it_stopped(fixtures, tiny_checkpoint, tmp_path):
    plan = OdinwPlan(
        shots=(1,), seeds=(3,), modes=("prompt", "full"), overrides=tuple(TINY_TUNE), device="cpu"
    )
    datasets = ["Circles", "Stars"]
    done: list[tuple[str, str]] = []

    def kill_after_three(name, unit, result):
        done.append((name, unit))
        assert 0.0 <= result["AP"] <= 1.0 and result["test_images"] == 3
        if len(done) == 3:
            raise KeyboardInterrupt  # as if the process were killed after the third unit

    with pytest.raises(KeyboardInterrupt):
        run_odinw(
            tiny_checkpoint,
            fixtures / "odinw",
            tmp_path,
            datasets=datasets,
            plan=plan,
            on_unit=kill_after_three,
        )
    first = list(done)
    done.clear()
    result = run_odinw(tiny_checkpoint, fixtures / "odinw", tmp_path, datasets=datasets, plan=plan,
                       on_unit=lambda name, unit, _: done.append((name, unit)))  # fmt: skip
    everything = {(d, u) for d in datasets for u in ("zero_shot", "prompt_1shot_seed3", "full_1shot_seed3")}
    assert len(first) == 3 and not set(first) & set(done) and set(first) | set(done) == everything
    assert set(result["datasets"]) == set(datasets) and all(len(v) == 3 for v in result["datasets"].values())
    table = (tmp_path / "odinw.md").read_text()
    assert "| Circles |" in table and "mean (2 datasets)" in table and "prompt 1-shot" in table
    assert not (tmp_path / "runs" / "Circles" / "full_1shot_seed3").exists()  # tuned weights are not kept


def _readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Benchmarks", 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#", 1)[0].strip()
            if line.startswith("openglip "):
                commands.append(line)
    return commands


def test_readme_benchmark_commands_run(fixtures, tiny_checkpoint, tmp_path, monkeypatch, capsys):
    """Each command of the README's Benchmarks section runs, with the official files replaced by the shapes
    fixtures and the tiny checkpoint, and the few-shot grid cut to one tiny run."""
    commands = _readme_commands()
    # the paper's OV-COCO file names COCO categories: give the shapes fixture COCO names
    coco = json.loads((fixtures / "ovcoco" / "annotations.coco.json").read_text())
    names = list(ovcoco_split())
    for c in coco["categories"]:
        c["name"] = names[c["id"] - 1]
    (fixtures / "ovcoco" / "coco_named.json").write_text(json.dumps(coco))
    assert any(
        c.startswith(f"openglip benchmark {p}")
        for c in commands
        for p in ("odinw", "lvis", "flickr", "refcoco", "ovcoco")
    )
    swaps = {
        "glip_tiny_model_o365_goldg.pth": str(tiny_checkpoint),
        "glip_t.safetensors": str(tiny_checkpoint),
        "runs/shapes/model.safetensors": str(tiny_checkpoint),
        "DATASET/odinw": str(fixtures / "odinw"),
        "DATASET/coco/annotations/lvis_v1_minival_inserted_image_name.json": str(
            fixtures / "lvis" / "lvis_v1_val.json"
        ),
        "DATASET/mdetr_annotations/final_flickr_separateGT_test.json": str(
            fixtures / "flickr" / "final_flickr_separateGT_test.json"
        ),
        "DATASET/mdetr_annotations/final_refcoco_val.json": str(
            fixtures / "refcoco" / "final_refcoco_val.json"
        ),
        "DATASET/mdetr_annotations/final_refcoco_testA.json": str(
            fixtures / "refcoco" / "final_refcoco_val.json"
        ),
        "DATASET/coco/annotations/instances_val2017.json": str(fixtures / "ovcoco" / "coco_named.json"),
        "DATASET/coco/val2017": str(fixtures / "ovcoco"),
        "DATASET/coco": str(fixtures / "lvis"),
        "DATASET/flickr30k/flickr30k-images": str(fixtures / "flickr"),
        "DATASET/coco/train2014": str(fixtures / "refcoco"),
        "1,3,5,10": "1",
        "prompt,linear,full": "prompt",
    }
    monkeypatch.chdir(tmp_path)
    ran = 0
    for command in commands:
        words = shlex.split(command)[1:]
        words = [swaps.get(w, w) for w in words]
        if words[:1] == ["data"]:
            words += ["--images", "2", "--size", "64"]
        if words[:2] == ["benchmark", "odinw"]:
            words = [w for w in words if not re.fullmatch(r"max_steps=\d+", w)]
            if "--seeds" in words:
                words[words.index("--seeds") + 1] = "1"
            words += ["--datasets", "Circles", "--device", "cpu", *TINY_TUNE]
        elif words[:1] == ["benchmark"]:
            words += ["--device", "cpu"]
        assert main(words) == 0, command
        ran += 1
    assert ran == len(commands) >= 10
    capsys.readouterr()
