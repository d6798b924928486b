"""RegionCLIP's pretraining losses and the transferred detector's losses, on plain tensors.

Pretraining (Zhong et al., 2022, Sec. 3.3): a region-text contrastive loss against the concept pool with the
teacher's best concept as target, an image-text contrastive loss on image-caption pairs across the batch, and
a KL distillation of the teacher's concept distribution. Transfer: a softmax cross-entropy over the class
names plus background with focal scaling and a background weight, and a class-agnostic box regression.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def region_text_contrastive(
    region_emb: torch.Tensor,
    concept_emb: torch.Tensor,
    target: torch.Tensor,
    logit_scale: torch.Tensor | float,
) -> torch.Tensor:
    """``mean_k -log softmax_c(scale * <v_k, l_c>)[target_k]``: each region against every concept of the pool.

    Args:
        region_emb: ``(K, D)`` unit student region embeddings.
        concept_emb: ``(C, D)`` unit concept embeddings.
        target: ``(K,)`` the teacher's best concept per region.
        logit_scale: inverse temperature (a learned scalar tensor or a float).

    Returns:
        A scalar; 0 (still in the graph) when ``K == 0``.
    """
    logits = logit_scale * region_emb @ concept_emb.t()  # (K, C)
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    return F.cross_entropy(logits, target)


def image_text_contrastive(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    logit_scale: torch.Tensor | float,
    positives: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE between the images and captions of a batch (CLIP's loss).

    Args:
        image_emb: ``(B, D)`` unit image embeddings.
        text_emb: ``(B, D)`` unit caption embeddings (pair ``i`` is ``(image i, caption i)``).
        logit_scale: inverse temperature.
        positives: optional ``(B, B)`` bool, ``True`` where caption ``j`` also describes image ``i`` (e.g. equal
            captions); the target then spreads evenly over a row's positives. Default: the identity.

    Returns:
        ``(CE(image -> text) + CE(text -> image)) / 2``, a scalar.
    """
    logits = logit_scale * image_emb @ text_emb.t()  # (B, B)
    if positives is None:
        labels = torch.arange(len(logits), device=logits.device)
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
    pos = positives.to(logits.dtype)
    if bool((pos.diagonal() == 0).any()):
        raise ValueError("positives must include every matching pair (its diagonal must be True)")
    rows = pos / pos.sum(1, keepdim=True)
    cols = pos.t() / pos.t().sum(1, keepdim=True)
    return (F.cross_entropy(logits, rows) + F.cross_entropy(logits.t(), cols)) / 2


def distillation_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """``T^2 * mean_k KL(softmax(t_k / T) || softmax(s_k / T))`` (Hinton et al.'s scaling keeps gradients
    comparable across temperatures). The teacher side carries no gradient.

    Args:
        student_logits: ``(K, C)`` the student's region-concept logits.
        teacher_logits: ``(K, C)`` the teacher's.
        temperature: ``T``.

    Returns:
        A scalar; 0 (still in the graph) when ``K == 0``.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} vs teacher {tuple(teacher_logits.shape)}"
        )
    if student_logits.shape[0] == 0:
        return student_logits.sum() * 0.0
    log_p = F.log_softmax(student_logits / temperature, dim=-1)
    log_q = F.log_softmax(teacher_logits.detach() / temperature, dim=-1)
    kl = (log_q.exp() * (log_q - log_p)).sum(-1)  # (K,)
    return kl.mean() * temperature**2


def focal_softmax_loss(
    logits: torch.Tensor, labels: torch.Tensor, *, gamma: float = 0.5, background_weight: float = 1.0
) -> torch.Tensor:
    """Softmax cross-entropy with focal scaling and a background weight (RegionCLIP's detection loss).

    The last column of ``logits`` is background. Per RoI ``l_i = -w_{y_i} (1 - p_{i,y_i})^gamma log p_{i,y_i}``
    with ``w = background_weight`` for background and 1 otherwise; the loss is ``sum_i l_i / sum_i w_{y_i}``
    (the weighted mean of ``F.cross_entropy(weight=...)``, to which it reduces at ``gamma = 0``).

    Args:
        logits: ``(N, C + 1)``.
        labels: ``(N,)`` in ``0..C`` (``C`` = background).
        gamma: focal exponent.
        background_weight: weight of background RoIs.

    Returns:
        A scalar; 0 (still in the graph) when ``N == 0``.
    """
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    log_p = F.log_softmax(logits, dim=-1).gather(1, labels[:, None])[:, 0]  # (N,)
    weight = torch.where(labels == logits.shape[1] - 1, background_weight, 1.0).to(log_p)
    focal = (1 - log_p.exp()).clamp(min=0) ** gamma if gamma else 1.0
    return -(weight * focal * log_p).sum() / weight.sum().clamp(min=1e-6)


def compatible_concepts(classes: list[str], concepts: list[str]) -> torch.Tensor:
    """``(C, P)`` bool: concept ``p`` also describes class ``c`` (one's words contain the other's, e.g. "small red
    circle" or "circle" for "red circle"), so it is never that class's negative."""
    class_words = [set(c.lower().split()) for c in classes]
    concept_words = [set(p.lower().split()) for p in concepts]
    return torch.tensor(
        [[cw <= pw or pw <= cw for pw in concept_words] for cw in class_words], dtype=torch.bool
    ).reshape(len(classes), len(concepts))


def with_concept_negatives(
    logits: torch.Tensor,
    labels: torch.Tensor,
    region_emb: torch.Tensor,
    negatives: torch.Tensor,
    compatible: torch.Tensor,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Add the concept pool to a foreground RoI's softmax as negatives (background RoIs are left as they were).

    Closed-set transfer pushes a region away from the training classes only; in a text space where the class
    words nearly cancel out (the pool-centred one), "away from every training class" points at the words no box
    names, so the never-trained classes end up winning every region. With the caption concepts as negatives
    a foreground RoI must beat every concept that does not describe it, the never-trained names included (they
    come from the captions, not from the detection labels). Background RoIs get no concept negatives: unlabelled
    objects of novel classes are background there, as in OV-COCO, and must not be pushed off their names.

    Args:
        logits: ``(N, C + 1)`` class logits, background last.
        labels: ``(N,)`` targets in ``0..C`` (``C`` = background).
        region_emb: ``(N, D)`` unit region embeddings.
        negatives: ``(P, D)`` unit concept embeddings (not the class names themselves).
        compatible: ``(C, P)`` from :func:`compatible_concepts`.
        temperature: the classifier's ``T``.

    Returns:
        ``(logits (N, C + P + 1), labels)`` with background still last and the labels remapped to it.
    """
    c = logits.shape[1] - 1
    extra = region_emb @ negatives.t() / temperature  # (N, P)
    blocked = torch.cat([compatible, compatible.new_ones(1, compatible.shape[1])]).to(labels.device)
    extra = extra.masked_fill(blocked[labels], float("-inf"))  # background rows: every concept
    out = torch.cat([logits[:, :c], extra, logits[:, c:]], dim=1)
    return out, torch.where(labels == c, c + negatives.shape[0], labels)


def box_regression_loss(
    deltas: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor, background: int
) -> torch.Tensor:
    """Faster R-CNN's smooth-L1 (beta 1/9) on the foreground RoIs' class-agnostic deltas, summed and divided by
    the number of RoIs.

    Args:
        deltas: ``(N, 4)`` predicted box deltas.
        targets: ``(N, 4)`` encoded targets (rows of background RoIs are ignored).
        labels: ``(N,)`` RoI labels; ``background`` marks background.
        background: the background label.
    """
    fg = labels != background
    if deltas.shape[0] == 0:
        return deltas.sum() * 0.0
    return F.smooth_l1_loss(deltas[fg], targets[fg], beta=1 / 9, reduction="sum") / deltas.shape[0]
