"""GLIPv2's understanding heads on top of the deep-fusion tower: masked language modelling (pre-training),
visual question answering and captioning, plus the masks that make the tower causal for captioning.

Shapes: B batch, T tokens, Dt text width, V word-piece vocabulary (30522), A answers.

Captioning and causality. In detection/VQA mode the image side of every fusion layer attends to all text tokens.
With teacher forcing that would leak the future: token t+1 changes the image features of layer l, which token t
reads at layer l+1. In caption mode (:func:`caption_masks`) the text side attends causally to text (the text
encoder and every tower text layer get a lower-triangular mask) and fully to the image, while the image side
attends only to the start token [CLS] (position 0, the same for every caption, and itself causal). The image
features therefore never depend on the caption, and the logits of tokens <= t depend only on tokens <= t
(bitwise: masked weights are exact zeros). The alternative, letting the image attend to a growing prefix, would
need a separate image pass per prefix length; the fixed [CLS] prefix keeps one image pass per caption.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn

from ..checkpoints import CheckpointError

IGNORE = -100  # label of positions without a target (cross-entropy's ignore_index)


class LMHead(nn.Module):
    """BERT's language-modelling head: dense + GELU + LayerNorm, then a decoder tied to the word embeddings.

    The decoder weight is the text encoder's word-embedding matrix, passed to :meth:`forward` (not stored here, so
    the tie survives saving to safetensors, which refuses shared tensors); only its bias is this module's.

    Shapes: ``forward(hidden (..., Dt), embeddings (V, Dt)) -> logits (..., V)``.
    """

    def __init__(self, hidden: int, vocab_size: int, eps: float = 1e-12):
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.norm = nn.LayerNorm(hidden, eps=eps)
        self.bias = nn.Parameter(torch.zeros(vocab_size))
        nn.init.normal_(self.dense.weight, std=0.02)
        nn.init.zeros_(self.dense.bias)

    def forward(self, hidden: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        h = self.norm(F.gelu(self.dense(hidden)))
        return F.linear(h, embeddings, self.bias)


class VQAHead(nn.Module):
    """Answer classifier on the fused [CLS] token of the question.

    The [CLS] feature also queries the tower's fused image features once (one attention-pooling step: after a
    detection pre-training the [CLS] token's own image attention is close to a global average, which a short
    fine-tuning does not sharpen), and an MLP (GLIPv2/ViLT-style) classifies ``[CLS, pooled image]``.

    Shapes: ``forward(cls (B, Dt), visual: per level (B, C, H_l, W_l)) -> logits (B, A)``.
    """

    def __init__(self, hidden: int, num_answers: int, visual_dim: int):
        super().__init__()
        self.num_answers = num_answers
        self.query = nn.Linear(hidden, visual_dim)
        self.mlp = nn.Sequential(
            nn.Linear(hidden + visual_dim, 2 * hidden),
            nn.GELU(),
            nn.LayerNorm(2 * hidden),
            nn.Linear(2 * hidden, num_answers),
        )

    def forward(self, cls: torch.Tensor, visual: list[torch.Tensor]) -> torch.Tensor:
        v = torch.cat([f.flatten(2) for f in visual], dim=2).transpose(1, 2)  # (B, N, C)
        q = self.query(cls)  # (B, C)
        attn = (torch.einsum("bnc,bc->bn", v, q) / v.shape[-1] ** 0.5).softmax(dim=1)  # (B, N)
        pooled = torch.einsum("bn,bnc->bc", attn, v)  # (B, C)
        return self.mlp(torch.cat([cls, pooled.to(cls.dtype)], dim=-1))


# --------------------------------------------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------------------------------------------


def causal_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) key mask -> (B, T, T) bool mask: query t sees keys <= t that are real tokens."""
    T = attention_mask.shape[1]
    tril = torch.ones(T, T, dtype=torch.bool, device=attention_mask.device).tril()
    return tril[None] & attention_mask.bool()[:, None, :]


def prefix_mask(attention_mask: torch.Tensor, length: int = 1) -> torch.Tensor:
    """(B, T) mask of the first ``length`` tokens (what the image side attends to in caption mode)."""
    out = torch.zeros_like(attention_mask)
    out[:, :length] = attention_mask[:, :length]
    return out


# --------------------------------------------------------------------------------------------------------------
# Answer vocabulary (kept in the safetensors file's metadata beside the head it belongs to)
# --------------------------------------------------------------------------------------------------------------

ANSWERS_KEY = "openglip_answers"


def read_answer_vocab(path: str | os.PathLike, num_answers: int) -> list[str]:
    """The answer vocabulary stored in a safetensors file (or a JSON list file), checked against the head size.

    Raises:
        CheckpointError: no vocabulary in the file, or its size differs from the head's ``num_answers``.
    """

    path = os.fspath(path)
    if path.endswith(".json"):
        try:
            answers = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise CheckpointError(f"cannot read answer vocabulary {path}: {err}") from None
    else:
        try:
            with safe_open(path, framework="pt") as f:
                meta = f.metadata() or {}
        except Exception as err:
            raise CheckpointError(f"cannot read {path}: {err}") from None
        if ANSWERS_KEY not in meta:
            raise CheckpointError(f"{path} has a VQA head but no answer vocabulary in its metadata")
        answers = json.loads(meta[ANSWERS_KEY])
    if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
        raise CheckpointError(f"{path}: the answer vocabulary must be a JSON list of strings")
    if len(answers) != num_answers:
        raise CheckpointError(
            f"{path}: answer vocabulary of {len(answers)} answers does not match the VQA head's {num_answers}"
        )
    return answers
