"""The README stays true: every ``openglip`` command in it parses, every section with code names the tests that
run it (and those tests exist and read the README), and the sections no other test runs (Set up and run,
Detect, Train and evaluate, Pseudo-label, GLIPv2's first block) run here as written, with tiny settings
appended or paths swapped for files the test writes."""

import ast
import json
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()

# section title -> the tests that run its code blocks ("file::function"); this file's runners included
RUN_BY = {
    "Set up and run": [
        "test_readme.py::test_set_up_and_run_commands",
        "test_readme.py::test_make_targets",
        "test_wheel.py::test_readme_pip_route_works_outside_the_checkout",  # its "Install with pip" block
    ],
    "Detect": ["test_readme.py::test_detect_section_runs"],
    "Serve": ["test_serve.py::test_readme_serve_commands_run"],
    "Train and evaluate": [
        "test_readme.py::test_train_and_evaluate_section_runs",
        "test_training.py::test_torchrun_restart_resumes_from_the_last_checkpoint",  # its torchrun line
    ],
    "Pseudo-label images with captions (GLIP's self-training)": [
        "test_readme.py::test_pseudo_label_section_runs",
        "test_label.py::test_two_process_torchrun_labelling_merges_shards",  # its torchrun line
    ],
    "Speed and data at scale": [
        "test_compile.py::test_compiled_path_gives_the_eager_detections",
        "test_shards.py::test_train_command_streams_shards_with_workers",
        "test_shards.py::test_label_reads_caption_shards_and_writes_shards",
    ],
    "GLIP's ablation ladder": ["test_ladder.py::test_readme_ladder_commands_run"],
    "GLIPv2: inter-image loss, segmentation, prompt tuning": [
        "test_readme.py::test_glipv2_section_runs",
        "test_vl_training.py::test_readme_vqa_and_caption_commands",
        "test_vl_training.py::test_vqa_and_caption_training_on_files",
    ],
    "Fine-tune without forgetting": ["test_forgetting.py::test_readme_forgetting_commands_run"],
    "RegionCLIP: region-text pretraining from captions, open-vocabulary transfer": [
        "test_regionclip_readme.py::test_readme_regionclip_commands_run_end_to_end_from_files"
    ],
    "RegionCLIP's released models": ["test_regionclip_official.py::test_readme_released_models_commands_run"],
    "Export to ONNX: detect without PyTorch": [
        "test_export.py::test_readme_export_example_runs_without_torch"
    ],
    "Benchmarks: the papers' protocols, one command each": [
        "test_benchmark_cli.py::test_readme_benchmark_commands_run"
    ],
    "Models": ["test_hub.py::test_readme_models_section_runs"],
}


def sections() -> dict[str, str]:
    """``{title: text}`` of every level-2 section (level-3 ones stay inside their parent)."""
    parts = re.split(r"^## (.+)$", README, flags=re.M)
    return {title.strip(): body for title, body in zip(parts[1::2], parts[2::2])}


def blocks(title: str) -> list[tuple[str, str]]:
    """(language, code) of the fenced blocks of a section; a block without a language is not code."""
    return [(m[0], m[1]) for m in re.findall(r"```(\w*)\n(.*?)```", sections()[title], flags=re.S) if m[0]]


def command_lines(code: str) -> list[list[str]]:
    """The ``openglip`` commands of a shell block as argv lists (after ``openglip`` or ``-m openglip.cli``);
    continuation lines joined, comments dropped."""
    out = []
    for line in code.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if words and words[0] == "openglip":
            out.append(words[1:])
        elif "openglip.cli" in words:
            out.append(words[words.index("openglip.cli") + 1 :])
    return out


def run(argv: list[str]) -> None:
    from openglip.cli import main

    assert main(argv) == 0, argv


def test_every_openglip_command_in_the_readme_parses():
    """Each command's flags exist (a renamed flag fails here). A trailing ``...`` stands for "the flags above"."""
    import argparse

    from openglip.cli import build_parser, parse_args

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    count = 0
    for title in sections():
        for lang, code in blocks(title):
            if lang != "bash":
                continue
            for argv in command_lines(code):
                if argv[-1] == "...":  # elided: the flags shown must exist
                    known = {o for a in commands[argv[0]]._actions for o in a.option_strings}
                    assert {w for w in argv if w.startswith("-")} <= known, (title, argv)
                    continue
                try:
                    parse_args(argv)
                except SystemExit as err:
                    pytest.fail(
                        f"README section {title!r}: `openglip {shlex.join(argv)}` does not parse ({err})"
                    )
                count += 1
    assert count > 60  # the README shows about eighty commands


def test_every_section_with_code_is_run_by_a_test():
    have_code = {t for t in sections() if blocks(t)}
    assert have_code == set(RUN_BY), have_code ^ set(RUN_BY)
    for title, tests in RUN_BY.items():
        for node in tests:
            file, name = node.split("::")
            tree = ast.parse((REPO / "tests" / file).read_text())
            funcs = {f.name: f for f in ast.walk(tree) if isinstance(f, ast.FunctionDef)}
            assert name in funcs, f"{title!r} names {node}, which does not exist"
            source = ast.get_source_segment((REPO / "tests" / file).read_text(), funcs[name])
            assert "README" in source or "readme" in node, f"{node} does not say which README command it runs"


def test_make_targets():
    """``make demo`` / ``make train-demo`` / ``make test`` run what the README says they do."""
    makefile = (REPO / "Makefile").read_text()
    targets = dict(re.findall(r"^([\w-]+): .*\n((?:\t.*\n)+)", makefile, flags=re.M))
    assert "-m openglip.demo photos" in targets["demo"]
    assert "-m openglip.demo shapes" in targets["train-demo"]
    assert "pytest" in targets["test"] and "ruff check" in targets["test"]
    assert [
        c for _, code in blocks("Set up and run") for c in re.findall(r"^make [\w-]+", code, flags=re.M)
    ] == [
        "make demo",
        "make test",
        "make train-demo",
    ]
    assert "make test" in (REPO / ".ci" / "run").read_text()


def test_set_up_and_run_commands(tmp_path, capsys):
    """``make demo`` (the zero-shot default on the packaged photos) and ``make train-demo`` with 2 steps."""
    from openglip import demo

    assert demo.main(["photos", "--out", str(tmp_path / "photos")]) == 0
    out = capsys.readouterr().out
    assert "chelsea.png" in out and len(list((tmp_path / "photos").glob("*.jpg"))) >= 5
    assert demo.main(["shapes", "--steps", "2", "--images", "4", "--out", str(tmp_path / "shapes")]) == 0
    metrics = json.loads((tmp_path / "shapes" / "eval.json").read_text())["metrics"]
    assert 0.0 <= metrics["R@1"] <= 1.0 and (tmp_path / "shapes" / "model.safetensors").is_file()
    assert len(list((tmp_path / "shapes" / "predictions").glob("*.png"))) == 8


@pytest.fixture
def workdir(tmp_path, monkeypatch, tiny_checkpoint, chelsea):
    """A folder holding the README's file names: photos, the tiny model under the official names."""
    from openglip.checkpoints import MODEL_CONFIG_KEY, read_checkpoint
    from openglip.config import config_to_dict

    monkeypatch.chdir(tmp_path)
    state, cfg = read_checkpoint(tiny_checkpoint)
    for name in ("glip_t.pth", "glip_tiny_model_o365_goldg.pth"):
        torch.save({"model": state, MODEL_CONFIG_KEY: config_to_dict(cfg)}, name)
    shutil.copy(tiny_checkpoint, "tiny.safetensors")
    Path("photos").mkdir()
    for name in ("street.jpg", "a.jpg", "b.jpg", "photo.jpg", "photos/one.jpg", "photos/two.png"):
        Image.fromarray(chelsea).save(name)
    return tmp_path


def test_detect_section_runs(workdir):
    (lang, code), (shell, commands) = blocks("Detect")
    assert lang == "python" and shell == "bash"
    code = code.replace('"glip_t", weights="glip_tiny_model_o365_goldg.pth"', '"tiny.safetensors"')
    scope: dict = {}
    exec(compile(code, "README:Detect", "exec"), scope)
    assert len(scope["dets"]) == 2 and all(d.image_size == (300, 451) for d in scope["dets"])
    # the first prediction's conversions keep every box
    assert len(scope["sv_dets"]) == len(scope["coco"]) >= len(scope["cars"])
    argvs = command_lines(commands)
    assert [a[0] for a in argvs] == ["detect", "convert"]
    for argv in argvs:
        run(argv)
    results = json.loads(Path("results.json").read_text())
    assert {r["file_name"] for r in results} <= {"photos/one.jpg", "photos/two.png", "street.jpg"}
    assert len(list(Path("annotated").rglob("*.*"))) == 3
    assert Path("glip_t.safetensors").stat().st_size > 0


def _tiny_train(argv: list[str]) -> list[str]:
    """``openglip train PRESET ...`` made tiny: the tiny preset (``init_weights`` files are tiny models here), a
    few small steps."""
    if argv[0] != "train":
        return argv
    argv = ["train", "tiny" if argv[1].startswith("glip_") else argv[1], *argv[2:]]
    argv = [w for w in argv if not w.startswith(("max_steps=", "min_size="))]
    return [*argv, "--device", "cpu", "max_steps=2", "batch_size=1", "shapes_epoch_size=4", "num_negatives=5",
            "train_min_sizes=(64,)", "train_max_size=96", "checkpoint_every=0", "log_every=1"]  # fmt: skip


def _shapes_files(out: str, images: int = 4) -> None:
    from openglip.shapes import write_dataset

    write_dataset(out, num_images=images, split="val", image_size=64)


def test_train_and_evaluate_section_runs(workdir):
    """Every non-torchrun line; ``--data ...`` (the torchrun line's elision) is covered by test_training."""
    ((_, code),) = blocks("Train and evaluate")
    _shapes_files("data/shapes_val")
    coco = "data/shapes_val/annotations.coco.json"
    for name in ("train.coco.json", "val.coco.json"):
        shutil.copy(coco, name)
    shutil.copy("data/shapes_val/grounding.odvg.jsonl", "flickr.odvg.jsonl")
    shutil.copytree("data/shapes_val/images", "images")
    for argv in command_lines(code):
        if "..." in argv:
            continue
        if argv[:2] == ["data", "shapes"]:
            argv = [*argv, "--size", "64"] + (["--images", "4"] if "--images" not in argv else [])
            argv[argv.index("--images") + 1] = "4"
        if argv[0] == "evaluate" and "--images" in argv:
            argv[argv.index("--images") + 1] = "4"
        run(_tiny_train(argv))
    metrics = json.loads(Path("metrics.json").read_text())["metrics"]
    assert metrics["AP50"] is None or 0.0 <= metrics["AP50"] <= 1.0
    assert {"AP", "base/AP50", "novel/AP50"} <= set(metrics)
    assert Path("runs/shapes/model.safetensors").is_file() and Path("runs/mine/model.safetensors").is_file()


def test_pseudo_label_section_runs(workdir):
    """Both blocks (the zero-shot default teacher on a caption file; then the self-training recipe)."""
    (_, first), (_, recipe) = blocks("Pseudo-label images with captions (GLIP's self-training)")
    rows = [("one.jpg", "a cat sleeping on a red sofa"), ("two.png", "a striped cat next to a lamp")]
    Path("captions.jsonl").write_text(
        "".join(json.dumps({"filename": f, "caption": c}) + "\n" for f, c in rows)
    )
    shutil.copytree("photos", "captions_imgs")
    for argv in command_lines(first):
        if (
            argv[0] == "label"
            and "--nproc_per_node" not in argv
            and "runs/gold/model.safetensors" not in argv
        ):
            run([*argv, "--extractor", "rule"])
    assert len(Path("pseudo.odvg.jsonl").read_text().splitlines()) == 2
    Path("pseudo.odvg.jsonl").unlink()
    for argv in command_lines(recipe):
        if argv[:2] == ["data", "shapes"]:
            argv = [*argv[:-1], "4", "--size", "64"]  # --images 2000 -> 4
        if argv[0] == "label":
            argv = [*argv, "--extractor", "rule", "--threshold", "0.0"]
        if argv[:3] == ["train", "glip_nano", "--data"] and argv[3] == "shapes":  # the teacher: 2 steps leave
            argv = [*argv, "pre_nms_thresh=0.0"]  # every score under the default candidate threshold
        run(_tiny_train(argv))
    assert len(Path("pseudo.odvg.jsonl").read_text().splitlines()) == 2
    assert Path("runs/student/model.safetensors").is_file()


def test_glipv2_section_runs(workdir):
    """The first block: inter-image loss, the mask head (detect draws masks, evaluate adds mask metrics), prompt
    tuning with 5 shots and detect --prompt-file; the elided ``tune --mode linear|full ...`` lines get the prompt
    line's flags."""
    code = blocks("GLIPv2: inter-image loss, segmentation, prompt tuning")[0][1]
    _shapes_files("novel_files", images=6)
    shutil.copy("novel_files/annotations.coco.json", "novel.coco.json")
    shutil.copytree("novel_files/images", "images")
    shutil.copytree("photos", "imgs")
    tune_flags = None
    for argv in command_lines(code):
        if argv[0] == "tune" and argv[-1] == "...":
            argv = [*argv[:-1], *tune_flags, "--out", f"runs/{argv[2]}"]
        elif argv[0] == "tune":
            tune_flags = [w for w in argv[3:] if w not in ("--out", "runs/p5")]
        if argv[0] == "tune":
            argv = [*argv, "max_steps=2", "batch_size=1", "train_min_sizes=(64,)", "train_max_size=96"]
        if argv[0] == "evaluate":
            argv = [*argv, "--images", "4"]
        run(_tiny_train(argv))
    assert Path("runs/p5/prompt.safetensors").is_file() and Path("runs/full/model.safetensors").is_file()
    assert sorted(p.name for p in Path("out").iterdir()) == ["photo.jpg"]
    drawn = np.asarray(Image.open("out/photo.jpg"))
    assert drawn.shape[:2] == (300, 451)
