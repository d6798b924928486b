"""The public API: load_model / Detector.predict / Detections."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import openglip
from openglip import Detections, PromptError
from openglip.prompts import build_prompt


def test_predict_accepts_paths_pil_arrays_and_lists(tiny_detector, chelsea, tmp_path):
    path = tmp_path / "cat.png"
    Image.fromarray(chelsea).save(path)
    a = tiny_detector.predict(chelsea, "cat. dog.", box_threshold=0.0)
    b = tiny_detector.predict(Image.fromarray(chelsea), ["cat", "dog"], box_threshold=0.0)
    c = tiny_detector.predict(str(path), "cat. dog.", box_threshold=0.0)
    assert isinstance(a, Detections) and len(a) > 0
    # "cat. dog." and ["cat", "dog"] are different captions (trailing period) but the same phrases
    assert a.prompt_phrases == b.prompt_phrases == ("cat", "dog")
    assert np.array_equal(a.xyxy, c.xyxy) and np.array_equal(a.scores, c.scores)
    both = tiny_detector.predict([chelsea, str(path)], "cat. dog.", box_threshold=0.0)
    assert isinstance(both, list) and len(both) == 2
    # a batch of two vs alone: measured 6e-8 on 1 and 2 threads, 1e-6 is 17x
    assert np.allclose(both[0].scores, a.scores, atol=1e-6)


def test_detections_fields_ranges_and_indexing(tiny_detector, chelsea):
    dets = tiny_detector.predict(chelsea, "cat. dog. person.", box_threshold=0.0)
    assert len(dets) > 10  # every check below would hold on an empty result
    h, w = chelsea.shape[:2]
    assert dets.image_size == (h, w)
    assert dets.xyxy.shape == (len(dets), 4) and dets.xyxy.dtype == np.float32
    assert (dets.xyxy[:, 0] >= 0).all() and (dets.xyxy[:, 2] <= w).all() and (dets.xyxy[:, 3] <= h).all()
    assert (dets.xyxy[:, 2] >= dets.xyxy[:, 0]).all()
    assert ((dets.scores >= 0) & (dets.scores <= 1)).all()
    assert (np.diff(dets.scores) <= 0).all()  # sorted
    assert all(dets.phrases[i] == dets.prompt_phrases[dets.labels[i]] for i in range(len(dets)))
    high = dets[dets.scores > np.median(dets.scores)]
    assert 0 < len(high) < len(dets) and (high.scores > np.median(dets.scores)).all()
    cats = dets[dets.phrases == "cat"]
    assert set(cats.phrases) == {"cat"}
    assert len(dets[0]) == 1 and len(dets[[]]) == 0


def test_threshold_and_max_detections(tiny_detector, chelsea):
    full = tiny_detector.predict(chelsea, "cat", box_threshold=0.0)
    cut = float(full.scores[len(full) // 2])
    some = tiny_detector.predict(chelsea, "cat", box_threshold=cut)
    assert 0 < len(some) < len(full) and (some.scores >= cut).all()
    assert len(tiny_detector.predict(chelsea, "cat", box_threshold=0.0, max_detections=3)) == 3


def test_to_coco_schema(tiny_detector, chelsea):
    dets = tiny_detector.predict(chelsea, ["cat", "dog"], box_threshold=0.0)
    entries = dets.to_coco(image_id=7)
    assert len(entries) == len(dets)
    for e, box in zip(entries, dets.xyxy):
        assert set(e) == {"image_id", "category_id", "bbox", "score", "phrase"}
        assert e["image_id"] == 7 and e["category_id"] in (1, 2)
        assert e["phrase"] == ("cat", "dog")[e["category_id"] - 1]
        x, y, bw, bh = e["bbox"]
        assert abs(x + bw - box[2]) < 0.02 and abs(y + bh - box[3]) < 0.02


def test_to_supervision(tiny_detector, chelsea):
    pytest.importorskip("supervision")
    dets = tiny_detector.predict(chelsea, ["cat", "dog"], box_threshold=0.0)
    sv = dets.to_supervision()
    assert len(sv) == len(dets)
    assert np.array_equal(sv.xyxy, dets.xyxy) and list(sv.data["class_name"]) == list(dets.phrases)


def test_one_prompt_per_image(tiny_detector, chelsea):
    out = tiny_detector.predict(
        [chelsea, chelsea[:, :200]], prompts=[["cat"], "the red table. a fish."], box_threshold=0.0
    )
    assert out[0].prompt_phrases == ("cat",)
    assert out[1].prompt_phrases == ("the red table", "a fish")
    assert set(out[1].phrases) <= {"the red table", "a fish"}
    with pytest.raises(ValueError, match="2 prompts for 1 images"):
        tiny_detector.predict([chelsea], prompts=["cat", "dog"])
    with pytest.raises(ValueError, match="exactly one"):
        tiny_detector.predict(chelsea)


def test_bad_prompts(tiny_detector, chelsea):
    with pytest.raises(PromptError):
        tiny_detector.predict(chelsea, "")
    with pytest.raises(PromptError):
        tiny_detector.predict(chelsea, " . . ")


def test_text_features_are_cached(tiny_detector, chelsea):
    calls = []
    hook = tiny_detector.model.text_encoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        tiny_detector.predict(chelsea, "zebra. giraffe.", box_threshold=0.5)
        first = len(calls)
        tiny_detector.predict(chelsea, "zebra. giraffe.", box_threshold=0.5)
        tiny_detector.predict([chelsea, chelsea], "zebra. giraffe.", box_threshold=0.5)
    finally:
        hook.remove()
    assert first == 1 and len(calls) == 1


def test_long_prompt_is_chunked_and_every_phrase_can_be_detected(tiny_detector, chelsea):
    """A 1000+-token vocabulary: GLIP would truncate at 256 tokens and never detect the classes past the cut."""
    names = [f"thing {i} of a long list" for i in range(150)]
    prompt = build_prompt(names)
    chunks = tiny_detector.encode_prompt(prompt)
    assert len(chunks) >= 5
    assert [c.offset for c in chunks] == sorted(c.offset for c in chunks)
    total = sum(c.pmap.shape[0] for c in chunks)
    assert total == 150 and all(c.text.input_ids.shape[1] <= 256 for c in chunks)
    small = openglip.Detector(tiny_detector.model)
    small.postprocessor.detections_per_image = 10_000
    small.postprocessor.pre_nms_top_n = 10_000
    dets = small.predict(chelsea, names, box_threshold=0.0)
    # with the raised bias every phrase scores ~0.5 somewhere: the last chunk's phrases are reachable
    assert dets.labels.max() >= 140 and len(set(dets.labels.tolist())) > 100


def test_batched_prediction_equals_single(tiny_detector, chelsea):
    imgs = [chelsea, np.ascontiguousarray(chelsea[:, ::-1])]
    batch = tiny_detector.predict(imgs, "cat. dog.", box_threshold=0.0, batch_size=2)
    single = [tiny_detector.predict(im, "cat. dog.", box_threshold=0.0) for im in imgs]
    for b, s in zip(batch, single):  # same size images: padding is identical, so outputs are too
        # measured 6e-8 on scores, 2.3e-5 px on boxes (2 threads; 3.8e-6 px on 1): the bars are 170x and 40x that
        assert np.allclose(b.scores, s.scores, atol=1e-5) and np.allclose(b.xyxy, s.xyxy, atol=1e-3)


def test_load_model_errors():
    with pytest.raises(ValueError, match="unknown preset"):
        openglip.load_model("glip_xxl")
    with pytest.raises(Exception, match="not found"):
        openglip.load_model("tiny", weights="/nonexistent/weights.pth")


def test_device_cuda_without_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ValueError, match="no CUDA GPU"):
        openglip.load_model("tiny", device="cuda")


def test_repeated_phrase_gives_each_box_once(tiny_detector, chelsea):
    """Bug: ``cat. cat. dog.`` listed every cat box twice."""
    twice = tiny_detector.predict(chelsea, "cat. cat. dog.", box_threshold=0.0)
    assert twice.prompt_phrases == ("cat", "dog")
    assert len(twice) > 0 and set(twice.phrases) <= {"cat", "dog"}
    boxes = {(*np.round(b, 2).tolist(), p) for b, p in zip(twice.xyxy, twice.phrases)}
    assert len(boxes) == len(twice)  # no box listed twice for one phrase


def test_load_model_opens_a_regionclip_detector_file_and_predicts(tmp_path):
    """A RegionCLIP detector saved in the one checkpoint format opens with load_model alone (no preset) and
    predicts the same boxes as the model it was saved from; its text space is the default MiniLM encoder."""
    import dataclasses

    from PIL import ImageDraw

    from openglip.regionclip import OpenVocabDetector
    from openglip.regionclip.config import TEMPLATES, TEXT_ENCODER, RPNConfig, TransferConfig
    from openglip.regionclip.weights import build_detector, save_weights

    torch.manual_seed(0)
    tiny = dict(backbone="tiny_cnn", pretrained=False, fpn_channels=16)
    rpn_cfg = RPNConfig(**tiny, post_nms_top_n=20)
    cfg = TransferConfig(**tiny, roi_size=3, head_dim=32, embed_dim=384, min_size=64, max_size=64)
    built = build_detector(cfg, rpn_config=rpn_cfg, templates=TEMPLATES, encoder=TEXT_ENCODER)
    config = {
        "transfer": dataclasses.asdict(cfg),
        "rpn": dataclasses.asdict(rpn_cfg),
        "classes": [],
        "templates": list(TEMPLATES),
        "encoder": TEXT_ENCODER,
    }
    path = tmp_path / "rc_detector.safetensors"
    save_weights(built, path, kind="detector", config=config)
    image = Image.new("RGB", (64, 64), (128, 128, 128))
    draw = ImageDraw.Draw(image)
    draw.ellipse((6, 6, 30, 30), fill=(220, 30, 30))
    draw.rectangle((36, 34, 58, 58), fill=(30, 30, 220))

    detector = openglip.load_model(path, device="cpu")
    assert isinstance(detector, OpenVocabDetector) and isinstance(detector, openglip.structures.Predictor)
    dets = detector.predict(image, "red circle. blue square.")
    assert isinstance(dets, Detections) and len(dets) > 0 and dets.image_size == (64, 64)
    assert set(dets.phrases) <= {"red circle", "blue square"} and (dets.xyxy >= 0).all()
    built.names.text = detector.names.text  # one encoder for both: the same class embeddings
    same = built.eval().predict(image, "red circle. blue square.")
    assert np.array_equal(same.xyxy, dets.xyxy) and np.array_equal(same.scores, dets.scores)
    with pytest.raises(openglip.checkpoints.CheckpointError, match=r"RegionCLIP detector.*with no preset"):
        openglip.load_model("tiny", weights=path)
    from openglip.cli import main

    assert main(["export", "--weights", str(path), "--out", str(tmp_path / "rc.onnx")]) == 2
    assert not (tmp_path / "rc.onnx").exists()
