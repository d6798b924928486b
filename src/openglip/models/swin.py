"""Swin Transformer backbone (Liu et al., 2021) as used by GLIP-T/L.

Parameter names follow the original Swin code so official checkpoints map one to one. Behaviour that GLIP's copy
has and that matters for exact outputs is kept: the feature map is zero-padded to a multiple of the window size
*after* ``norm1``, padded tokens take part in attention, and shifted windows are separated with a -100 bias
(not -inf).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import DropPath


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


def _relative_position_index(window: int) -> torch.Tensor:
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)  # (N, N, 2)
    rel = rel + (window - 1)
    return rel[..., 0] * (2 * window - 1) + rel[..., 1]  # (N, N)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside non-overlapping windows, with a learned relative position bias."""

    def __init__(self, dim: int, window: int, num_heads: int):
        super().__init__()
        self.window = window
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", _relative_position_index(window))
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """x: (B, nW, N, C) windows; mask: (nW, N, N) additive or None. Returns (B, nW, N, C).

        One fused ``F.scaled_dot_product_attention`` call with the relative-position bias (plus the shift mask)
        as its additive ``attn_mask``: the (B, nW, heads, N, N) attention map is never written out.
        """
        B, nW, N, C = x.shape
        H, hd = self.num_heads, C // self.num_heads
        # (3, B, nW, H, N, hd), made contiguous once so that the views below are free
        qkv = self.qkv(x).view(B, nW, N, 3, H, hd).permute(3, 0, 1, 4, 2, 5).contiguous()
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = bias.view(N, N, H).permute(2, 0, 1)  # (H, N, N)
        if mask is None:  # windows are the batch, heads the head axis; the bias broadcasts over windows
            q, k, v = qkv.view(3, B * nW, H, N, hd).unbind(0)
            attn_bias = bias.unsqueeze(0).to(q.dtype)  # (1, H, N, N)
        else:  # (window, head) pairs as heads, so that the per-window shift mask broadcasts over the batch
            q, k, v = qkv.view(3, B, nW * H, N, hd).unbind(0)
            attn_bias = (bias.unsqueeze(0) + mask.unsqueeze(1)).reshape(1, nW * H, N, N).to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias, scale=self.scale)
        out = out.view(B, nW, H, N, hd).transpose(2, 3).reshape(B, nW, N, C)
        return self.proj(out)


def _partition(x: torch.Tensor, w: int) -> torch.Tensor:
    B, H, W, C = x.shape
    x = x.view(B, H // w, w, W // w, w, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(B, (H // w) * (W // w), w * w, C)


def _reverse(windows: torch.Tensor, w: int, H: int, W: int) -> torch.Tensor:
    B, _, _, C = windows.shape
    x = windows.view(B, H // w, W // w, w, w, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(B, H, W, C)


def _pad_to(x: torch.Tensor, Hp, Wp) -> torch.Tensor:
    """Zero-pad (B, H, W, C) at the bottom and right to (B, Hp, Wp, C).

    ``F.pad`` eagerly and under ``torch.compile``/``torch.export`` (symbolic sizes); two concatenations of zeros
    while a TorchScript trace (the ONNX exporter's) records it, since the trace would freeze ``F.pad``'s amounts
    at the example's size where the concatenated zeros keep theirs symbolic. Both give the same numbers.
    """
    B, H, W, C = x.shape
    if torch.jit.is_tracing():
        x = torch.cat([x, x.new_zeros(B, Hp - H, W, C)], dim=1)
        return torch.cat([x, x.new_zeros(B, Hp, Wp - W, C)], dim=2)
    return F.pad(x, (0, 0, 0, Wp - W, 0, Hp - H))


class SwinBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, window: int, shift: int, mlp_ratio: float, drop_path: float):
        super().__init__()
        self.window = window
        self.shift = shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, num_heads)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, H: int, W: int, shift_mask: torch.Tensor | None) -> torch.Tensor:
        """x: (B, H*W, C)."""
        B, L, C = x.shape
        w = self.window
        shortcut = x
        x = self.norm1(x).view(B, H, W, C)
        Hp, Wp = (H + w - 1) // w * w, (W + w - 1) // w * w  # whole windows
        x = _pad_to(x, Hp, Wp)
        if self.shift:
            x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2))
        x = self.attn(_partition(x, w), shift_mask if self.shift else None)
        x = _reverse(x, w, Hp, Wp)
        if self.shift:
            x = torch.roll(x, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x[:, :H, :W, :].reshape(B, L, C)
        x = shortcut + self.drop_path(x)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """2x2 neighbourhood concatenation then a linear reduction 4C -> 2C (odd sizes are zero-padded)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        B, _, C = x.shape
        x = x.view(B, H, W, C)
        if H % 2 or W % 2:
            x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x.view(B, -1, 4 * C)))


class SwinStage(nn.Module):
    def __init__(self, dim, depth, num_heads, window, mlp_ratio, drop_paths, downsample: bool):
        super().__init__()
        self.window = window
        self.shift = window // 2
        self.blocks = nn.ModuleList(
            SwinBlock(dim, num_heads, window, 0 if i % 2 == 0 else window // 2, mlp_ratio, drop_paths[i])
            for i in range(depth)
        )
        self.downsample = PatchMerging(dim) if downsample else None
        self._masks: dict = {}

    def _shift_mask(self, H: int, W: int, device) -> torch.Tensor:
        """(nW, N, N) additive mask of the shifted windows: -100 between tokens that the cyclic shift brought
        together from different regions. Along each axis the regions (0, 1, 2: before the last window, in the
        last window before the shift, in the shift) come from comparisons on ``arange``, not from assigning
        slices, so that a TorchScript trace keeps the sizes symbolic; the ids ``3 * row + col`` are the
        official code's region numbers."""
        w, s = self.window, self.shift
        Hp, Wp = (H + w - 1) // w * w, (W + w - 1) // w * w
        rows = torch.arange(Hp, device=device)
        cols = torch.arange(Wp, device=device)
        row_id = (rows >= Hp - w).long() + (rows >= Hp - s).long()  # (Hp,)
        col_id = (cols >= Wp - w).long() + (cols >= Wp - s).long()  # (Wp,)
        img = (row_id[:, None] * 3 + col_id[None, :]).to(torch.float32).view(1, Hp, Wp, 1)
        ids = _partition(img, w).reshape(-1, w * w)  # (nW, N)
        diff = ids.unsqueeze(1) - ids.unsqueeze(2)
        return torch.zeros_like(diff).masked_fill(diff != 0, -100.0)  # (nW, N, N)

    def forward(self, x, H, W):
        mask = None
        if len(self.blocks) > 1:
            key = (H, W, x.device, x.dtype)
            # a compiled graph folds the mask's ops; a traced one must record them (a cached mask would be
            # a constant of the example's size)
            cache = not (torch.compiler.is_compiling() or torch.jit.is_tracing())
            mask = self._masks.get(key) if cache else None
            if mask is None:  # ~20 small ops; built once per input size
                mask = self._shift_mask(H, W, x.device).to(x.dtype)
                if cache:
                    self._masks = {key: mask}  # the last size only: a new size replaces it
        for block in self.blocks:
            x = block(x, H, W, mask)
        return x


class PatchEmbed(nn.Module):
    def __init__(self, embed_dim: int, patch: int = 4):
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch, stride=patch)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x):
        H, W = x.shape[-2:]
        p = self.patch
        x = F.pad(x, (0, (p - W % p) % p, 0, (p - H % p) % p))
        x = self.proj(x)  # (B, C, H/4, W/4)
        h, w = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), h, w


class SwinTransformer(nn.Module):
    """Swin backbone returning stage outputs at strides 4/8/16/32.

    Args:
        embed_dim: channels of stage 0 (96 for Swin-T, 192 for Swin-L).
        depths, num_heads: blocks and heads per stage.
        window: window size (7 for Swin-T, 12 for Swin-L).
        out_indices: stages whose (LayerNorm-ed) outputs are returned; GLIP uses stages 1-3.

    ``forward`` returns a list of ``(B, C_i, H_i, W_i)`` tensors, one per ``out_indices`` entry.
    ``out_channels`` and ``strides`` describe them.
    """

    def __init__(
        self,
        *,
        embed_dim: int = 96,
        depths: tuple[int, ...] = (2, 2, 6, 2),
        num_heads: tuple[int, ...] = (3, 6, 12, 24),
        window: int = 7,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.2,
        out_indices: tuple[int, ...] = (1, 2, 3),
    ):
        super().__init__()
        self.out_indices = tuple(out_indices)
        self.patch_embed = PatchEmbed(embed_dim)
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.layers = nn.ModuleList()
        dims = [embed_dim * 2**i for i in range(len(depths))]
        for i, depth in enumerate(depths):
            start = sum(depths[:i])
            self.layers.append(
                SwinStage(
                    dims[i],
                    depth,
                    num_heads[i],
                    window,
                    mlp_ratio,
                    rates[start : start + depth],
                    downsample=i < len(depths) - 1,
                )
            )
        for i in self.out_indices:
            # GLIP's "RETINANET" variant leaves stage 0 un-normalised; other returned stages get a LayerNorm.
            self.add_module(f"norm{i}", nn.LayerNorm(dims[i]) if i > 0 else nn.Identity())
        self.out_channels = [dims[i] for i in self.out_indices]
        self.strides = [4 * 2**i for i in self.out_indices]
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def _stages(self, x: torch.Tensor) -> list[tuple[torch.Tensor, int, int]]:
        """Raw output of every stage as ``(tokens (B, H*W, C), H, W)``, before the output norms."""
        x, H, W = self.patch_embed(x)
        outs = []
        for stage in self.layers:
            x = stage(x, H, W)
            outs.append((x, H, W))
            if stage.downsample is not None:
                x = stage.downsample(x, H, W)
                H, W = (H + 1) // 2, (W + 1) // 2
        return outs

    def forward(self, x: torch.Tensor, all_stages: bool = False) -> list[torch.Tensor]:
        """Feature maps ``(B, C_i, H_i, W_i)`` for ``out_indices`` (or the raw output of every stage)."""
        stages = self._stages(x)
        indices = range(len(stages)) if all_stages else self.out_indices
        outs = []
        for i in indices:
            tokens, H, W = stages[i]
            if not all_stages:
                tokens = getattr(self, f"norm{i}")(tokens)
            outs.append(tokens.transpose(1, 2).reshape(tokens.shape[0], -1, H, W))
        return outs
