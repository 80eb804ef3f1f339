"""Setting a SmartDataLoader up for its next pass, once per ``iter()``.

Before a pass the loader agrees on its seed in a process group, rescales a position loaded
under another layout, tells the samplers (and the dataset) the epoch, seeds the workers'
base seeds, and fixes how many batches the pass skips and how its fetches are seeded.
"""
from typing import Any

import torch
from torch.utils.data import IterableDataset

from ..distributed import get_rank, is_distributed
from ._host_batches import fast_gather_applies
from ._resume import rescale_position
from ._sample_seeds import applies_to
from ._samplers import mix_seed

# Tags the streams drawn from the loader's seed: 1 for the workers' base seeds, 2 for fetches.
_WORKER_STREAM, _FETCH_STREAM = 1, 2


def prepare_epoch(loader: Any) -> None:
    """Make ``loader``'s next pass cover its current epoch from its current position."""
    if loader._own_sampler is not None and is_distributed():
        loader._agree_seed()
    rescale_position(loader)
    holders = [loader.dataset]
    if loader._own_sampler is not None:
        loader._own_sampler.set_epoch(loader._epoch)
    else:
        inner = getattr(loader.batch_sampler, "sampler", None)
        holders += [loader.sampler, loader.batch_sampler, inner]
    for holder in holders:
        set_epoch = getattr(holder, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(loader._epoch)
    if not loader._user_generator:
        # Workers' base seeds follow (seed, epoch, rank) instead of the global RNG.
        generator = torch.Generator()
        generator.manual_seed(mix_seed(loader._seed, loader._epoch, get_rank(), _WORKER_STREAM))
        loader.generator = generator
    iterable = isinstance(loader.dataset, IterableDataset)
    loader._skip = 0 if iterable else loader._position
    loader._fetch_seed_base = (
        mix_seed(loader._seed, loader._epoch, get_rank(), _FETCH_STREAM)
        if _fetches_are_seeded(loader) else None
    )


def _fetches_are_seeded(loader: Any) -> bool:
    # The batched gather and the cache read tensors, never call the dataset at random.
    return (
        not isinstance(loader.dataset, IterableDataset)
        and loader.cache is None
        and not fast_gather_applies(loader)
        and applies_to(loader.dataset)
    )
