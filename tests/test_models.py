"""Model parts: deformable conv, folded cross-attention, DyConv quirk, anchors, box coder, post-processing."""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision

from openglip.config import tiny
from openglip.models.anchors import AnchorGenerator, BoxCoder
from openglip.models.dyhead import _reread_offsets, modulated_deform_conv
from openglip.models.fusion import BiMultiHeadAttention
from openglip.models.glip import build_model
from openglip.models.postprocess import Candidates, PostProcessor, phrase_scores


def test_deform_conv_matches_torchvision_values_and_gradients():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 7, 9, dtype=torch.double, requires_grad=True)
    w = torch.randn(4, 5, 3, 3, dtype=torch.double, requires_grad=True)
    b = torch.randn(4, dtype=torch.double, requires_grad=True)
    for stride in (1, 2):
        ho, wo = (7 - 1) // stride + 1, (9 - 1) // stride + 1
        off = (torch.randn(2, 18, ho, wo, dtype=torch.double) * 2.5).requires_grad_()
        mask = torch.rand(2, 9, ho, wo, dtype=torch.double, requires_grad=True)
        ours = modulated_deform_conv(x, off, mask, w, b, stride)
        ref = torchvision.ops.deform_conv2d(x, off, w, b, stride=stride, padding=1, mask=mask)
        # float64 on both sides: measured 3.6e-15 (outputs) and 1.1e-13 (gradients) on 1 and 2 threads; 1e-12 / 1e-9
        # leave float64 reordering room and fail on any float32 step (~1e-7)
        assert torch.allclose(ours, ref, atol=1e-12)
        g1 = torch.autograd.grad((ours * ours).sum(), [x, off, mask, w, b])
        g2 = torch.autograd.grad((ref * ref).sum(), [x, off, mask, w, b])
        for a, c in zip(g1, g2):
            assert torch.allclose(a, c, atol=1e-9)


def test_deform_conv_with_zero_offsets_is_a_plain_conv():
    torch.manual_seed(0)
    x, w, b = torch.randn(1, 3, 6, 6), torch.randn(2, 3, 3, 3), torch.randn(2)
    out = modulated_deform_conv(x, torch.zeros(1, 18, 6, 6), torch.ones(1, 9, 6, 6), w, b)
    # float32, zero offsets against F.conv2d's own summation order: measured 1.9e-6 on 1 and 2 threads, 1e-5 is 5x
    assert torch.allclose(out, F.conv2d(x, w, b, padding=1), atol=1e-5)


def _naive_bi_attention(m: BiMultiHeadAttention, v, t, mask):
    """GLIP's BiMultiHeadAttention written the direct way (projections of every location)."""
    B, N, _ = v.shape
    T = t.shape[1]
    H, hd = m.num_heads, m.head_dim

    def heads(x, n):
        return x.view(B, n, H, hd).transpose(1, 2)

    q = heads(m.v_proj(v) * m.scale, N)
    k = heads(m.l_proj(t), T)
    vv = heads(m.values_v_proj(v), N)
    vl = heads(m.values_l_proj(t), T)
    a = (q @ k.transpose(-1, -2)).clamp(-50000, 50000)  # (B, H, N, T)
    at = a.transpose(-1, -2)
    at = (at - at.amax(-1, keepdim=True)).softmax(-1)
    bias = torch.where(mask > 0, 1.0, -9e15)[:, None, None, :]
    av = (a + bias).softmax(-1)
    out_v = m.out_v_proj((av @ vl).transpose(1, 2).reshape(B, N, H * hd))
    out_l = m.out_l_proj((at @ vv).transpose(1, 2).reshape(B, T, H * hd))
    return out_v, out_l


def test_folded_cross_attention_equals_the_direct_computation():
    torch.manual_seed(0)
    m = BiMultiHeadAttention(v_dim=12, l_dim=10, embed_dim=16, num_heads=4).double().eval()
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.3)
    v = torch.randn(2, 33, 12, dtype=torch.double, requires_grad=True)
    t = torch.randn(2, 7, 10, dtype=torch.double, requires_grad=True)
    mask = torch.ones(2, 7)
    mask[1, 5:] = 0
    dv, dl = m(v, t, mask)
    rv, rl = _naive_bi_attention(m, v, t, mask)
    # float64: measured 1.1e-15 (outputs) and 4.3e-14 (gradients, below) on 1 and 2 threads
    assert torch.allclose(dv, rv, atol=1e-10) and torch.allclose(dl, rl, atol=1e-10)
    g1 = torch.autograd.grad(dv.sum() + dl.pow(2).sum(), [v, t, *m.parameters()])
    g2 = torch.autograd.grad(rv.sum() + rl.pow(2).sum(), [v, t, *m.parameters()])
    for a, b in zip(g1, g2):
        assert torch.allclose(a, b, atol=1e-9)


def test_reread_offsets_reads_raw_memory_of_each_image():
    fine = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).view(2, 3, 4, 6)
    coarse = _reread_offsets(fine, (2, 3))
    assert coarse.shape == (2, 3, 2, 3)
    # image 1's coarse map is the first 3*2*3 numbers of image 1's fine map, re-read with row length 3
    assert torch.equal(coarse[1].reshape(-1), fine[1].reshape(-1)[:18])
    assert coarse[0, 1, 0, 0] == fine[0].reshape(-1)[6]


def test_anchor_and_box_coder_conventions():
    gen = AnchorGenerator((64, 128, 256, 512, 1024), (8, 16, 32, 64, 128))
    anchors = gen([(2, 3), (1, 1), (1, 1), (1, 1), (1, 1)], "cpu")
    assert anchors[0][0].tolist() == [-28.0, -28.0, 35.0, 35.0]
    assert anchors[0][1].tolist() == [-20.0, -28.0, 43.0, 35.0]  # row-major: next x first
    coder = BoxCoder()
    boxes = torch.tensor([[10.0, 20.0, 50.0, 90.0], [0.0, 0.0, 5.0, 5.0]])
    deltas = coder.encode(boxes, anchors[0][:2])
    # float32 encode then decode: measured 0 px; 1e-4 px allows float32 rounding of exp/log on another CPU
    assert torch.allclose(coder.decode(deltas, anchors[0][:2]), boxes, atol=1e-4)
    assert torch.equal(coder.decode(torch.zeros(1, 4), anchors[0][:1]), anchors[0][:1])


def test_phrase_scores_are_token_means():
    probs = torch.tensor([[0.2, 0.4, 0.9, 0.1]])
    pmap = torch.tensor([[0.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    # means of 1-2 float32 values: measured 0; allclose's defaults
    assert torch.allclose(phrase_scores(probs, pmap), torch.tensor([[0.65, 0.2]]))
    assert torch.allclose(phrase_scores(probs, pmap[:, :2]), torch.tensor([[0.4, 0.2]]))  # shorter caption


def test_nms_is_per_phrase_with_plus_one_areas():
    pp = PostProcessor(nms_thresh=0.6, detections_per_image=100)
    # IoU with "+1" areas: inter 4*5=20 / union 30 = 0.667 (> 0.6, suppressed);
    # plain areas would give 12 / 20 = 0.6 (not > 0.6, kept): the legacy convention decides
    boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0], [1.0, 0.0, 5.0, 4.0]])
    scores = torch.tensor([0.9, 0.8])
    assert len(pp.select(Candidates(boxes, scores, torch.tensor([0, 0]))).scores) == 1
    assert len(pp.select(Candidates(boxes, scores, torch.tensor([0, 1]))).scores) == 2  # other phrase
    apart = torch.arange(300.0)[:, None].repeat(1, 4) * 20 + torch.tensor([0.0, 0.0, 10.0, 10.0])
    torch.manual_seed(0)
    kept = pp.select(Candidates(apart, torch.rand(300), torch.zeros(300, dtype=torch.long)))
    assert len(kept.scores) == 100 and bool((kept.scores[:-1] >= kept.scores[1:]).all())


def test_tiny_forward_shapes_and_padding_invariance():
    torch.manual_seed(0)
    model = build_model(tiny()).eval()
    x = torch.randn(2, 3, 128, 160)
    ids, mask = model.tokenize(["cat. dog.", "a red car"])
    with torch.no_grad():
        out = model(x, [(128, 160), (100, 150)], ["cat. dog.", "a red car"])
        assert len(out.logits) == 5
        T = ids.shape[1]
        for level, stride in enumerate((8, 16, 32, 64, 128)):
            h, w = -(-128 // stride), -(-160 // stride)
            assert out.logits[level].shape == (2, h * w, T)
            assert out.box_regression[level].shape == (2, 4, h, w)
            assert out.centerness[level].shape == (2, 1, h, w)
            assert out.anchors[level].shape == (h * w, 4)
        # the same captions padded with 9 extra [PAD] tokens give the same logits on real tokens
        pad_ids = F.pad(ids, (0, 9))
        pad_mask = F.pad(mask, (0, 9))
        padded = model(x, None, text=model.encode_text(pad_ids, pad_mask))
    for a, b in zip(out.logits, padded.logits):
        # padded vs real-length text, float32: measured 4.8e-7 on 1 and 2 threads, 1e-5 is 20x
        assert torch.allclose(a, b[..., :T], atol=1e-5)
