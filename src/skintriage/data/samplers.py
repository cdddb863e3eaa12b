"""A class-balanced sampler for DistributedDataParallel.

``torch.utils.data.DistributedSampler`` shards a *permutation* of the dataset, so it cannot keep the
class balance of ``WeightedRandomSampler``; giving each rank its own weighted sampler would draw
N independent samples, not one. :class:`DistributedWeightedSampler` draws the weighted sample once,
from a generator seeded identically on every rank (so every rank computes the same draw without any
communication), and gives rank ``r`` the interleaved shard ``draw[r::world_size]``. The shards
together are exactly the draw a single process would make with the same weights and generator seed,
and each shard is itself a uniform subsample of it, so every rank sees the balanced class mix.

Shards have equal length (as ``DistributedSampler``'s): the draw is padded with its own first
indices up to a multiple of the world size, so every rank runs the same number of steps and no
rank waits forever at an all-reduce.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


class DistributedWeightedSampler(Sampler[int]):
    """Rank ``rank`` of ``num_replicas``' share of one ``WeightedRandomSampler`` draw.

    ``weights``, ``num_samples`` and ``replacement`` mean what they mean for ``WeightedRandomSampler``.
    The draw uses ``torch.Generator().manual_seed(seed + epoch)``; call :meth:`set_epoch` before each
    epoch (as with ``DistributedSampler``) for a new draw, the same on every rank.
    """

    def __init__(
        self,
        weights: Sequence[float] | torch.Tensor,
        num_samples: int,
        *,
        num_replicas: int,
        rank: int,
        seed: int = 0,
        replacement: bool = True,
    ):
        if num_samples <= 0:
            raise ValueError(f"num_samples must be positive, not {num_samples}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside a world of {num_replicas}")
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        self.num_samples = num_samples
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.replacement = replacement
        self.epoch = 0
        self.per_rank = math.ceil(num_samples / num_replicas)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def draw(self) -> list[int]:
        """The whole draw, identical on every rank: what one process's weighted sampler would yield."""
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.multinomial(self.weights, self.num_samples, self.replacement, generator=generator).tolist()

    def __iter__(self) -> Iterator[int]:
        indices = self.draw()
        total = self.per_rank * self.num_replicas
        indices += (indices * math.ceil(total / len(indices)))[: total - len(indices)]  # pad to equal shards
        return iter(indices[self.rank : total : self.num_replicas])

    def __len__(self) -> int:
        return self.per_rank
