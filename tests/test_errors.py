"""Errors for people: bad input is one line and exit code 2; anything else is a bug (exit 1, "--debug")."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from openglip.cli import main
from openglip.errors import DataError, UsageError
from openglip.regionclip.weights import save_weights


@pytest.fixture()
def image(tmp_path):
    path = tmp_path / "img.png"
    Image.new("RGB", (64, 48), (200, 30, 30)).save(path)
    return path


def _bad_inputs(tmp_path, image):
    """(argv, words in the error line) for inputs that used to end in a traceback or an "internal error"."""
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    junk_bin = tmp_path / "X.bin"
    junk_bin.write_text("hi")
    foreign = tmp_path / "resnet.pth"  # an official-looking .pth of another model
    torch.save({"model": {"module.layer1.0.conv1.weight": torch.zeros(2, 2)}, "iteration": 5}, foreign)
    captions = tmp_path / "c.jsonl"
    captions.write_text(json.dumps({"filename": "img.png", "caption": "a red square"}) + "\n")
    detect = ["detect", str(image), "--prompt", "cat"]
    coco = tmp_path / "annotations.coco.json"
    coco.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"\x08\x08\x12\x07pytorch\x1a\x032.5")  # how a torch.onnx export begins
    rpn = tmp_path / "rpn.safetensors"
    save_weights(torch.nn.Linear(2, 2), rpn, kind="rpn", config={})
    export = ["export", "--out", str(tmp_path / "out.onnx"), "--weights"]
    return [
        ([*export, str(coco)], "is a JSON file (COCO annotations), not model weights"),
        (
            [*export, str(onnx)],
            "is an ONNX model, not PyTorch weights; run it with ONNX Runtime through the NumPy",
        ),
        (
            [*export, str(rpn)],
            "is a RegionCLIP RPN, not GLIP detector weights; it proposes class-agnostic boxes",
        ),
        ([*export, str(rpn), "--preset", "tiny"], "is a RegionCLIP RPN"),
        ([*detect, "--preset", "tiny", "--device", "tpu"], "'tpu'"),
        ([*detect, "--weights", str(tmp_path / "Y.bin")], "Y.bin: no such file"),
        ([*detect, "--weights", str(junk_bin)], "cannot read checkpoint"),
        ([*detect, "--weights", str(foreign)], "carries no config"),
        ([*detect, "--weights", str(foreign), "--preset", "tiny"], "not a GLIP or OpenGLIP checkpoint"),
        (["data", "shapes", "--out", str(a_file), "--images", "2"], "is a file"),
        (["train", "tiny", "--out", str(tmp_path / "r1"), "shapes_image_size=16"], "at least 32 px"),
        (["train", "tiny", "--out", str(tmp_path / "r2"), "train_min_sizes=()"], "train_min_sizes"),
        (["train", "tiny", "--out", str(tmp_path / "r3"), "--device", "tpu"], "'tpu'"),
        (["evaluate", "--weights", "tiny.safetensors", "--out", str(tmp_path)], "--out"),
        (["label", "--images", str(tmp_path), "--captions", str(captions), "--out", str(tmp_path)], "--out"),
    ]


def test_bad_input_prints_one_line_and_exits_2(tmp_path, image, capsys):
    for argv, words in _bad_inputs(tmp_path, image):
        code = main(argv)
        lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert code == 2, (argv, lines)
        assert len(lines) == 1 and lines[0].startswith("openglip: error: ") and words in lines[0], (
            argv,
            lines,
        )


def test_internal_error_is_reported_as_a_bug_with_exit_1(image, monkeypatch, capsys):
    def broken(inputs):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr("openglip.images.find_images", broken)
    assert main(["detect", str(image), "--prompt", "cat", "--preset", "tiny"]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("openglip: internal error (this is a bug, please report it): RuntimeError: boom")
    assert "openglip --debug" in line
    with pytest.raises(RuntimeError, match="boom"):  # --debug shows the traceback instead
        main(["--debug", "detect", str(image), "--prompt", "cat", "--preset", "tiny"])


def test_library_errors_for_user_input_are_openglip_errors(tiny_detector, image):
    """User input reaching the library gives UsageError/DataError (exit 2 in the CLI), not a bare ValueError."""
    from openglip.metrics import coco_detection_metrics
    from openglip.prompts import Prompt, get_extractor
    from openglip.shapes import ShapesWorld

    with pytest.raises(UsageError, match="2 prompts for 1 images"):
        tiny_detector.predict([str(image)], prompts=["cat", "dog"])
    with pytest.raises(UsageError, match="batch_size"):
        tiny_detector.predict(str(image), "cat", batch_size=0)
    with pytest.raises(UsageError, match="extractor"):
        get_extractor("nltk")
    with pytest.raises(UsageError, match="32 px"):
        ShapesWorld(image_size=16)
    with pytest.raises(DataError, match="'images' is missing"):
        coco_detection_metrics({"annotations": [], "categories": []}, [])
    with pytest.raises(ValueError, match="outside the caption"):  # a PromptError, still a ValueError
        Prompt("cat", ("dog",), (((5, 8),),))


def test_image_index_counts_in_the_whole_list(tiny_detector, image):
    """Bug: "image #k" counted within the batch, not the list."""
    from openglip.images import ImageError

    bad = [str(image)] * 3 + [torch.zeros(2, 3, 4, 5)]  # a 4-D tensor is not an image; 2nd of batch 2
    with pytest.raises(ImageError, match="image #3"):
        tiny_detector.predict(bad, "cat", batch_size=2)
