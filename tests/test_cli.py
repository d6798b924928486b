"""``openglip detect`` / ``convert`` from the command line: outputs and one-line errors with exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys

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
    drawn = Image.open(draw / "chelsea.jpg")
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
