"""Index samplers behind SmartDataLoader: a deterministic, shardable order and resumable skipping.

The order of an epoch is a pure function of (seed, epoch, rank, world size), so any process
can recompute it, and a resumed run skips what was already delivered by dropping indices,
never by loading and discarding data.
"""
import itertools
import math
from typing import Any, Callable, Iterator, List, Sized

import torch
from torch.utils.data import Sampler

from ..distributed import get_num_processes, get_rank
from ._sample_seeds import SeededBatch, SeededIndex

_MASK64 = (1 << 64) - 1


def mix_seed(*values: int) -> int:
    """Hash integers into one non-negative 63-bit seed (splitmix64 steps).

    Nearby inputs (seed 1 epoch 2, seed 2 epoch 1) give unrelated seeds, which plain
    addition would not.
    """
    state = 0x9E3779B97F4A7C15
    for value in values:
        state = (state ^ (int(value) & _MASK64)) & _MASK64
        state = (state + 0x9E3779B97F4A7C15) & _MASK64
        state = ((state ^ (state >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        state = ((state ^ (state >> 27)) * 0x94D049BB133111EB) & _MASK64
        state ^= state >> 31
    return state >> 1


class ShardedSampler(Sampler[int]):
    """The sample order of one epoch on this rank.

    Outside a process group this is the whole dataset, shuffled or not. In a process group
    the epoch's permutation (the same on every rank, given the same seed) is dealt out
    round-robin: rank ``r`` of ``w`` gets positions ``r, r + w, r + 2w, ...``.

    With ``even_shards`` every rank gets the same number of samples, which collective
    training needs: the permutation is padded by repeating its first samples, or, with
    ``drop_last``, cut to a multiple of the world size. Without ``even_shards`` each sample is
    used exactly once across ranks and shard sizes differ by at most one.
    """

    def __init__(
        self,
        dataset: Sized,
        shuffle: bool,
        seed: int,
        even_shards: bool = True,
        drop_last: bool = False,
    ) -> None:
        self.dataset = dataset
        self.shuffle = shuffle
        self.seed = seed
        self.even_shards = even_shards
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> List[int]:
        """The whole epoch's permutation, before sharding."""
        return self._order().tolist()

    def _order(self) -> torch.Tensor:
        size = len(self.dataset)
        if not self.shuffle:
            return torch.arange(size)
        generator = torch.Generator()
        generator.manual_seed(mix_seed(self.seed, self.epoch))
        return torch.randperm(size, generator=generator)

    def shard(self) -> torch.Tensor:
        """This rank's indices for the epoch, in order, as one int64 tensor."""
        order = self._order()
        rank, world, total = self._layout(len(order))
        if world == 1:
            return order
        if total > len(order) and len(order):
            padding = total - len(order)
            repeats = math.ceil(padding / len(order))
            order = torch.cat([order, order.repeat(repeats)[:padding]])
        return order[rank:total:world]

    def _layout(self, size: int):
        rank, world = get_rank(), get_num_processes()
        if world == 1 or not self.even_shards:
            return rank, world, size
        if self.drop_last:
            return rank, world, size - size % world
        return rank, world, math.ceil(size / world) * world

    def __iter__(self) -> Iterator[int]:
        return iter(self.shard().tolist())

    def __len__(self) -> int:
        size = len(self.dataset)
        rank, world, total = self._layout(size)
        if world == 1:
            return size
        # Positions rank, rank + world, ... below total.
        return max(0, math.ceil((total - rank) / world))


class ResumableIndices:
    """A loader's index sampler, starting after the loader's ``_skip`` entries.

    One instance lives as long as its loader: a loader with persistent workers keeps the
    index sampler it saw first, so the skip (and the epoch's base seed of the fetches) is
    read from the loader each time an iteration starts rather than fixed at construction.

    Iterated by DataLoader's own iterators it wraps every entry with the seed of its fetch
    when the loader's ``_fetch_seed_base`` is set (see ``_sample_seeds``); :meth:`plain`
    gives the bare indices, for the loader's own gathering paths.
    """

    def __init__(self, loader: Callable[[], Any]) -> None:
        # A weak reference: a strong one would make a cycle, and a loader with persistent
        # workers freed by the cycle collector waits seconds for its workers to stop.
        self._loader = loader

    def _base(self) -> Any:
        loader = self._loader()
        return loader.batch_sampler if loader._auto_collation else loader.sampler

    def __iter__(self) -> Iterator[Any]:
        loader = self._loader()
        base = loader._fetch_seed_base
        if base is None:
            return self.plain()
        return with_seeds(iter(self._base()), base, loader._skip, loader._auto_collation)

    def plain(self) -> Iterator[Any]:
        skip = self._loader()._skip
        indices = iter(self._base())
        return itertools.islice(indices, skip, None) if skip else indices

    def __len__(self) -> int:
        return len(self._base())


_END = object()


def with_seeds(indices: Iterator[Any], base: int, skip: int, batched: bool) -> Iterator[Any]:
    """``indices`` after the first ``skip`` entries, each wrapped with its fetch's seed.

    The seed of an entry is ``mix_seed(base, position)``, its first sample's position in the
    epoch; the skipped entries count, so a resumed epoch seeds like an uninterrupted one.
    """
    position = 0
    for _ in range(skip):
        skipped = next(indices, _END)
        if skipped is _END:
            return
        position += len(skipped) if batched else 1
    wrap = SeededBatch if batched else SeededIndex
    for entry in indices:
        yield wrap(entry, mix_seed(base, position))
        position += len(entry) if batched else 1
