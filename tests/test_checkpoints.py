"""Official key mapping (GLIP-T and GLIP-L), strict loading, safetensors and ``openglip convert``."""

from __future__ import annotations

import dataclasses
import functools
import json

import pytest
import torch

import openglip
from openglip import hub
from openglip.checkpoints import (
    DERIVED,
    LATE_STRIDE,
    CheckpointError,
    convert_official,
    export_official,
    guess_preset,
    load_into,
    official_key_to_openglip,
    official_tower_stride,
    openglip_key_to_official,
    read_checkpoint,
    resolve_config,
    save_safetensors,
)
from openglip.cli import main
from openglip.config import glip_l, glip_t, tiny
from openglip.conformance import official_fill, read_shape_table
from openglip.models.glip import build_model

from .conftest import require_reference
from .official_layouts import OFFICIAL_LAYOUTS, glip_t_a_rows


def _state_from_table(rows, fill=torch.empty) -> dict[str, torch.Tensor]:
    """A state dict with the official keys and shapes (values irrelevant to the mapping)."""
    from openglip.conformance import official_fill

    keep = official_fill([r for r in rows if r["fill_rule"] == "keep"])
    return {r["key"]: keep.get(r["key"], fill(r["shape"])) for r in rows}


def test_mapping_is_a_bijection_on_both_official_tables():
    for name in ("glip_t", "glip_l"):
        rows = read_shape_table(require_reference(name) / "state_dict_shapes.tsv")
        targets = []
        for row in rows:
            ours = official_key_to_openglip(row["key"])
            assert ours is not None, row["key"]
            if ours != DERIVED:
                targets.append(ours)
                assert openglip_key_to_official(ours) == row["key"]
        assert len(targets) == len(set(targets))  # no two official keys share a parameter
        derived = len(rows) - len(targets)
        assert derived == 6  # 5 anchor cells + BERT position ids


def test_glip_l_state_dict_maps_every_key():
    rows = read_shape_table(require_reference("glip_l") / "state_dict_shapes.tsv")
    assert len(rows) == 1022
    model = build_model(glip_l())
    state = _state_from_table(rows)
    assert guess_preset(state) == "glip_l"
    converted = convert_official({"module." + k: v for k, v in state.items()}, model)
    expected = model.state_dict()
    assert set(converted) == set(expected)  # every model key filled, nothing left over
    assert all(converted[k].shape == expected[k].shape for k in expected)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == 430_422_384  # reference param_counts.txt


def test_wrong_preset_checkpoint_is_refused_with_a_hint():
    rows = read_shape_table(require_reference("glip_t") / "state_dict_shapes.tsv")
    state = _state_from_table(rows, fill=torch.zeros)
    assert guess_preset(state) == "glip_t"
    model = build_model(glip_l())
    try:
        convert_official(state, model)
    except CheckpointError as err:
        message = str(err)
    else:
        raise AssertionError("a GLIP-T state dict loaded into GLIP-L must fail")
    assert "shape mismatches" in message and "backbone.body.patch_embed.proj.weight" in message
    assert "'glip_t'" in message  # the hint names the right preset


def test_missing_and_unexpected_keys_are_named():
    model = build_model(tiny())
    state = export_official(model)
    del state["rpn.head.bias0"]
    state["rpn.head.extra_thing"] = torch.zeros(3)
    try:
        convert_official(state, model)
    except CheckpointError as err:
        assert "head.bias0" in str(err) and "rpn.head.extra_thing" in str(err)
    else:
        raise AssertionError("expected CheckpointError")


def test_official_pth_round_trip_through_convert_cli(tmp_path, chelsea):
    """A tiny model exported in the official .pth layout converts to safetensors and predicts identically."""
    torch.manual_seed(1)
    model = build_model(tiny()).eval()
    with torch.no_grad():
        model.head.bias0.fill_(0.0)
    official = {"module." + k: v for k, v in export_official(model).items()}
    pth = tmp_path / "official.pth"
    torch.save({"model": official, "iteration": 5}, pth)
    out = tmp_path / "converted.safetensors"
    assert main(["convert", str(pth), str(out), "--preset", "tiny"]) == 0
    _, cfg = read_checkpoint(out)
    assert cfg is not None and cfg.name == "tiny"
    reference = openglip.Detector(model)
    converted = openglip.load_model(str(out))
    a = reference.predict(chelsea, "cat. dog.", box_threshold=0.0)
    b = converted.predict(chelsea, "cat. dog.", box_threshold=0.0)
    assert len(a) == len(b) > 0
    assert (a.xyxy == b.xyxy).all() and (a.scores == b.scores).all()
    # the .pth also loads directly as weights of the preset
    direct = openglip.load_model("tiny", weights=str(pth))
    c = direct.predict(chelsea, "cat. dog.", box_threshold=0.0)
    assert (c.scores == a.scores).all()


def test_safetensors_embeds_config_and_refuses_other_preset(tmp_path):
    model = build_model(tiny())
    path = tmp_path / "m.safetensors"
    save_safetensors(model, path)
    assert not list(tmp_path.glob("*.tmp"))  # written atomically
    _, cfg = read_checkpoint(path)
    assert cfg == model.config
    try:
        openglip.load_model("glip_t", weights=str(path))
    except CheckpointError as err:
        assert "'tiny'" in str(err)
    else:
        raise AssertionError("expected CheckpointError")


def test_unreadable_checkpoints(tmp_path):
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint at all")
    for path, words in ((empty, "empty"), (junk, "cannot read"), (tmp_path / "nope.pth", "not found")):
        try:
            read_checkpoint(path)
        except CheckpointError as err:
            assert words in str(err) and str(path) in str(err)
        else:
            raise AssertionError(path)


def test_glip_t_keys_and_shapes_equal_the_official_table():
    model = build_model(glip_t())
    rows = read_shape_table(require_reference("glip_t") / "state_dict_shapes.tsv")
    expected = {official_key_to_openglip(r["key"]): r["shape"] for r in rows}
    expected.pop(DERIVED)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == expected


def _tiny_rpn():
    from openglip.regionclip.config import RPNConfig
    from openglip.regionclip.weights import build_rpn

    cfg = RPNConfig(backbone="tiny_cnn", pretrained=False, fpn_channels=16, post_nms_top_n=20)
    return build_rpn(cfg), cfg


def test_every_model_file_is_the_one_format_with_its_kind(tmp_path):
    from safetensors import safe_open

    from openglip.regionclip.weights import save_weights

    save_safetensors(build_model(tiny()), tmp_path / "glip.safetensors")
    rpn, cfg = _tiny_rpn()
    save_weights(rpn, tmp_path / "rpn.safetensors", kind="rpn", config={"rpn": dataclasses.asdict(cfg)})
    for name, kind in (("glip", "glip"), ("rpn", "regionclip-rpn")):
        with safe_open(str(tmp_path / f"{name}.safetensors"), framework="pt") as f:
            meta = f.metadata()
        assert (meta["format"], meta["kind"]) == ("openglip", kind)
        assert json.loads(meta["openglip_config"])


def test_files_of_the_old_formats_still_load(tmp_path):
    """RegionCLIP files written before the one format (format "openglip-regionclip", short kinds, "config") and
    GLIP files without a kind, built byte for byte as the old writers did."""
    from safetensors.torch import save_file

    from openglip.config import config_to_json
    from openglip.regionclip.weights import load_rpn

    rpn, cfg = _tiny_rpn()
    state = {k: v.contiguous() for k, v in rpn.state_dict().items()}
    meta = {
        "format": "openglip-regionclip",
        "kind": "rpn",
        "config": json.dumps({"rpn": dataclasses.asdict(cfg)}),
    }
    save_file(state, str(tmp_path / "old_rpn.safetensors"), metadata=meta)
    with pytest.warns(DeprecationWarning, match="openglip-regionclip"):
        loaded = load_rpn(tmp_path / "old_rpn.safetensors")
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())

    model = build_model(tiny())
    glip = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(
        glip,
        str(tmp_path / "old.safetensors"),
        metadata={"format": "openglip", "openglip_config": config_to_json(model.config)},
    )
    det = openglip.load_model(str(tmp_path / "old.safetensors"), device="cpu")
    assert det.config == model.config
    assert all(torch.equal(det.model.state_dict()[k], v) for k, v in glip.items())


def test_files_that_are_not_glip_weights_say_what_they_are(tmp_path):
    """A JSON file, an ONNX model, RegionCLIP parts that predict no boxes, a tuned prompt and a GLIP checkpoint of
    another preset: each error names what the file is and what to do with it (they used to say "Python objects
    besides tensors" or "name its preset")."""
    from openglip.regionclip.weights import save_weights

    coco = tmp_path / "annotations.coco.json"
    coco.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"\x08\x08\x12\x07pytorch\x1a\x032.5")  # how a torch.onnx export begins
    rpn, cfg = _tiny_rpn()
    save_weights(rpn, tmp_path / "rpn.safetensors", kind="rpn", config={"rpn": dataclasses.asdict(cfg)})
    save_weights(torch.nn.Linear(2, 2), tmp_path / "teacher.safetensors", kind="teacher", config={})
    other = tmp_path / "tiny.safetensors"
    save_safetensors(build_model(tiny()), other)
    cases = [
        (coco, None, ["JSON file (COCO annotations)", "not model weights"]),
        (onnx, None, ["ONNX model", "openglip_onnx.py"]),
        (tmp_path / "rpn.safetensors", None, ["RegionCLIP RPN", "--rpn"]),
        (tmp_path / "teacher.safetensors", None, ["RegionCLIP teacher", "--teacher"]),
        ("glip_t", coco, ["JSON file"]),
        ("glip_t", tmp_path / "rpn.safetensors", ["RegionCLIP RPN"]),
        ("glip_t", other, ["GLIP checkpoint of preset 'tiny'", "without a preset"]),
    ]
    for source, weights, words in cases:
        with pytest.raises(CheckpointError) as err:
            openglip.load_model(str(source), weights=None if weights is None else str(weights))
        message = str(err.value)
        assert all(w in message for w in words) and "name its preset" not in message, (source, message)
        assert str(weights or source) in message and "\n" not in message


# ------------------------------------------------------------------------------------------------------------
# Every official checkpoint's layout (tests/official_layouts.py) loads strictly into its named model
# ------------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)  # the names are ordered so that those sharing a config share one model
def _model_for(cfg):
    return build_model(cfg).eval()


def _official_file(rows, path):
    """An official-style ``.pth`` ({"model": {"module.<key>": tensor}}) in which key number ``i`` holds the value
    ``i`` everywhere (a zero-stride view: the file stays small even for GLIP-L); buffers the official code builds
    (anchor cells, position ids, Swin position indices) hold their built values."""
    keep = official_fill([r for r in rows if r["fill_rule"] == "keep"])
    state = {
        r["key"]: keep.get(r["key"], torch.tensor(float(i)).expand(r["shape"])) for i, r in enumerate(rows)
    }
    torch.save({"model": {"module." + k: v for k, v in state.items()}, "iteration": 0}, path)
    return state


def test_every_official_name_has_a_derived_layout():
    assert list(OFFICIAL_LAYOUTS) == list(hub.OFFICIAL_MODELS)


@pytest.mark.parametrize("name", list(OFFICIAL_LAYOUTS))
def test_official_layout_loads_strictly_into_its_named_model(name, tmp_path):
    """Every key of the official state dict maps to one parameter of the model the name builds, with its value,
    and no parameter is left without a key; the file's preset is recognised from its keys alone."""
    entry = hub.OFFICIAL_MODELS[name]
    rows = OFFICIAL_LAYOUTS[name]()
    state = _official_file(rows, tmp_path / entry.filename)
    loaded, embedded = read_checkpoint(tmp_path / entry.filename)
    assert embedded is None and set(loaded) == set(state)
    cfg, _ = resolve_config(str(tmp_path / entry.filename), None)
    assert cfg == entry.config()  # GLIP-T (A) is recognised as glip_t with fusion=late
    model = _model_for(entry.config())
    load_into(model, loaded)  # strict: raises on a missing, unexpected or mis-shaped key

    stride = official_tower_stride(state)
    source = {}  # our key -> the official key it was loaded from
    for key in state:
        ours = official_key_to_openglip(key, stride)
        assert ours is not None, key
        if ours != DERIVED:
            assert ours not in source, (key, source.get(ours))  # no two official keys share a parameter
            source[ours] = key
            assert openglip_key_to_official(ours, stride) == key
    ours = model.state_dict()
    assert set(source) == set(ours)  # both ways: every parameter filled, every official key used
    assert len(state) - len(source) == 6  # derived, checked not loaded: 5 anchor cells + BERT position ids
    index = {r["key"]: i for i, r in enumerate(rows)}
    for key, value in ours.items():
        official = source[key]
        if official.endswith("relative_position_index"):
            assert torch.equal(value, state[official]), key
        else:
            assert (value == float(index[official])).all(), (key, official)


def test_glip_t_a_layout_is_glip_t_c_without_fusion_layers():
    """GLIP-T (A) (EARLY_FUSE_ON: False) has the six DyConvs at tower indices 0-5 and no VLFuse or
    BertEncoderLayer: 746 keys minus 6 x (18 VLFuse + 16 BertEncoderLayer) = 542."""
    rows = glip_t_a_rows()
    keys = [r["key"] for r in rows]
    assert len(keys) == len(set(keys)) == 542
    tower = [k for k in keys if k.startswith("rpn.head.dyhead_tower.")]
    assert {int(k.split(".")[3]) for k in tower} == set(range(6))
    dyconv = ("DyConv.", "AttnConv.", "relu.fc.", "offset.")  # the 20 keys of an official DyConv
    assert len(tower) == 6 * 20 and all(k.split(".", 4)[4].startswith(dyconv) for k in tower)
    assert official_tower_stride(dict.fromkeys(keys)) == LATE_STRIDE
    assert guess_preset({r["key"]: torch.empty(r["shape"]) for r in rows}) == "glip_t"
    late = build_model(dataclasses.replace(tiny(), fusion="late"))
    exported = export_official(late)  # a late model exports to the same late layout and reads back
    assert not any(".b_attn." in k for k in exported)
    assert set(convert_official(exported, late)) == set(late.state_dict())
