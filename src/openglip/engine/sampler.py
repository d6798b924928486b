"""A step-based, resumable, distributed sampler.

It yields ``(epoch, index)`` keys forever: each epoch is a permutation of the dataset seeded by
``(seed, epoch)``, padded to a multiple of the world size and sharded by rank (like
``DistributedSampler``). Its position is one integer, the number of items this rank has consumed; the
trainer counts that itself (data-loader workers prefetch ahead of it) and passes it back as ``start``.
"""

from __future__ import annotations

from collections.abc import Iterator
from fractions import Fraction

import torch
from torch.utils.data import Sampler

from ..errors import UsageError


class ResumableSampler(Sampler):
    def __init__(
        self,
        size: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        start: int = 0,
    ):
        if size <= 0:
            raise UsageError(
                "the training data set is empty: nothing to sample (check --data, shapes_epoch_size)"
            )
        self.size = size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.epoch, self.consumed = divmod(start, self.per_rank)

    @property
    def per_rank(self) -> int:
        return -(-self.size // self.world_size)

    def _order(self, epoch: int) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        total = self.per_rank * self.world_size
        order += order[: total - len(order)]
        return order[self.rank : total : self.world_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        while True:
            order = self._order(self.epoch)
            while self.consumed < len(order):
                index = order[self.consumed]
                self.consumed += 1
                yield self.epoch, index
            self.epoch += 1
            self.consumed = 0

    def __len__(self) -> int:  # one epoch; iteration itself never ends
        return self.per_rank


def replay_count(position: int, ratio: Fraction) -> int:
    """Replay items among the first ``position`` items a rank draws: ``floor(position * ratio)``, exactly."""
    return position * ratio.numerator // ratio.denominator


class ReplaySampler(Sampler):
    """Mixes a replay stream into a target stream at a fixed ratio (fine-tuning with replay).

    Definition: among the first P items a rank draws, exactly ``floor(P * ratio)`` come from the replay data
    (``ratio`` is read as a fraction, e.g. 0.25 = 1/4). A batch of B items that starts at position kB therefore
    holds ``floor((k+1) B r) - floor(k B r)`` replay items: exactly ``B r`` in every batch when ``B r`` is a whole
    number (B = 8, r = 0.25: 2 in every batch), else ``B r`` rounded down or up, averaging ``B r``. Which items
    come from where depends only on the position, so a run resumed at position P continues the same sequence.

    Keys are ``(epoch, index)`` with index < ``target_size`` for target items and ``target_size + j`` for replay
    item j (the layout of :class:`openglip.data.build.ReplayMix`). Each stream is a :class:`ResumableSampler`
    (its own permutation per epoch, sharded by rank).
    """

    def __init__(
        self,
        target_size: int,
        replay_size: int,
        ratio: float,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        start: int = 0,
    ):
        if not 0.0 <= ratio < 1.0:
            raise ValueError(f"replay ratio must be in [0, 1), got {ratio}")
        self.ratio = Fraction(ratio).limit_denominator(10_000)
        self.target_size = target_size
        self.position = start
        replayed = replay_count(start, self.ratio)
        common = {"rank": rank, "world_size": world_size}
        self.target = ResumableSampler(target_size, seed=seed, start=start - replayed, **common)
        # another seed, so that the two streams are not the same permutation when the sizes are equal
        self.replay = ResumableSampler(replay_size, seed=seed + 7919, start=replayed, **common)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        target, replay = iter(self.target), iter(self.replay)
        while True:
            if replay_count(self.position + 1, self.ratio) > replay_count(self.position, self.ratio):
                epoch, index = next(replay)
                yield epoch, self.target_size + index
            else:
                yield next(target)
            self.position += 1

    def __len__(self) -> int:  # one epoch of the target data
        return self.target.per_rank
