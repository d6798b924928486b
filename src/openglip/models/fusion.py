"""Language-aware deep fusion: bi-directional image<->text cross-attention ("MHA-B") and the text-side BERT layer.

Shapes: B batch, N image locations over all pyramid levels, T tokens, Dv visual channels, Dl text channels,
E attention width, H heads, hd = E / H.

The cross-attention is GLIP's ``BiMultiHeadAttention`` computed in a re-associated but mathematically identical
order. GLIP projects every image location to E = 2048 channels three times (queries, image values, output),
which costs ``3 N Dv E`` multiply-adds. Because the text side is short, we fold the per-head projections into
the text side instead: the logits become ``v @ (Wq_h^T K_h)`` (an ``N x Dv x (H T)`` product), the image output
becomes ``softmax(A) @ (V_l,h Wout_h^T)`` and the text output ``(softmax(A^T) @ v) Wvv_h^T``. For GLIP-T at
800x1216 and an 8-token prompt this is about 100x fewer operations with the same parameters and the same
numbers up to float rounding (the conformance tests hold it to the official outputs).

On CUDA the image -> text half (a softmax over all N locations per head and token) runs as one fused
``F.scaled_dot_product_attention`` outside training-time dropout: its H*T rows are the queries of a single-head
attention whose keys and values are the N image features (``fused`` chooses). The text -> image half (a softmax over the T tokens
of each head) stays an explicit product: there the folded output projection sums the heads inside one GEMM,
where a fused kernel would write H outputs of N x Dv to add them afterwards.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UsageError

CLAMP = 50000.0  # GLIP clamps attention logits to +-50000 so that fp16 cannot overflow


class BiMultiHeadAttention(nn.Module):
    """Bi-directional multi-head attention between image locations and text tokens.

    Args:
        v_dim: Dv, image feature channels.
        l_dim: Dl, text feature channels.
        embed_dim: E, attention width (split over ``num_heads``).
        num_heads: H.
        dropout: dropout on both attention maps (training only).
        clamp: clamp logits to +-50000 as GLIP does.
    """

    def __init__(
        self,
        *,
        v_dim: int,
        l_dim: int,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.1,
        clamp: bool = True,
    ):
        super().__init__()
        if embed_dim % num_heads:
            raise UsageError(
                f"fusion width {embed_dim} is not divisible by its {num_heads} attention heads; change the model "
                "config so that it is"
            )
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.scale = self.head_dim**-0.5
        self.dropout = dropout
        self.clamp = clamp
        # the fused image -> text kernel: None = on CUDA only (on CPU its head width of Dv = 256 makes it slower
        # than the explicit product at prompt lengths of a few tokens: 381 vs 271 ms for GLIP-T, profiled)
        self.fused: bool | None = None
        self.v_proj = nn.Linear(v_dim, embed_dim)
        self.l_proj = nn.Linear(l_dim, embed_dim)
        self.values_v_proj = nn.Linear(v_dim, embed_dim)
        self.values_l_proj = nn.Linear(l_dim, embed_dim)
        self.out_v_proj = nn.Linear(embed_dim, v_dim)
        self.out_l_proj = nn.Linear(embed_dim, l_dim)
        for lin in (
            self.v_proj,
            self.l_proj,
            self.values_v_proj,
            self.values_l_proj,
            self.out_v_proj,
            self.out_l_proj,
        ):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(
        self, v: torch.Tensor, t: torch.Tensor, text_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """v: (B, N, Dv); t: (B, T, Dl); text_mask: (B, T), 1 for real tokens. Returns (dv (B,N,Dv), dl (B,T,Dl))."""
        B, N, Dv = v.shape
        T = t.shape[1]
        H, hd = self.num_heads, self.head_dim

        keys = self.l_proj(t).view(B, T, H, hd)  # (B, T, H, hd)
        w_q = self.v_proj.weight.view(H, hd, Dv)
        # logits A[b, n, h, t] = scale * (v W_q,h^T + b_q,h) . k[b, t, h]
        fold_q = torch.einsum("hdc,bthd->bcht", w_q, keys).reshape(B, Dv, H * T) * self.scale
        bias_q = torch.einsum("hd,bthd->bht", self.v_proj.bias.view(H, hd), keys).reshape(B, 1, H * T)
        logits = torch.baddbmm(bias_q * self.scale, v, fold_q).view(B, N, H, T)  # (B, N, H, T)
        if self.clamp:
            logits = logits.clamp(-CLAMP, CLAMP)

        # text -> image attention: softmax over tokens, padded tokens excluded. GLIP adds the raw 0/1 mask with
        # zeros replaced by -9e15, i.e. +1 on real tokens; softmax does not see the shift, we keep it anyway.
        if text_mask is not None:
            mask_bias = torch.where(text_mask > 0, 1.0, -9e15).to(logits.dtype)  # (B, T)
            attn_v = (logits + mask_bias[:, None, None, :]).softmax(dim=-1)
        else:
            attn_v = logits.softmax(dim=-1)
        attn_v = F.dropout(attn_v, self.dropout, self.training)

        # image -> text attention: softmax over all image locations (GLIP applies no mask on this side).
        fused = self.fused if self.fused is not None else v.is_cuda
        if not fused or (self.training and self.dropout > 0):
            logits_t = logits.permute(0, 2, 3, 1)  # (B, H, T, N)
            logits_t = logits_t - logits_t.amax(dim=-1, keepdim=True)
            if self.clamp:
                logits_t = logits_t.clamp(-CLAMP, CLAMP)
            attn_l = F.dropout(logits_t.softmax(dim=-1), self.dropout, self.training)  # (B, H, T, N)
            pooled = torch.bmm(attn_l.reshape(B, H * T, N), v).view(B, H, T, Dv)
            mass = attn_l.sum(-1)  # (B, H, T): 1 without dropout, not after it
        else:
            # Fused: every (head, token) row is one query over the same N keys = values = v, so the rows are
            # the queries of a single-head SDPA; the per-row bias b_q . k is constant over N and cancels in
            # the softmax, and the clamp after subtracting the row maximum cannot change it (exp(-5e4) = 0).
            queries = fold_q.view(B, Dv, H * T).transpose(1, 2)  # (B, H*T, Dv)
            pooled = F.scaled_dot_product_attention(
                queries.unsqueeze(1), v.unsqueeze(1), v.unsqueeze(1), scale=1.0
            ).view(B, H, T, Dv)
            mass = pooled.new_ones(B, H, T)

        # image output: sum_h attn_v[..., h, :] @ (V_l,h W_out,h^T)
        values_l = self.values_l_proj(t).view(B, T, H, hd)
        w_out_v = self.out_v_proj.weight.view(Dv, H, hd)
        fold_out = torch.einsum("bthd,chd->bhtc", values_l, w_out_v).reshape(B, H * T, Dv)
        delta_v = torch.baddbmm(self.out_v_proj.bias.expand(B, 1, Dv), attn_v.reshape(B, N, H * T), fold_out)

        # text output: (attn_l @ v) W_vv,h^T + (sum_n attn_l) b_vv,h, then the output projection
        w_vv = self.values_v_proj.weight.view(H, hd, Dv)
        values = torch.einsum("bhtc,hdc->bthd", pooled, w_vv)
        values = values + mass.permute(0, 2, 1)[..., None] * self.values_v_proj.bias.view(H, hd)
        delta_l = self.out_l_proj(values.reshape(B, T, H * hd))
        return delta_v, delta_l


class CrossModalFusion(nn.Module):
    """GLIP's VLFuse ("MHA-B"): pre-norm bi-directional attention with layer scale on both residuals.

    All pyramid levels are flattened into one sequence of N locations. As in GLIP, the residual is added to the
    *normalised* inputs (``v = LN(v) + gamma_v * dv``), not to the raw ones.

    Args:
        attn: the attention; its widths (Dv, Dl) are the block's.
        layer_scale_init: the initial value of both layer scales.
    """

    def __init__(self, attn: BiMultiHeadAttention, *, layer_scale_init: float):
        super().__init__()
        v_dim, l_dim = attn.out_v_proj.out_features, attn.out_l_proj.out_features
        self.norm_v = nn.LayerNorm(v_dim)
        self.norm_l = nn.LayerNorm(l_dim)
        self.attn = attn
        self.gamma_v = nn.Parameter(torch.full((v_dim,), float(layer_scale_init)))
        self.gamma_l = nn.Parameter(torch.full((l_dim,), float(layer_scale_init)))

    def forward(
        self, visual: list[torch.Tensor], text: torch.Tensor, text_mask: torch.Tensor | None
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """visual: per level (B, Dv, H_l, W_l); text: (B, T, Dl). Returns the updated pair in the same shapes."""
        B, C = visual[0].shape[:2]
        sizes = [f.shape[-2:] for f in visual]
        v = torch.cat([f.flatten(2).transpose(1, 2) for f in visual], dim=1)  # (B, N, Dv)
        v = self.norm_v(v)
        t = self.norm_l(text)
        dv, dt = self.attn(v, t, text_mask)
        v = v + self.gamma_v * dv
        t = t + self.gamma_l * dt
        out, start = [], 0
        v = v.transpose(1, 2)  # (B, Dv, N)
        for h, w in sizes:
            out.append(v[:, :, start : start + h * w].reshape(B, C, h, w))
            start += h * w
        return out, t


class TextLayer(nn.Module):
    """A BERT encoder layer for the text side of the fusion tower, with GLIP's +-50000 clamps.

    Shapes: ``forward(hidden (B, T, D), mask (B, T) keys, or (B, T, T) queries x keys) -> (B, T, D)``; the
    3-D mask makes the layer causal for captioning.
    """

    def __init__(
        self, *, hidden: int, heads: int, intermediate: int, dropout: float = 0.1, eps: float = 1e-12
    ):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.attn_out = nn.Linear(hidden, hidden)
        self.attn_norm = nn.LayerNorm(hidden, eps=eps)
        self.ffn_in = nn.Linear(hidden, intermediate)
        self.ffn_out = nn.Linear(intermediate, hidden)
        self.ffn_norm = nn.LayerNorm(hidden, eps=eps)
        self.dropout = nn.Dropout(dropout)
        for lin in (self.query, self.key, self.value, self.attn_out, self.ffn_in, self.ffn_out):
            nn.init.normal_(lin.weight, std=0.02)
            nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        B, T, D = x.shape
        hd = D // self.heads

        def split(t):
            return t.view(B, T, self.heads, hd).transpose(1, 2)  # (B, heads, T, hd)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        # Fused attention. GLIP clamps the explicit q.k logits to +-50000 so that fp16 cannot overflow; the fused
        # kernels accumulate the logits and the softmax in fp32, so the guard has nothing left to do (an fp32
        # logit beyond 5e4 would saturate the softmax with or without it).
        bias = None
        if mask is not None and mask.ndim == 3:  # (B, T, T): per-query key masks (causal captioning)
            bias = ((1.0 - mask.to(q.dtype)) * torch.finfo(q.dtype).min)[:, None]
        elif mask is not None:  # (B, 1, 1, T): dtype-min on padding, as transformers' BERT
            bias = ((1.0 - mask.to(q.dtype)) * torch.finfo(q.dtype).min)[:, None, None, :]
        p = self.dropout.p if self.training else 0.0
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p)
        ctx = ctx.transpose(1, 2).reshape(B, T, D)
        attn = self.attn_norm(self.dropout(self.attn_out(ctx)) + x)
        h = F.gelu(self.ffn_in(attn).clamp(-CLAMP, CLAMP)).clamp(-CLAMP, CLAMP)
        h = self.dropout(self.ffn_out(h)).clamp(-CLAMP, CLAMP)
        return self.ffn_norm(h + attn).clamp(-CLAMP, CLAMP)
