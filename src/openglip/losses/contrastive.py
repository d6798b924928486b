"""GLIPv2's inter-image region-word contrastive loss.

GLIP's alignment loss only contrasts a region with the words of its own caption. GLIPv2 adds a loss computed
on the *pre-fusion* features (FPN features at the positive anchors, text-encoder token features), between
every region and every word of the whole batch (gathered across ranks): the other images' phrases become
negatives, and a phrase equal to a region's phrase in another image's caption is a positive there too
(label propagation). As in GLIP's implementation (its "shallow contrastive loss") both sides are projected to a
small joint space and normalised, scaled by a learned temperature, and trained with a softmax cross-entropy
whose targets are the positives spread evenly, in both directions (region -> words and word -> regions).

Shapes: R regions in the batch, W words (real tokens of all captions), d joint dimension.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..distributed import mean_over_ranks
from ..models.contrastive import InterImageContrastive


def soft_cross_entropy(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Sum over rows with at least one positive of ``-sum_j t_j log softmax(logits)_j`` with ``t`` the
    positives normalised to sum to 1 (GLIP's ``NllSoftMaxLoss``)."""
    rows = positives.any(dim=1)
    if not bool(rows.any()):
        return logits.sum() * 0.0
    target = positives[rows].float()
    target = target / target.sum(dim=1, keepdim=True)
    return -(target * logits[rows].log_softmax(dim=1)).sum()


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_padded(x: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate (features, ids) from every rank; ranks may hold different counts.

    Rows are padded to the largest count with id -2 (matches nothing) and the padding is dropped after the
    gather. The local rows keep their gradient; the other ranks' rows are constants, as in CLIP-style losses.
    """
    rank, world = _world()
    if world == 1:
        return x, ids
    n = torch.tensor([x.shape[0]], device=x.device)
    counts = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(counts, n)
    counts = [int(c) for c in counts]
    top = max(counts)
    pad_x = torch.cat([x.detach(), x.new_zeros(top - x.shape[0], x.shape[1])])
    pad_ids = torch.cat([ids, ids.new_full((top - ids.shape[0],), -2)])
    xs = [torch.zeros_like(pad_x) for _ in range(world)]
    id_parts = [torch.zeros_like(pad_ids) for _ in range(world)]
    dist.all_gather(xs, pad_x.contiguous())
    dist.all_gather(id_parts, pad_ids.contiguous())
    xs[rank] = torch.cat([x, x.new_zeros(top - x.shape[0], x.shape[1])])
    feats = torch.cat([part[:c] for part, c in zip(xs, counts)])
    all_ids = torch.cat([part[:c] for part, c in zip(id_parts, counts)])
    return feats, all_ids


def region_word_loss(
    module: InterImageContrastive,
    regions: torch.Tensor,
    region_ids: torch.Tensor,
    words: torch.Tensor,
    word_ids: torch.Tensor,
) -> torch.Tensor:
    """Inter-image loss over the batch (and all ranks).

    Args:
        regions: (R, D) pre-fusion features of positive regions.
        region_ids: (R,) phrase id of each region's phrase (same phrase text -> same id across images).
        words: (W, Dt) pre-fusion features of the real tokens of every caption.
        word_ids: (W,) phrase id of the phrase each token belongs to, -1 for tokens outside any phrase.

    Returns:
        The loss, summed over both directions and halved (normalise it by the number of positives).
    """
    r = F.normalize(module.image_proj(regions), dim=-1)
    w = F.normalize(module.text_proj(words), dim=-1)
    r_all, r_ids = gather_padded(r, region_ids)
    w_all, w_ids = gather_padded(w, word_ids)
    scale = module.log_scale.exp()
    # each rank scores its own regions against every word, and its own words against every region
    region_logits = r @ w_all.t() / scale  # (R_local, W_all)
    word_logits = w @ r_all.t() / scale  # (W_local, R_all)
    pos_r = (region_ids[:, None] == w_ids[None, :]) & (w_ids[None, :] >= 0)
    pos_w = (word_ids[:, None] == r_ids[None, :]) & (word_ids[:, None] >= 0)
    return (soft_cross_entropy(region_logits, pos_r) + soft_cross_entropy(word_logits, pos_w)) / 2


def inter_image_loss(
    module: InterImageContrastive,
    output,
    targets,
    matched: list[torch.Tensor],
    token_phrase_ids: torch.Tensor,
    max_regions: int = 100,
) -> torch.Tensor:
    """GLIPv2's inter-image loss of a batch, normalised by the regions used (averaged over ranks).

    Regions are the pre-fusion FPN features at ATSS-positive anchors (at most ``max_regions`` per image,
    sampled with the global torch RNG so that resumed runs repeat it), labelled with their box's phrase id;
    words are the pre-fusion features of every real token, labelled with ``token_phrase_ids`` (B, T).
    """
    feats = torch.cat([f.flatten(2).transpose(1, 2) for f in output.visual], dim=1)  # (B, A, D)
    regions, region_ids = [], []
    for b, target in enumerate(targets):
        pos = (matched[b] >= 0).nonzero().squeeze(1)
        if pos.numel() > max_regions:
            pos = pos[torch.randperm(pos.numel(), device=pos.device)[:max_regions]]
        regions.append(feats[b, pos])
        region_ids.append(target.phrase_ids.to(pos.device)[matched[b][pos]])
    regions, region_ids = torch.cat(regions), torch.cat(region_ids)
    real = output.text_mask > 0
    words = output.text[real]
    word_ids = token_phrase_ids.to(real.device)[:, : real.shape[1]][real]
    count = mean_over_ranks(float(regions.shape[0]), feats.device)
    return region_word_loss(module, regions.float(), region_ids, words.float(), word_ids) / max(count, 1.0)
