"""Export-friendly replacements for the few operations that have no plain ONNX form, swapped in only while a
model is being exported (:func:`export_friendly`); the PyTorch code paths stay as they are.

* The modulated deformable conv (DCNv2) runs on ``torchvision.ops.deform_conv2d`` on GPU and on ``embedding_bag``
  gathers on CPU; neither becomes standard ONNX (the first is a custom op, the second a loop). Here it is one
  ``GridSample`` (bilinear, zero padding: opset 16+) for the 9 kernel taps and one ``MatMul``.
* EfficientNet's TensorFlow-style "same" padding is computed from the input size with Python arithmetic, which the
  TorchScript exporter freezes into a pad that crops every other size back to the example's. For inputs whose
  size is a multiple of the stride (the export's size divisibility guarantees it at every stride-2 conv) that
  padding is the constant ``max(kernel - stride, 0)``, used here.
* ``F.scaled_dot_product_attention`` is replaced by its ``MatMul``/``Softmax`` definition, so that no fused
  ``Attention`` node (opset 23, or a contrib op) appears and any ONNX runtime can run the graph.

Swin needs nothing here: :mod:`openglip.models.swin` builds its shifted-window mask from ``arange`` comparisons
and pads windows with concatenated zeros while a TorchScript trace records it, so its sizes stay symbolic.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from ..models import dyhead, efficientnet


def deform_conv_grid_sample(
    x: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: int = 1,
) -> torch.Tensor:
    """Modulated deformable 3x3 conv with padding 1, the same contract as
    :func:`openglip.models.dyhead.modulated_deform_conv`, built from ``grid_sample`` and a matrix product.

    Args:
        x: (B, Cin, H, W).
        offset: (B, 18, Ho, Wo) (dy, dx) per kernel tap, taps in row-major order.
        mask: (B, 9, Ho, Wo) modulation.
        weight: (Cout, Cin, 3, 3); bias: (Cout,) or None.

    Returns (B, Cout, Ho, Wo). ``grid_sample`` with ``padding_mode="zeros"`` reads zero for every bilinear corner
    outside the map, which is the DCN kernels' rule.
    """
    B, C, H, W = x.shape
    Ho, Wo = offset.shape[-2:]
    py, px = dyhead.deform_sample_points(offset, stride)  # (B, 9, Ho, Wo) sampling rows, columns in pixels
    # align_corners=False maps pixel p to (2p + 1) / size - 1 and back exactly, and is defined for size 1
    grid = torch.stack([(2.0 * px + 1.0) / W - 1.0, (2.0 * py + 1.0) / H - 1.0], dim=-1)
    grid = grid.view(B, 9 * Ho, Wo, 2)
    cols = F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="zeros", align_corners=False)
    cols = cols.view(B, C, 9, Ho * Wo) * mask.reshape(B, 1, 9, Ho * Wo).to(x.dtype)  # (B, Cin, 9, Ho*Wo)
    out = weight.reshape(weight.shape[0], C * 9) @ cols.reshape(B, C * 9, Ho * Wo)  # (B, Cout, Ho*Wo)
    if bias is not None:
        out = out + bias.view(1, -1, 1)
    return out.view(B, -1, Ho, Wo)


def sdpa_math(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` (inference) as MatMul + Softmax: (..., L, E) x (..., S, E) -> (..., L, Ev)."""
    if dropout_p:
        raise ValueError("attention dropout cannot be exported (export runs the model in eval mode)")
    if enable_gqa and key.shape[-3] != query.shape[-3]:
        repeat = query.shape[-3] // key.shape[-3]
        key = key.repeat_interleave(repeat, dim=-3)
        value = value.repeat_interleave(repeat, dim=-3)
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    scores = (query * scale) @ key.transpose(-2, -1)  # (..., L, S)
    L, S = scores.shape[-2], scores.shape[-1]
    if is_causal:
        causal = torch.ones(L, S, dtype=torch.bool, device=query.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attn_mask
    return scores.softmax(dim=-1) @ value


def same_conv_constant_padding(self, x: torch.Tensor) -> torch.Tensor:
    """``SameConv2d.forward`` for inputs whose height and width are multiples of the stride: TensorFlow's "same"
    padding ``(ceil(i / s) - 1) * s + k - i`` is then ``k - s``, a constant (extra pixel at the bottom/right)."""
    k, s = self.kernel_size[0], self.stride[0]
    p = max(k - s, 0)
    if p:
        x = F.pad(x, [p // 2, p - p // 2, p // 2, p - p // 2])
    return torch.nn.Conv2d.forward(self, x)


@contextlib.contextmanager
def export_friendly() -> Iterator[None]:
    """Swap in :func:`deform_conv_grid_sample`, :func:`sdpa_math` and :func:`same_conv_constant_padding` for the
    duration of an export."""

    saved = (
        dyhead.modulated_deform_conv,
        F.scaled_dot_product_attention,
        efficientnet.SameConv2d.forward,
    )
    dyhead.modulated_deform_conv = deform_conv_grid_sample
    F.scaled_dot_product_attention = sdpa_math
    efficientnet.SameConv2d.forward = same_conv_constant_padding
    try:
        yield
    finally:
        (
            dyhead.modulated_deform_conv,
            F.scaled_dot_product_attention,
            efficientnet.SameConv2d.forward,
        ) = saved
