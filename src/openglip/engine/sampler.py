"""A step-based, resumable, distributed sampler.

It yields ``(epoch, index)`` keys forever: each epoch is a permutation of the dataset seeded by
``(seed, epoch)``, padded to a multiple of the world size and sharded by rank (like
``DistributedSampler``). Its position is one integer, the number of items this rank has consumed; the
trainer counts that itself (data-loader workers prefetch ahead of it) and passes it back as ``start``.
"""

from __future__ import annotations

from collections.abc import Iterator

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
