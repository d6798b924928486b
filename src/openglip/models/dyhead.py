"""DyHead blocks (Dai et al., 2021) as GLIP uses them: scale-aware attention over three neighbouring pyramid
levels, spatial attention through modulated deformable 3x3 convs, task attention through dynamic ReLU.

Shapes: B batch, C channels, (H_l, W_l) the size of pyramid level l, L levels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from .layers import h_sigmoid
from .vl_heads import causal_mask, prefix_mask


def modulated_deform_conv(
    x: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: int = 1,
) -> torch.Tensor:
    """Modulated deformable 3x3 conv (DCNv2) with padding 1.

    Args:
        x: (B, Cin, H, W) input.
        offset: (B, 18, Ho, Wo) sampling offsets, (dy, dx) per kernel tap in row-major tap order.
        mask: (B, 9, Ho, Wo) modulation in [0, 1].
        weight: (Cout, Cin, 3, 3); bias: (Cout,) or None.

    Returns (B, Cout, Ho, Wo). Samples outside the input read zeros, as in the CUDA kernels of mmcv/GLIP.

    On CUDA this calls ``torchvision.ops.deform_conv2d``. On CPU, where that kernel is slow, the bilinear
    gathers are done by ``F.embedding_bag`` (4 weighted rows per sample, the mask folded into the weights)
    and the convolution is one matrix product; both are differentiable in every input.
    """
    if x.is_cuda:
        return torchvision.ops.deform_conv2d(x, offset, weight, bias, stride=stride, padding=1, mask=mask)
    B, C, H, W = x.shape
    Ho, Wo = offset.shape[-2:]
    dev = x.device
    py, px = deform_sample_points(offset, stride)
    y0f, x0f = py.floor(), px.floor()
    ly, lx = py - y0f, px - x0f
    hy, hx = 1.0 - ly, 1.0 - lx
    y0, x0 = y0f.long(), x0f.long()
    ys = torch.stack([y0, y0, y0 + 1, y0 + 1], dim=-1)  # (B, 9, Ho, Wo, 4) corner rows
    xs = torch.stack([x0, x0 + 1, x0, x0 + 1], dim=-1)
    weights = torch.stack([hy * hx, hy * lx, ly * hx, ly * lx], dim=-1) * mask.view(B, 9, Ho, Wo, 1)
    inside = (ys >= 0) & (ys < H) & (xs >= 0) & (xs < W)
    image_base = (torch.arange(B, device=dev) * (H * W)).view(B, 1, 1, 1, 1)
    zero_row = B * H * W
    index = torch.where(inside, image_base + ys * W + xs, zero_row)
    weights = weights * inside
    # rows ordered (b, y, x, tap) so that each output location owns 9*Cin contiguous columns
    index = index.permute(0, 2, 3, 1, 4).reshape(-1, 4)
    weights = weights.permute(0, 2, 3, 1, 4).reshape(-1, 4).to(x.dtype)
    table = torch.cat([x.permute(0, 2, 3, 1).reshape(B * H * W, C), x.new_zeros(1, C)], dim=0)
    cols = F.embedding_bag(index, table, per_sample_weights=weights, mode="sum")  # (B*Ho*Wo*9, Cin)
    cols = cols.view(B * Ho * Wo, 9 * C)
    w = weight.permute(0, 2, 3, 1).reshape(weight.shape[0], 9 * C)  # (Cout, tap*Cin)
    out = cols @ w.t() if bias is None else torch.addmm(bias, cols, w.t())
    return out.view(B, Ho, Wo, -1).permute(0, 3, 1, 2)


def deform_sample_points(offset: torch.Tensor, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Where a deformable 3x3 conv with padding 1 samples: ``(rows, columns)`` in input pixels, each
    (B, 9, Ho, Wo), for ``offset`` (B, 18, Ho, Wo) = (dy, dx) per kernel tap, taps in row-major order."""
    B, _, Ho, Wo = offset.shape
    dev, dt = offset.device, offset.dtype
    taps = torch.arange(3, device=dev, dtype=dt) - 1
    ky = taps.view(3, 1).expand(3, 3).reshape(1, 9, 1, 1)
    kx = taps.view(1, 3).expand(3, 3).reshape(1, 9, 1, 1)
    base_y = (torch.arange(Ho, device=dev, dtype=dt) * stride).view(1, 1, Ho, 1)
    base_x = (torch.arange(Wo, device=dev, dtype=dt) * stride).view(1, 1, 1, Wo)
    off = offset.view(B, 9, 2, Ho, Wo)
    return base_y + ky + off[:, :, 0], base_x + kx + off[:, :, 1]


class DeformConvNorm(nn.Module):
    """3x3 conv (deformable or plain) followed by GroupNorm."""

    def __init__(self, channels: int, *, stride: int, deformable: bool, groups: int):
        super().__init__()
        self.stride = stride
        self.deformable = deformable
        self.conv = nn.Conv2d(channels, channels, 3, stride=stride, padding=1)
        self.norm = nn.GroupNorm(groups, channels)
        nn.init.normal_(self.conv.weight, std=0.01)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x, offset=None, mask=None):
        if self.deformable:
            x = modulated_deform_conv(x, offset, mask, self.conv.weight, self.conv.bias, self.stride)
        else:
            x = self.conv(x)
        return self.norm(x)


class DyReLU(nn.Module):
    """Dynamic ReLU-B: ``max(a1 x + b1, a2 x + b2)`` with coefficients predicted per channel from the pooled map."""

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        self.fc1 = nn.Linear(channels, channels // reduction)
        self.fc2 = nn.Linear(channels // reduction, 4 * channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C = x.shape[:2]
        y = h_sigmoid(self.fc2(F.relu(self.fc1(x.mean(dim=(2, 3))))))
        a1, b1, a2, b2 = y.view(B, 4 * C, 1, 1).split(C, dim=1)
        a1 = (a1 - 0.5) * 2.0 + 1.0
        a2 = (a2 - 0.5) * 2.0
        return torch.maximum(x * a1 + (b1 - 0.5), x * a2 + (b2 - 0.5))


def _reread_offsets(t: torch.Tensor, size) -> torch.Tensor:
    """Official GLIP quirk: the CUDA DCN kernel reads the first ``c*h*w`` numbers of each image's level-l map as
    if they were a ``(c, h, w)`` map of the coarser level. Reproduced only in the official presets."""
    B, c = t.shape[:2]
    h, w = size
    return t.reshape(B, -1)[:, : c * h * w].reshape(B, c, h, w)


class DyConv(nn.Module):
    """One DyHead block on the visual side.

    For each level l it mixes three 3x3 convs, on level l (``same``), on level l-1 with stride 2 (``finer``) and
    on level l+1 upsampled bilinearly (``coarser``), weighted by a hard-sigmoid scale attention, then applies
    DyReLU. The deformable offsets and masks come from one 27-channel conv on level l.

    Args:
        channels: C.
        deformable: modulated deformable convs (else plain convs).
        dyrelu: DyReLU (else ReLU).
        groups: GroupNorm groups.
        official_quirk: reproduce the official offset re-reading for the ``coarser`` conv; otherwise the
            ``coarser`` conv uses the offsets computed on level l+1 itself.
        residual: return ``input + block(input)``. Not in GLIP: there the block replaces its input, which a
            freshly initialised tower turns into an information bottleneck (colour, for one, is largely lost
            after two blocks) that only long training opens; the residual keeps it open from the start.
    """

    def __init__(
        self,
        channels: int,
        *,
        deformable: bool,
        dyrelu: bool,
        groups: int,
        official_quirk: bool,
        residual: bool = False,
    ):
        super().__init__()
        self.official_quirk = official_quirk
        self.residual = residual
        self.coarser = DeformConvNorm(channels, stride=1, deformable=deformable, groups=groups)
        self.same = DeformConvNorm(channels, stride=1, deformable=deformable, groups=groups)
        self.finer = DeformConvNorm(channels, stride=2, deformable=deformable, groups=groups)
        self.scale_attn = nn.Conv2d(channels, 1, kernel_size=1)
        nn.init.normal_(self.scale_attn.weight, std=0.01)
        nn.init.zeros_(self.scale_attn.bias)
        self.dyrelu = DyReLU(channels) if dyrelu else None
        self.offset = nn.Conv2d(channels, 27, kernel_size=3, padding=1) if deformable else None
        if self.offset is not None:
            nn.init.zeros_(self.offset.weight)
            nn.init.zeros_(self.offset.bias)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """feats: per level (B, C, H_l, W_l). Returns the same shapes."""
        L = len(feats)
        offsets: list = [None] * L
        masks: list = [None] * L
        if self.offset is not None:
            for level, f in enumerate(feats):
                om = self.offset(f)
                offsets[level], masks[level] = om[:, :18], om[:, 18:].sigmoid()
        out = []
        for level, f in enumerate(feats):
            parts = [self.same(f, offsets[level], masks[level])]
            if level > 0:
                parts.append(self.finer(feats[level - 1], offsets[level], masks[level]))
            if level < L - 1:
                nxt = feats[level + 1]
                if self.offset is None:
                    off, msk = None, None
                elif self.official_quirk:
                    off = _reread_offsets(offsets[level], nxt.shape[-2:])
                    msk = _reread_offsets(masks[level], nxt.shape[-2:])
                else:
                    off, msk = offsets[level + 1], masks[level + 1]
                coarse = self.coarser(nxt, off, msk)
                parts.append(F.interpolate(coarse, size=f.shape[-2:], mode="bilinear", align_corners=True))
            stacked = torch.stack(parts)  # (P, B, C, H, W)
            attn = torch.stack([F.relu(self.scale_attn(p.mean(dim=(2, 3), keepdim=True))) for p in parts])
            mixed = (stacked * h_sigmoid(attn)).mean(dim=0)
            y = self.dyrelu(mixed) if self.dyrelu is not None else F.relu(mixed)
            out.append(f + y if self.residual else y)
        return out


class FusionBlock(nn.Module):
    """One layer of the VL-DyHead tower: cross-modal fusion, a BERT layer on text, a DyConv on the image.

    Without ``cross_attn`` and ``text_layer`` (late fusion) the block is a plain DyHead block: the text passes
    through unchanged and the image side never sees it.
    """

    def __init__(self, cross_attn: nn.Module | None, text_layer: nn.Module | None, dyconv: DyConv):
        super().__init__()
        self.cross_attn = cross_attn
        self.text_layer = text_layer
        self.dyconv = dyconv

    def forward(self, visual, text, text_mask, causal: bool = False):
        """``causal`` (captioning, see :mod:`openglip.models.vl_heads`): the image attends only to [CLS] and the
        text layer attends causally, so no token sees a later one through either modality. Late fusion (no
        ``cross_attn``): the image features never see the text."""
        cross_mask = text_layer_mask = text_mask
        if causal:
            cross_mask, text_layer_mask = prefix_mask(text_mask), causal_mask(text_mask)
        if self.cross_attn is not None:
            visual, text = self.cross_attn(visual, text, cross_mask)
        if self.text_layer is not None:
            text = self.text_layer(text, text_layer_mask)
        return self.dyconv(visual), text


class FusionTower(nn.Module):
    """Stack of :class:`FusionBlock`. ``forward(visual, text (B,T,Dt), mask (B,T)) -> (visual, text)``."""

    def __init__(self, blocks: list[FusionBlock]):
        super().__init__()
        self.layers = nn.ModuleList(blocks)

    def forward(
        self,
        visual: list[torch.Tensor],
        text: torch.Tensor,
        text_mask: torch.Tensor | None,
        causal: bool = False,
    ):
        for block in self.layers:
            visual, text = (
                block(visual, text, text_mask, causal=True) if causal else block(visual, text, text_mask)
            )
        return visual, text
