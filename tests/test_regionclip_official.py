"""RegionCLIP's released models end to end: stand-ins of the released files (the official key lists of
``shared/reference/regionclip_rn50``, filled by its rule; :mod:`tests.regionclip_releases`) go through the real
release loader (every key mapped, none left over) into :class:`OfficialRegionCLIP`, which runs the whole official
inference (RPN, 1000 RoIs, soft-NMS or NMS) on the reference input and must give the official detections.

Detections are matched as sets (same class, IoU >= 0.99, |dscore| <= 1e-4), the reference README's rule; its
1-thread and fp64 re-runs of the official code itself agree with it to 9e-6 in score, and a near-tie may swap one
box at the top-k cut, hence at most max(1, n/100) unmatched.
"""

from __future__ import annotations

import functools
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import openglip
from openglip import regionclip
from openglip.checkpoint_format import CheckpointError
from openglip.cli import main
from openglip.conformance import read_shape_table
from openglip.errors import UsageError
from openglip.regionclip.rcnn import OfficialRegionCLIP, RCNNConfig, resize_image, resized_size
from openglip.regionclip.rcnn_load import load_official, save_official, with_concepts
from openglip.regionclip.rcnn_rpn import build_offline_rpn
from openglip.regionclip.releases import read_release
from openglip.shapes import write_dataset
from openglip.shapes.formats import write_lvis

from .conftest import require_reference
from .regionclip_releases import (
    TABLES,
    official_state,
    unmatched,
    write_finetuned,
    write_openai_clip,
    write_pretrained,
    write_rpn,
)
from .test_readme import blocks, command_lines

pytestmark = pytest.mark.slow
README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def reference():
    root = require_reference("regionclip_rn50")
    return root, torch.load(root / "reference.pt", weights_only=True)


@pytest.fixture(scope="module")
def files(reference, tmp_path_factory):
    """The released files' stand-ins, and the 65 class names of the reference's given embedding matrix."""
    root, ref = reference
    out = tmp_path_factory.mktemp("releases")
    ovd, zsinf = official_state(root, ref, "ovd"), official_state(root, ref, "zsinf")
    paths = {
        "finetuned": write_finetuned(out / "regionclip_finetuned-coco_rn50.pth", ovd),
        "rpn_coco": write_rpn(out / "rpn_coco_48.pth", ovd),
        "pretrained": write_pretrained(out / "regionclip_pretrained-cc_rn50.pth", zsinf),
        "rpn_lvis": write_rpn(out / "rpn_lvis_866.pth", zsinf),
        "openai": write_openai_clip(out / "RN50.pth", ovd),
        "concepts": out / "coco_65_cls_emb.pth",
    }
    torch.save(ref["inputs"]["given_emb"].clone(), paths["concepts"])
    names = [f"class {i}" for i in range(65)]
    (out / "names.txt").write_text("\n".join(names))
    return paths, names, {"ovd": set(ovd), "zsinf": set(zsinf)}


def _run(model: OfficialRegionCLIP, ref: dict, config: str):
    torch.set_num_threads(2)
    image = ref["configs"][config]["inputs"]["image_resized_u8"]
    return model.run([image], [tuple(ref["inputs"]["orig_hw"])])


def test_the_test_resize_is_the_official_one(reference):
    _, ref = reference
    image = Image.fromarray(ref["inputs"]["image_rgb_u8"].numpy())
    assert torch.equal(resize_image(image, 800, 1333), ref["configs"]["ovd"]["inputs"]["image_resized_u8"])
    assert resized_size(480, 640, 800, 1333) == (800, 1067)
    assert resized_size(300, 2000, 800, 1333) == (200, 1333)  # the longer side caps it


def test_transferred_detector_gives_the_official_detections(reference, files):
    """regionclip_finetuned-coco_rn50.pth + rpn_coco_48.pth + a concept_emb file, the COCO test script's
    settings (C4 RPN, box deltas, gaussian soft-NMS, 100 per image)."""
    _, ref = reference
    paths, names, keys = files
    model = load_official(paths["finetuned"], rpn=paths["rpn_coco"])
    assert (model.cfg.rpn, model.cfg.train_classes, model.cfg.head.soft_nms) == ("c4", 48, True)
    with_concepts(model, paths["concepts"], names)
    # every official key of the ovd model is one of ours and nothing else (the text encoder is not in this file)
    assert set(model.state_dict()) == {k for k in keys["ovd"] if not k.startswith("lang_encoder.")}
    out = _run(model, ref, "ovd")
    expected = ref["configs"]["ovd"]["given_emb"]["detections"]
    got = out.detections[0]
    assert len(got.scores) == len(expected["scores"]) == 100
    assert unmatched(got, expected) <= 1


def test_pretrained_model_zero_shot_and_its_text_encoder(reference, files):
    """regionclip_pretrained-cc_rn50.pth alone: its own LVIS RPN (NMS 0.9), the proposals as boxes, scores
    sqrt(probability * raw RPN logit), NMS 0.5, 300 per image; class names embedded by its text encoder."""
    _, ref = reference
    paths, names, _ = files
    model = load_official(paths["pretrained"])
    assert (model.cfg.rpn, model.cfg.rpn_nms_thresh, model.cfg.head.no_box_delta) == ("fpn", 0.9, True)
    # the text path: the reference vocabulary's embeddings, from names (81 templates, mean), README tolerance 1e-5
    model.set_vocabulary(ref["inputs"]["vocab"])
    got = model.roi_heads.box_predictor.test_cls_score.weight
    want = ref["text"]["stages"]["text.class_embeddings"]["full"]
    assert float((got.double() - want.double()).norm() / want.double().norm()) <= 1e-5
    model.set_vocabulary(names, ref["inputs"]["given_emb"])
    out = _run(model, ref, "zsinf")
    expected = ref["configs"]["zsinf"]["given_emb"]["detections"]
    assert len(out.detections[0].scores) == len(expected["scores"]) == 300
    assert unmatched(out.detections[0], expected) <= 3


def test_every_released_layout_maps_every_key(reference, files, tmp_path):
    root, ref = reference
    paths, _, keys = files
    # a separate RPN file replaces the pretrained file's own; the teacher is named as dropped, not lost
    release = read_release(paths["pretrained"])
    assert release.layout == "pretrained" and any("teacher" in why for why in release.dropped)
    model = load_official(paths["pretrained"], rpn=paths["rpn_lvis"])
    assert model.cfg.rpn == "fpn"
    rpn = read_release(paths["rpn_coco"])
    assert rpn.layout == "rpn" and rpn.rpn == "c4" and sum(map(len, rpn.dropped.values())) == 4
    # OpenAI's CLIP: visual -> backbone, the text tower -> lang_encoder, its scalars dropped
    clip = read_release(paths["openai"])
    assert clip.layout == "openai-clip" and clip.arch == "RN50"
    assert set(clip.state) == {k for k in keys["ovd"] if k.startswith(("backbone.", "lang_encoder."))}
    # the LVIS detector: 866 base classes and the class-agnostic mask head, with the large-scale-jitter RPN
    lvis = write_finetuned(tmp_path / "regionclip_finetuned-lvis_rn50.pth", official_state(root, ref, "ovd", ("backbone.", "roi_heads.")), masks=True, classes=866)  # fmt: skip
    lsj = build_offline_rpn("fpn_lsj")  # its key layout is derived and checked in test_regionclip_rcnn_rpn.py
    state = {"backbone." + k: v for k, v in lsj[0].state_dict().items()}
    state |= {"proposal_generator." + k: v for k, v in lsj[1].state_dict().items()}
    torch.save({"model": state}, tmp_path / "rpn_lvis_866_lsj.pth")
    model = load_official(lvis, rpn=tmp_path / "rpn_lvis_866_lsj.pth", text=paths["pretrained"])
    assert (model.cfg.rpn, model.cfg.train_classes, model.cfg.mask_on) == ("fpn_lsj", 866, True)
    assert model.lang_encoder is not None


def test_rn50x4_layout_follows_the_official_block_counts(reference):
    """The RN50x4 key list: the RN50 one with the official depth-200 blocks (4, 6, 10, 6) and the same text
    transformer; the shapes that differ are the widths (80), the 640-d embedding and the 9 x 9 attention grid."""
    root, _ = reference
    blocks = {1: 4, 2: 6, 3: 10, 4: 6}
    rn50 = [
        r["key"]
        for r in read_shape_table(root / TABLES["ovd"])
        if r["key"].startswith(("backbone.", "lang_encoder."))
    ]
    expected = set()
    for key in rn50:
        m = re.match(r"backbone\.layer(\d)\.(\d+)\.(.*)", key)
        if m is None:
            expected.add(key)
        elif m[2] == "1":  # every non-first block has the same keys as block 1
            expected |= {f"backbone.layer{m[1]}.{b}.{m[3]}" for b in range(1, blocks[int(m[1])])}
        elif m[2] == "0":
            expected.add(key)
    model = OfficialRegionCLIP(RCNNConfig(arch="RN50x4", rpn=None), text=True)
    state = model.state_dict()
    assert {k for k in state if not k.startswith("roi_heads.")} == expected
    assert state["backbone.conv1.weight"].shape == (40, 3, 3, 3)
    assert state["backbone.attnpool.positional_embedding"].shape == (82, 2560)
    assert state["lang_encoder.text_projection"].shape == (640, 640)
    assert model.roi_heads.pooler_resolution == 18


def test_release_errors_say_what_and_where(files, tmp_path):
    paths, names, _ = files
    with pytest.raises(CheckpointError, match="RPN"):
        load_official(paths["rpn_coco"])
    with pytest.raises(UsageError, match="--rpn"):
        load_official(paths["finetuned"])
    with pytest.raises(CheckpointError, match="no CLIP text encoder"):
        load_official(paths["finetuned"], rpn=paths["rpn_coco"], text=paths["rpn_coco"])
    with pytest.raises(CheckpointError, match="concept-embedding"):
        load_official(paths["concepts"])
    junk = tmp_path / "junk.pth"
    torch.save({"model": {"backbone.attnpool.c_proj.weight": torch.zeros(1024, 2048), "head.extra": torch.zeros(2)}}, junk)  # fmt: skip
    with pytest.raises(CheckpointError, match=r"head\.extra"):
        read_release(junk)
    with pytest.raises(UsageError, match="65 class embeddings, but 3 names"):
        with_concepts(load_official(paths["finetuned"], rpn=paths["rpn_coco"]), paths["concepts"], names[:3])
    model = load_official(paths["finetuned"], rpn=paths["rpn_coco"])
    with pytest.raises(UsageError, match="no text encoder"):
        model.set_vocabulary(["cup"])


def test_converted_file_opens_with_load_model_and_predicts_the_same(files, tmp_path):
    """``openglip regionclip convert``'s file: one safetensors with the config, the weights and the stored
    vocabulary, opened by ``openglip.load_model``; a prompt of stored names uses the stored embeddings."""
    paths, names, _ = files
    model = load_official(paths["finetuned"], rpn=paths["rpn_coco"], min_size=128, max_size=160, proposals=30)
    with_concepts(model, paths["concepts"], names)
    save_official(model, tmp_path / "coco.safetensors")
    loaded = openglip.load_model(tmp_path / "coco.safetensors")
    assert isinstance(loaded, OfficialRegionCLIP) and loaded.cfg == model.cfg
    photo = (np.random.default_rng(0).random((150, 200, 3)) * 255).astype(np.uint8)
    prompt = f"{names[40]}. {names[3]}. {names[7]}."  # stored names, another order
    a, b = model.predict(photo, prompt), loaded.predict(photo, prompt)
    assert len(a) > 0 and a.image_size == (150, 200)
    np.testing.assert_allclose(a.xyxy, b.xyxy, atol=1e-4)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
    assert set(a.phrases) <= {names[40], names[3], names[7]} and list(a.labels) == list(b.labels)


def test_readme_released_models_commands_run(files, reference, tmp_path, monkeypatch, capsys):
    """The section's commands as written, the released files replaced by their stand-ins, COCO / LVIS by the shapes
    world's files in those layouts, and the test resize and proposal count made small (--min-size 128
    --max-size 160 --proposals 20) so each runs in seconds; every output it names is checked."""
    root, ref = reference
    paths, _, _ = files
    coco = write_dataset(tmp_path / "coco_val", num_images=2, split="val", image_size=96, seed=5)["coco"]
    lvis = write_lvis(tmp_path / "lvis", num_images=3, image_size=96, seed=2)
    n_coco = len(json.loads(Path(coco).read_text())["categories"])
    n_lvis = len(json.loads(lvis.read_text())["categories"])
    torch.save(torch.randn(n_coco, 1024), tmp_path / "coco_65.pth")
    torch.save(torch.randn(n_lvis, 1024), tmp_path / "lvis_1203.pth")
    ovd = official_state(root, ref, "ovd", ("backbone.", "roi_heads."))
    write_finetuned(tmp_path / "ft_lvis.pth", ovd, masks=True, classes=866)
    lsj = build_offline_rpn("fpn_lsj")
    state = {"backbone." + k: v for k, v in lsj[0].state_dict().items()}
    state |= {"proposal_generator." + k: v for k, v in lsj[1].state_dict().items()}
    torch.save({"model": state}, tmp_path / "rpn_lsj.pth")
    Image.fromarray(ref["inputs"]["image_rgb_u8"].numpy()).save(tmp_path / "photo.jpg")
    swap = {
        "regionclip_finetuned-coco_rn50.pth": str(paths["finetuned"]),
        "regionclip_finetuned-lvis_rn50.pth": str(tmp_path / "ft_lvis.pth"),
        "regionclip_pretrained-cc_rn50.pth": str(paths["pretrained"]),
        "rpn_coco_48.pth": str(paths["rpn_coco"]),
        "rpn_lvis_866.pth": str(paths["rpn_lvis"]),
        "rpn_lvis_866_lsj.pth": str(tmp_path / "rpn_lsj.pth"),
        "coco_65_cls_emb.pth": str(tmp_path / "coco_65.pth"),
        "lvis_1203_cls_emb.pth": str(tmp_path / "lvis_1203.pth"),
        "instances_val2017.json": str(coco),
        "coco/val2017": str(Path(coco).parent),
        "lvis_v1_val.json": str(lvis),
        "coco": str(lvis.parent),
        "photo.jpg": str(tmp_path / "photo.jpg"),
    }
    monkeypatch.chdir(tmp_path)
    title = "RegionCLIP's released models"
    commands = [argv for lang, code in blocks(title) if lang == "bash" for argv in command_lines(code)]
    snippets = [code for lang, code in blocks(title) if lang == "python"]
    assert len(commands) == 6 and len(snippets) == 1
    for words in commands:
        argv = [swap.get(w, w) for w in words]
        if argv[0] == "regionclip":
            argv += ["--min-size", "128", "--max-size", "160", "--proposals", "20"]
        assert main(argv) == 0, words
    out = capsys.readouterr().out
    assert "novel" in out and "APr" in out  # the two benchmark tables
    for name in ("dets.json", "zero_shot.json"):
        results = json.loads((tmp_path / name).read_text())
        assert {r["phrase"] for r in results} <= {"cup", "saucer", "spoon"}
    coco_model = openglip.load_model(tmp_path / "regionclip_coco.safetensors")
    assert coco_model.cfg.rpn == "c4" and len(coco_model.stored[0]) == n_coco
    assert openglip.load_model(tmp_path / "regionclip_lvis.safetensors").cfg.mask_on
    small = dict(min_size=128, max_size=160, proposals=20)
    monkeypatch.setattr(regionclip, "load_official", functools.partial(load_official, **small))
    namespace: dict = {}
    exec(snippets[0].replace("photo.jpg", swap["photo.jpg"]).replace('"regionclip_', f'"{tmp_path}/X').replace(f'{tmp_path}/Xfinetuned-coco_rn50.pth', swap["regionclip_finetuned-coco_rn50.pth"]).replace(f'{tmp_path}/Xpretrained-cc_rn50.pth', swap["regionclip_pretrained-cc_rn50.pth"]).replace('"rpn_coco_48.pth"', repr(swap["rpn_coco_48.pth"])), namespace)  # fmt: skip
    assert namespace["dets"].image_size == (512, 512)


def test_openglip_serve_answers_with_the_released_detector(files, tmp_path):
    """``openglip serve`` takes the converted file like any predictor: an uploaded photo and a prompt of the
    stored class names get the detections ``predict`` gives."""
    from fastapi.testclient import TestClient

    from openglip.serve import ServeSettings, create_app

    paths, names, _ = files
    model = load_official(paths["finetuned"], rpn=paths["rpn_coco"], min_size=128, max_size=160, proposals=30)
    with_concepts(model, paths["concepts"], names)
    save_official(model, tmp_path / "coco.safetensors")
    served = openglip.load_model(tmp_path / "coco.safetensors")
    photo = (np.random.default_rng(1).random((120, 160, 3)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, format="PNG")
    prompt = f"{names[40]}. {names[2]}."
    with TestClient(create_app(served, ServeSettings(timeout_s=120))) as client:
        r = client.post("/v1/detect", files={"image": ("x.png", buffer.getvalue(), "image/png")},
                        data={"prompt": prompt, "threshold": "0.0"})  # fmt: skip
    assert r.status_code == 200, r.text
    want = model.predict(photo, prompt)
    got = r.json()["detections"]
    assert len(got) == len(want) > 0
    np.testing.assert_allclose([d["box"] for d in got], want.xyxy, atol=1e-3)  # JSON rounding, as test_serve
    assert [d["phrase"] for d in got] == list(want.phrases)


def test_openglip_evaluate_takes_the_converted_release(files, tmp_path, capsys):
    """``openglip evaluate --weights`` on a COCO file: the converted detector behind the shared evaluator."""
    paths, _, _ = files
    coco = write_dataset(tmp_path / "val", num_images=2, split="val", image_size=96, seed=5)["coco"]
    names = [c["name"] for c in json.loads(Path(coco).read_text())["categories"]]
    model = load_official(paths["finetuned"], rpn=paths["rpn_coco"], min_size=128, max_size=160, proposals=20)
    with_concepts(model, paths["concepts"], names + [f"other {i}" for i in range(65 - len(names))])
    save_official(model, tmp_path / "coco.safetensors")
    argv = ["evaluate", "--weights", str(tmp_path / "coco.safetensors"), "--data", str(coco),
            "--out", str(tmp_path / "metrics.json")]  # fmt: skip
    assert main(argv) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())["metrics"]
    assert 0.0 <= metrics["AP50"] <= 1.0 and "OfficialRegionCLIP" in capsys.readouterr().out
