"""Where a SmartDataLoader's batches come from on the host, before any move to its device.

Two paths bypass DataLoader's own iterators: the device cache (``cache="device"``), and
the batched gather of a plain ``TensorDataset`` with the default collate, which indexes
the tensors once per batch (or per block of batches) instead of once per sample. Each is
chosen once per epoch; the iterators returned here are what the epoch then pulls from.
"""
from typing import Any, Iterator, Optional, Tuple

import torch
from torch.utils.data import BatchSampler, TensorDataset, default_collate

from ..devices import map_tensors
from . import _gather
from ._cache import build_cache


def fast_gather_applies(loader: Any) -> bool:
    """Whether ``loader`` can gather its batches from its ``TensorDataset``'s tensors."""
    dataset = loader.dataset
    return (
        isinstance(dataset, TensorDataset)
        and type(dataset).__getitem__ is TensorDataset.__getitem__
        and getattr(type(dataset), "__getitems__", None) is None
        and loader._auto_collation
        and loader.collate_fn is default_collate
    )


def host_batches(loader: Any) -> Optional[Iterator[Any]]:
    """The epoch's batches from the cache or the gather; None where neither applies."""
    if loader.cache is not None:
        return _cached_batches(loader)
    if fast_gather_applies(loader):
        tensors, pin = loader.dataset.tensors, _delivers_to_cuda(loader)
        run = _index_run(loader)
        if run is not None and not pin and all(t.device.type == "cpu" for t in tensors):
            return _gather.gather_blocks(tensors, *run)
        batches = loader._index_sampler.plain() if run is None else iter(run[0].split(run[1]))
        return _gather.gather_rows(tensors, batches, pin)
    return None


def _index_run(loader: Any) -> Optional[Tuple[torch.Tensor, int]]:
    """The epoch's indices from the skip on, as one tensor, and the batch size, when the
    order is ours: building a Python list per batch costs more than the gather."""
    batches = loader.batch_sampler
    if not (type(batches) is BatchSampler and batches.sampler is loader._own_sampler):
        return None
    shard, size = loader._own_sampler.shard(), batches.batch_size
    end = len(shard) - len(shard) % size if batches.drop_last else len(shard)
    return shard[loader._skip * size:end], size


def _delivers_to_cuda(loader: Any) -> bool:
    return loader.move_output and loader._device is not None and loader._device.type == "cuda"


def _cached_batches(loader: Any) -> Iterator[Any]:
    device = loader._device if loader.move_output and loader._device else torch.device("cpu")
    if loader._cached is None or loader._cached_on != device:
        loader._cached = None
        loader._cached = build_cache(loader.dataset, loader.batch_size or 1, device)
        loader._cached_on = device
    cached = loader._cached
    # One index transfer per epoch: per-batch transfers of pageable host memory would
    # make the host wait for the GPU at every batch.
    batches = [torch.as_tensor(indices, dtype=torch.long)
               for indices in loader._index_sampler.plain()]  # fmt: skip
    if not batches:
        return iter(())
    flat = torch.cat(batches).to(device)
    pieces = flat.split([len(batch) for batch in batches])
    return (map_tensors(lambda t, i=i: t.index_select(0, i), cached) for i in pieces)
