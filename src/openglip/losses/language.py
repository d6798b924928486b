"""GLIPv2's language losses: masked language modelling (pre-training), next-token captioning, and VQA's soft-score
binary cross-entropy. The heads are in :mod:`openglip.models.vl_heads`."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models.vl_heads import IGNORE, LMHead


def mask_tokens(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    mask_token_id: int,
    special_ids: tuple[int, ...],
    vocab_size: int,
    probability: float = 0.15,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking: each real, non-special token is chosen with ``probability``; a chosen token becomes
    [MASK] with probability 0.8, a random word piece with 0.1, and stays itself with 0.1.

    Returns:
        (masked input ids (B, T), labels (B, T): the original id at chosen positions, -100 elsewhere).
    """
    device = input_ids.device
    draw = torch.rand(input_ids.shape, generator=generator, device=device)
    kind = torch.rand(input_ids.shape, generator=generator, device=device)
    random_ids = torch.randint(vocab_size, input_ids.shape, generator=generator, device=device)
    special = torch.zeros_like(input_ids, dtype=torch.bool)
    for sid in special_ids:
        special |= input_ids == sid
    chosen = (draw < probability) & attention_mask.bool() & ~special
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE))
    masked = torch.where(chosen & (kind < 0.8), torch.full_like(input_ids, mask_token_id), input_ids)
    masked = torch.where(chosen & (kind >= 0.8) & (kind < 0.9), random_ids, masked)
    return masked, labels


def mlm_loss(
    head: LMHead, fused_text: torch.Tensor, labels: torch.Tensor, embeddings: torch.Tensor
) -> torch.Tensor:
    """Cross-entropy of the masked tokens, predicted from the fused text features (B, T, Dt).

    Only the chosen positions go through the (V-wide) decoder; with none chosen the loss is 0 but stays in the
    graph (every rank of a DDP run must produce gradients for the head)."""
    chosen = labels != IGNORE
    if not bool(chosen.any()):
        return head(fused_text[:, :1], embeddings).sum() * 0.0
    logits = head(fused_text[chosen], embeddings)  # (M, V)
    return F.cross_entropy(logits.float(), labels[chosen])


def caption_loss(logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy: position t predicts token t+1 (the last real token, [SEP], ends the caption).

    Args:
        logits: (B, T, V) from the caption head on the causally fused text.
        input_ids, attention_mask: (B, T) the teacher-forced caption, ``[CLS] w1 .. wn [SEP]`` + padding.
    """
    targets = input_ids[:, 1:].masked_fill(attention_mask[:, 1:] == 0, IGNORE)  # (B, T-1)
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))


def vqa_loss(logits: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """VQAv2's soft-score binary cross-entropy: every answer is a binary target with its soft score (see
    :func:`openglip.data.vqa.answer_scores`), summed over answers and averaged over questions (as in the
    bottom-up-attention VQA recipe: the mean BCE times the number of answers).

    Args:
        logits: (B, A); scores: (B, A) in [0, 1].
    """
    return F.binary_cross_entropy_with_logits(logits.float(), scores, reduction="sum") / max(len(logits), 1)
