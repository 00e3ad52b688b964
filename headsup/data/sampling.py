"""Weighted mixing of training sources (portrait, general, face sets) that shards under DDP.

Each epoch draws `num_samples` items: a source with probability proportional to its weight,
then an item of that source uniformly. The draw depends only on the seed and the epoch, so
every rank computes the same list and Lightning's distributed wrapper (which it puts around
any custom sampler) gives each rank a disjoint share of it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


class MixtureSampler(Sampler[int]):
    """Indices into a ConcatDataset of sources drawn with per-source weights.

    Args:
        sizes: Number of items of each source, in ConcatDataset order.
        weights: Relative sampling weight of each source.
        num_samples: Items per epoch (default: the total of `sizes`).
        seed: Base seed; epoch e draws with seed + e.
    """

    def __init__(self, sizes: Sequence[int], weights: Sequence[float], num_samples: int | None = None,
                 seed: int = 0) -> None:
        if len(sizes) != len(weights) or not sizes:
            raise ValueError(f"one weight per source needed, got {len(weights)} for {len(sizes)} sources")
        if any(w < 0 for w in weights) or sum(weights) <= 0 or any(n <= 0 for n in sizes):
            raise ValueError(f"weights must be >= 0 with a positive sum and sources non-empty: {weights}, {sizes}")
        self.sizes = list(sizes)
        self.weights = torch.tensor(weights, dtype=torch.float64)
        self.num_samples = num_samples or sum(sizes)
        self.seed = seed
        self.epoch = 0
        self._explicit_epoch = False

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self._explicit_epoch = True

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        source = torch.multinomial(self.weights, self.num_samples, replacement=True, generator=gen)
        offsets = torch.tensor([0] + self.sizes[:-1]).cumsum(0)
        sizes = torch.tensor(self.sizes)
        within = (torch.rand(self.num_samples, generator=gen, dtype=torch.float64) * sizes[source]).long()
        if not self._explicit_epoch:  # wrapped by a distributed sampler: advance on each pass
            self.epoch += 1
        return iter((offsets[source] + within).tolist())
