"""Checking SmartDataLoader's arguments and choosing its seed, before anything is built."""
from typing import Optional

import torch
from torch.utils.data import default_collate

from .._session import current_params
from ..errors import DataError

_CACHE_CHOICES = (None, "device")


def check_arguments(iterable, shuffle, sampler, batch_sampler, cache, seed, batch_size, kwargs):
    problems = []
    if shuffle and iterable:
        problems.append(
            "shuffle=True cannot reorder an IterableDataset; shuffle inside the dataset's "
            "__iter__ or use a map-style Dataset"
        )
    if shuffle and (sampler is not None or batch_sampler is not None):
        problems.append(
            "shuffle=True cannot be combined with a sampler or batch_sampler, which already "
            "set the order; drop shuffle or the sampler"
        )
    if cache not in _CACHE_CHOICES:
        problems.append(f"cache={cache!r} is not allowed; use None or 'device'")
    elif cache is not None:
        if iterable:
            problems.append("cache='device' needs a map-style dataset, not an IterableDataset")
        if batch_size is None and batch_sampler is None:
            problems.append("cache='device' needs batching; give a batch_size")
        if kwargs.get("collate_fn") not in (None, default_collate):
            problems.append("cache='device' needs the default collate_fn")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        problems.append(f"random_seed={seed!r} is not an int")
    if problems:
        raise DataError("SmartDataLoader: " + "; ".join(problems) + ".")


def resolve_seed(random_seed: Optional[int]) -> int:
    if random_seed is not None:
        return int(random_seed)
    params = current_params()
    if params is not None and params.get("random_seed") is not None:
        return int(params["random_seed"])
    return int(torch.empty((), dtype=torch.int64).random_().item())
