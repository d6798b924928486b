"""``openglip detect`` / ``convert`` from the command line: outputs and one-line errors with exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from openglip.cli import main


@pytest.fixture()
def photo_path(tmp_path, chelsea):
    path = tmp_path / "chelsea.png"
    Image.fromarray(chelsea).save(path)
    return path


def test_detect_writes_coco_json_and_drawn_image(tmp_path, photo_path, tiny_checkpoint, capsys):
    out = tmp_path / "results.json"
    draw = tmp_path / "drawn"
    code = main(
        ["detect", str(photo_path), "--prompt", "cat. dog.", "--weights", str(tiny_checkpoint),
         "--threshold", "0.2", "--out", str(out), "--draw", str(draw)]
    )  # fmt: skip
    assert code == 0
    results = json.loads(out.read_text())
    assert len(results) > 0
    for r in results:
        assert set(r) == {"image_id", "category_id", "bbox", "score", "phrase", "file_name"}
        assert r["image_id"] == 1 and r["file_name"] == str(photo_path)
        assert r["phrase"] in ("cat", "dog") and r["category_id"] == ("cat", "dog").index(r["phrase"]) + 1
        x, y, w, h = r["bbox"]
        assert 0 <= x <= 451 and 0 <= y <= 300 and w >= 0 and h >= 0 and 0.2 <= r["score"] <= 1
    drawn = Image.open(draw / "chelsea.png")  # the input's name (and format) is kept
    assert drawn.size == (451, 300)
    assert not list(tmp_path.glob("*.tmp")) and not list(draw.glob("*.tmp"))


def test_detect_prints_to_stdout_without_out(photo_path, tiny_checkpoint, capsys):
    assert main(["detect", str(photo_path), "--prompt", "cat", "--weights", str(tiny_checkpoint)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines and all(line.split("\t")[1] == "cat" for line in lines)


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("openglip: error:")]
    assert errors, err
    assert "Traceback" not in "\n".join(err)
    return errors[0]


@pytest.mark.parametrize(
    ("prompt", "words"),
    [("", "prompt is empty"), (" . . .", "no phrase"), ("of the and", "no phrase")],
)
def test_bad_prompt_exit_2(photo_path, tiny_checkpoint, capsys, prompt, words):
    assert main(["detect", str(photo_path), "--prompt", prompt, "--weights", str(tiny_checkpoint)]) == 2
    assert words in _one_line_error(capsys)


def test_missing_and_unreadable_images_exit_2(tmp_path, photo_path, tiny_checkpoint, capsys):
    assert main(["detect", str(tmp_path / "missing.jpg"), "--prompt", "cat", "--preset", "tiny"]) == 2
    assert "missing.jpg" in _one_line_error(capsys)
    empty = tmp_path / "zero.jpg"
    empty.write_bytes(b"")
    bad = tmp_path / "bad.png"
    bad.write_text("this is not a png")
    out = tmp_path / "res.json"
    code = main(
        ["detect", str(photo_path), str(empty), str(bad), "--prompt", "cat", "--weights", str(tiny_checkpoint),
         "--out", str(out), "--threshold", "0"]
    )  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "zero.jpg: file is empty" in err and "bad.png: not a readable image" in err
    # the good image was still processed and its results written
    assert {r["file_name"] for r in json.loads(out.read_text())} == {str(photo_path)}


def test_checkpoint_for_another_preset_exit_2(photo_path, tiny_checkpoint, capsys):
    code = main(
        [
            "detect",
            str(photo_path),
            "--prompt",
            "cat",
            "--preset",
            "glip_t",
            "--weights",
            str(tiny_checkpoint),
        ]
    )
    assert code == 2
    assert "'tiny'" in _one_line_error(capsys)


def test_corrupt_checkpoint_exit_2(tmp_path, photo_path, capsys):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00" * 100)
    assert (
        main(["detect", str(photo_path), "--prompt", "cat", "--preset", "tiny", "--weights", str(junk)]) == 2
    )
    assert "junk.pth" in _one_line_error(capsys)


def test_entry_point_runs_as_a_program(photo_path, tiny_checkpoint):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    ok = subprocess.run(
        [sys.executable, "-m", "openglip.cli", "detect", str(photo_path), "--prompt", "cat",
         "--weights", str(tiny_checkpoint)],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert ok.returncode == 0 and "cat" in ok.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "openglip.cli", "detect", "/no/such/image.jpg", "--prompt", "cat"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 2
    assert (
        bad.stderr.strip().splitlines()[-1]
        == "openglip: error: /no/such/image.jpg: no such file or directory"
    )


def test_prompt_and_prompt_file_are_exclusive_and_one_is_required(photo_path, tiny_checkpoint, capsys):
    """Bug: --prompt-file required --prompt, and with both --prompt was silently ignored."""
    base = ["detect", str(photo_path), "--weights", str(tiny_checkpoint)]
    for extra, words in (([], "one of the arguments --prompt --prompt-file is required"),
                         (["--prompt", "cat", "--prompt-file", "p.safetensors"], "not allowed with")):  # fmt: skip
        with pytest.raises(SystemExit) as exit_:
            main([*base, *extra])
        assert exit_.value.code == 2 and words in capsys.readouterr().err


def test_unwritable_outputs_are_refused_before_any_work(tmp_path, photo_path, capsys):
    """Bug: an unwritable --out/--draw was found only after every image was processed (a traceback)."""
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    cases = [
        (["--out", str(tmp_path)], "is a directory"),  # --out onto a directory
        (["--draw", str(a_file)], "is a file"),  # --draw onto a file
        (["--out", str(a_file / "res.json")], "a file is in the way"),  # a file where a folder must be
    ]
    for extra, words in cases:
        # --weights does not exist: had the model been loaded first, the error would name it
        code = main(
            ["detect", str(photo_path), "--prompt", "cat", "--weights", str(tmp_path / "w.pth"), *extra]
        )
        assert code == 2
        line = _one_line_error(capsys)
        assert words in line and ("--out" in line or "--draw" in line), line
    assert a_file.read_text() == "x"


def test_extreme_aspect_ratio_is_processed_with_the_others(tmp_path, photo_path, tiny_checkpoint, capsys):
    """Bug: one 1000x2 image aborted the whole batch (``height and width must be > 0``) and nothing was written."""
    from openglip.models.transform import resized_size

    assert min(resized_size(2, 1000, 128, 224)) >= 1 and min(resized_size(20000, 1, 800, 1333)) >= 1
    thin, tall = tmp_path / "thin.png", tmp_path / "tall.png"
    Image.new("RGB", (1000, 2), (200, 30, 30)).save(thin)
    Image.new("RGB", (2, 1000), (30, 30, 200)).save(tall)
    out = tmp_path / "res.json"
    code = main(["detect", str(thin), str(photo_path), str(tall), "--prompt", "cat", "--weights",
                 str(tiny_checkpoint), "--batch-size", "3", "--threshold", "0", "--out", str(out)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    results = json.loads(out.read_text())
    assert {r["file_name"] for r in results} == {str(thin), str(photo_path), str(tall)}
    for r in results:
        if r["file_name"] == str(thin):
            x, y, w, h = r["bbox"]
            assert 0 <= x <= x + w <= 1000.5 and 0 <= y <= y + h <= 2.5


def test_draw_names_never_collide(tmp_path, tiny_checkpoint, chelsea):
    """Bug: --draw files overwrote each other when inputs shared a stem (a/x.jpg + a/sub/x.jpg, x.jpg + x.png)."""
    from openglip.image_files import output_names

    assert output_names(["a/x.jpg", "a/sub/x.jpg", "a/x.png", "a/x.tif", "a/x.tif.png"]) == [
        Path("x.jpg"), Path("sub/x.jpg"), Path("x.png"), Path("x.tif.png"), Path("x.tif_2.png"),
    ]  # fmt: skip
    assert output_names(["b/x.jpg", "c/x.jpg"]) == [Path("b/x.jpg"), Path("c/x.jpg")]
    src = tmp_path / "a"
    (src / "sub").mkdir(parents=True)
    small = Image.fromarray(chelsea).resize((90, 60))
    for name in ("x.jpg", "sub/x.jpg", "x.png"):
        small.save(src / name)
    draw = tmp_path / "drawn"
    assert (
        main(["detect", str(src), "--prompt", "cat", "--weights", str(tiny_checkpoint), "--draw", str(draw)])
        == 0
    )
    drawn = sorted(str(p.relative_to(draw)) for p in draw.rglob("*") if p.is_file())
    assert drawn == ["sub/x.jpg", "x.jpg", "x.png"]
    assert Image.open(draw / "x.png").format == "PNG" and Image.open(draw / "x.jpg").format == "JPEG"


def test_detect_where_every_image_fails_keeps_the_old_out(tmp_path, tiny_checkpoint, capsys):
    """Bug: a run where every image failed replaced an existing --out with ``[]``."""
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    out = tmp_path / "res.json"
    out.write_text('[{"old": true}]')
    code = main(["detect", str(bad), "--prompt", "cat", "--weights", str(tiny_checkpoint), "--out", str(out)])
    assert code == 2
    err = capsys.readouterr().err
    assert "bad.png: not a readable image" in err and "was not written" in err
    assert out.read_text() == '[{"old": true}]'


def test_outputs_honour_the_umask(tmp_path, photo_path, tiny_checkpoint):
    """Bug: every output file was created 0600 (mkstemp's mode), whatever the umask."""
    from openglip.files import write_text_atomic

    old = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "a.txt", "x")
        out = tmp_path / "res.json"
        assert main(["detect", str(photo_path), "--prompt", "cat", "--weights", str(tiny_checkpoint),
                     "--out", str(out), "--draw", str(tmp_path / "d")]) == 0  # fmt: skip
        os.umask(0o077)
        write_text_atomic(tmp_path / "private.txt", "x")
    finally:
        os.umask(old)
    for path in (tmp_path / "a.txt", out, tmp_path / "d" / "chelsea.png"):
        assert path.stat().st_mode & 0o777 == 0o644, path
    assert (tmp_path / "private.txt").stat().st_mode & 0o777 == 0o600


def test_a_budget_that_cuts_the_shapes_demo_says_so_loudly(tmp_path, monkeypatch, capsys):
    """Issue 23.9: the shapes demo has no time budget by default; one that cuts the run prints a warning and
    marks the table as not the demo's figures."""
    from openglip import demo

    assert demo.DEFAULT_BUDGET == 0.0 and demo.demo_configs()[1].time_budget == 0.0
    keys = ("base/AP50", "novel/AP50", "AP50", "AP", "R@1", "R@5")
    monkeypatch.setattr(demo, "evaluate_shapes", lambda *a, **k: dict.fromkeys(keys, 0.0))
    out = tmp_path / "demo"
    assert demo.main(["shapes", "--steps", "3", "--budget", "1e-6", "--images", "2", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "WARNING: --budget 1e-06 s stopped training at step 0 of 3" in captured.err
    assert "NOT the demo's" in captured.err
    assert "(cut at 0 of 3 steps: not the demo's figures)" in captured.out
    assert json.loads((out / "eval.json").read_text())["planned_steps"] == 3
