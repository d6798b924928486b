"""GLIP-T against the official microsoft/GLIP code path (shared/reference/glip_t), stage by stage.

The full GLIP-T is built on CPU, filled by the reference's deterministic rule through the *official
checkpoint* loading path, run on the reference input, and every stage is compared with the README's
tolerances (relative L2 over the stored samples). Tolerances are the reference README's suggested ones for an
fp32 port; the measured noise floor of the official code itself is 5-10x below them.
"""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import box_iou

from openglip.checkpoints import load_into
from openglip.config import glip_t
from openglip.conformance import official_fill, read_shape_table, relative_l2
from openglip.models.glip import build_model
from openglip.models.postprocess import PostProcessor
from openglip.prompts import load_tokenizer, positive_map, split_caption, token_spans

from .conftest import require_reference

pytestmark = pytest.mark.slow


def tolerance(name: str) -> float:
    # the reference README's suggested tolerances (section 6), 5-10x its measured noise floor (noise_floor.json:
    # official code in float64, and on 1 thread vs 2). Measured here, 1 and 2 threads and float64: the worst stage
    # sits at 0.2x its tolerance (tower.17.visual.L4 / fused.L4: 3.9e-5 against 2e-4).
    if name.startswith(("swin.", "lang.")) or name.endswith("lang_hidden"):
        return 1e-5
    if name.startswith("fpn."):
        return 2e-5
    if name.startswith("tower."):
        return 5e-5 if int(name.split(".")[1]) <= 5 else 2e-4
    if name.startswith("fused."):
        return 2e-4
    if name.startswith("head."):
        return 3e-4
    raise KeyError(name)


@pytest.fixture(scope="module")
def reference():
    root = require_reference("glip_t")
    return torch.load(root / "reference.pt", weights_only=True), root


@pytest.fixture(scope="module")
def model(reference):
    _, root = reference
    m = build_model(glip_t()).eval()
    load_into(m, official_fill(read_shape_table(root / "state_dict_shapes.tsv")))
    return m


def _capture(model, inputs, input_ids, attention_mask):
    """Run the model with hooks and collect every stage under the reference's names."""
    got: dict[str, torch.Tensor] = {}
    hooks = []
    counter = {"n": 0}

    state: dict = {}

    def record_tower(kind):
        # each tower module updates one or both modalities; the reference records both after every module
        def hook(_module, _args, output):
            n = counter["n"]
            counter["n"] += 1
            if kind == "cross":
                state["visual"], state["text"] = output
            elif kind == "text":
                state["text"] = output
            else:
                state["visual"] = output
            for j, f in enumerate(state["visual"]):
                got[f"tower.{n:02d}.visual.L{j}"] = f
            got[f"tower.{n:02d}.lang_hidden"] = state["text"]

        return hook

    for block in model.tower.layers:
        hooks.append(block.cross_attn.register_forward_hook(record_tower("cross")))
        hooks.append(block.text_layer.register_forward_hook(record_tower("text")))
        hooks.append(block.dyconv.register_forward_hook(record_tower("dyconv")))
    hooks.append(
        model.fpn.register_forward_hook(
            lambda _m, _a, out: got.update({f"fpn.P{i + 3}": f for i, f in enumerate(out)})
        )
    )
    try:
        with torch.no_grad():
            stages = model.backbone(inputs["image"], all_stages=True)
            got["swin.stage0"] = stages[0]
            for i, f in enumerate(model.backbone(inputs["image"])):
                got[f"swin.stage{i + 1}"] = f
            text = model.encode_text(input_ids, attention_mask)
            got["lang.hidden"] = text.hidden
            out = model(inputs["image"], inputs["image_sizes"], text=text)
    finally:
        for h in hooks:
            h.remove()
    for j in range(5):
        got[f"fused.L{j}"] = out.fused_visual[j]
        got[f"head.dot_product_logits.L{j}"] = out.logits[j]
        got[f"head.box_regression.L{j}"] = out.box_regression[j]
        got[f"head.centerness.L{j}"] = out.centerness[j]
    got["fused.lang_hidden"] = out.fused_text
    return got, out


def _pad_tokens(x: torch.Tensor, axis: int, total: int = 256) -> torch.Tensor:
    """Zero-pad a real-length text tensor to GLIP's 256 tokens so that reference indices line up."""
    shape = list(x.shape)
    shape[axis] = total
    full = x.new_zeros(shape)
    index = [slice(None)] * x.ndim
    index[axis] = slice(0, x.shape[axis])
    full[tuple(index)] = x
    return full


def _real_token_error(x: torch.Tensor, summary: dict, axis: int, real: int) -> float:
    """Relative L2 over the sampled entries that belong to real (non-padding) tokens."""
    full = _pad_tokens(x, axis)
    idx = summary["idx"]
    coords = torch.stack(torch.unravel_index(idx, tuple(full.shape)))
    keep = coords[axis] < real
    got = full.reshape(-1)[idx[keep]].double()
    ref = summary["values"][keep].double()
    return float((got - ref).norm() / ref.norm())


@pytest.fixture(scope="module")
def real_run(reference, model):
    """Stages of our default path: text at its real length (8 tokens), not padded to 256."""
    inputs = reference[0]["inputs"]
    ids = inputs["input_ids_unpadded"]
    return _capture(model, inputs, ids, torch.ones_like(ids))


def test_real_length_text_matches_every_stage(reference, real_run):
    """Our default path (text not padded) against the official 256-padded run, on real tokens."""
    ref, _ = reference
    inputs, stages = ref["inputs"], ref["stages"]
    got, _ = real_run
    real = inputs["input_ids_unpadded"].shape[1]
    failures, checked = [], 0
    for name, summary in stages.items():
        if name.startswith(("anchors.", "lang.masks", "lang.aggregate", "lang.embedded")):
            continue
        x = got[name]
        if name.startswith("head.dot_product_logits"):
            err = _real_token_error(x, summary, axis=2, real=real)
        elif name.endswith("lang_hidden") or name == "lang.hidden":
            err = _real_token_error(x, summary, axis=1, real=real)
        else:
            err = relative_l2(x, summary)
        checked += 1
        if not err <= tolerance(name):
            failures.append(f"{name}: {err:.2e} > {tolerance(name):.0e}")
    assert (
        checked == len(stages) - 8
    )  # all but anchors (tested exactly below) and lang mask/aggregate/embedded
    assert not failures, "\n".join(failures)


def test_full_tensor_statistics(reference, real_run):
    """mean / std / abs_mean of image-side stages over whole tensors (not only the 4096 samples)."""
    stages = reference[0]["stages"]
    got, _ = real_run
    for name in ["swin.stage3", "fpn.P3", "fpn.P7", "tower.17.visual.L0", "fused.L2", "head.centerness.L0"]:
        x = got[name].double()
        s = stages[name]
        # the README's "about 10x the same tolerance"; measured at most 7e-7 (head.centerness.L0 mean, 1 thread),
        # far below every bar: whole-tensor means average the per-element noise away
        tol = 10 * tolerance(name)
        for stat, value in (("mean", x.mean()), ("std", x.std()), ("abs_mean", x.abs().mean())):
            scale = max(abs(s[stat]), s["std"])  # relative to the spread for near-zero means
            assert abs(float(value) - s[stat]) <= tol * scale, (name, stat, float(value), s[stat])


def test_anchors_exact(reference, model):
    ref, _ = reference
    stages = ref["stages"]
    shapes = [tuple(stages[f"fpn.P{i + 3}"]["shape"][-2:]) for i in range(5)]
    anchors = model.anchor_generator(shapes, "cpu")
    for j in range(5):  # README: anchors are exact (noise 0); abs 1e-4 as it suggests
        assert torch.allclose(anchors[j], stages[f"anchors.img0.L{j}"]["full"], atol=1e-4, rtol=0)
    assert anchors[0][0].tolist() == [-28.0, -28.0, 35.0, 35.0]


def test_padded_text_matches_all_256_columns(reference, model, real_run):
    """Fed exactly like the official code (256 padded tokens), every logit column matches, padding included,
    and the real-token columns equal those of the real-length run."""
    ref, _ = reference
    inputs, stages = ref["inputs"], ref["stages"]
    with torch.no_grad():
        text = model.encode_text(inputs["input_ids"], inputs["attention_mask"])
        out = model(inputs["image"], inputs["image_sizes"], text=text)
    for j in range(5):  # measured 0.6e-5 (L0) to 5e-5 (L4) on 1 and 2 threads and in float64, against 3e-4
        name = f"head.dot_product_logits.L{j}"
        assert relative_l2(out.logits[j], stages[name]) <= tolerance(name), name
    ids = inputs["input_ids_unpadded"]
    short = real_run[1]
    for level, (padded, real) in enumerate(zip(out.logits, short.logits)):
        diff = (padded[..., : ids.shape[1]] - real).abs().max() / real.abs().max()
        # float noise: the same sums in another order. In float64 the two runs agree to 4e-14 on every level, so
        # padding changes nothing but the order; in float32 each run lies up to 3.5e-5 (L3/L4) from its float64
        # value, so two runs may differ by up to 7e-5. Measured max over levels: 0.9e-5 to 1.04e-5 with both runs on 1
        # thread or both on 2, 2.8e-5 (L4) with the real-length run on 1 thread and this one on 2 (what
        # OMP_NUM_THREADS=1 gives: the module fixture runs before the autouse 2-thread fixture). The bar is that
        # 7e-5 bound (2.5x the largest spread measured); the old 2e-5 sat at the floor and failed at 1 thread.
        assert diff < 7e-5, (level, float(diff))


def test_final_detections_match(reference, model, real_run):
    """The 100 detections match the official ones (same label, IoU >= 0.99, |score diff| <= 1e-5)."""
    ref, _ = reference
    inputs, dets = ref["inputs"], ref["detections"]
    caption = inputs["caption"]
    prompt = split_caption(caption)
    enc = load_tokenizer()([caption], return_tensors="pt")
    spans = token_spans(enc[0], prompt)
    assert spans == [inputs["positive_map_label_to_token"][k] for k in (1, 2, 3)]
    assert torch.equal(enc["input_ids"], inputs["input_ids_unpadded"])
    out = real_run[1]
    pmap = positive_map(spans, out.logits[0].shape[-1])
    result = PostProcessor()(out, [pmap])[0]
    assert len(result.scores) == len(dets["scores"]) == 100
    iou = box_iou(result.boxes, dets["boxes_xyxy_resized"])
    same_label = (result.labels[:, None] + 1) == dets["labels"][None, :]
    # the README's matching rule: the official code's own 1-thread and float64 re-runs move scores by 1.1e-6 and
    # boxes by 6e-5 px; ours on 1 thread: 100 of 100 matched, scores within 3.6e-7, boxes within 3e-5 px
    close = (result.scores[:, None] - dets["scores"][None, :]).abs() <= 1e-5
    matched = ((iou >= 0.99) & same_label & close).any(dim=1)
    # the reference README warns that ranks near the 100th place can swap under 1e-6 noise
    assert int(matched.sum()) >= 98, int(matched.sum())
    scale = torch.tensor([451 / 1202, 300 / 800, 451 / 1202, 300 / 800])
    top = result.boxes[0] * scale
    assert torch.allclose(top, dets["boxes_xyxy_orig"][0], atol=1e-2)  # measured 0 px on 1 thread
