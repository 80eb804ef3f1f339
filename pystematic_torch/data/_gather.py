"""Batches of an in-memory ``TensorDataset`` gathered straight from its tensors.

DataLoader's way, one view per sample and ``default_collate`` stacking them, costs more per
batch than a small model's step. Here every batch is one ``index_select`` per tensor, and
where nothing is to be pinned, one ``index_select`` per tensor gathers a block of several
batches, which are then delivered as slices of the block: what a loop over pre-sliced
tensors pays per batch, with the shuffle kept.
"""
import itertools
import math
from typing import Iterable, Iterator, List, Sequence

import torch

# A block holds at most this many batches, and more than one only while it stays within
# this many bytes. Each gather in the middle of the loop evicts the model's working set from
# the caches, which the next steps pay to reload, so fewer, larger blocks are cheaper;
# measured with a tiny model (benchmarks/shuffle_cost.py --blocks), the gain stops at about
# 128 batches of 2 MiB. The bytes bound what a block adds to memory beside the dataset, and
# the count what its views do: each batch is a tensor of its own, about a kilobyte.
_BLOCK_BATCHES = 128
_BLOCK_BYTES = 4 << 20


def gather_rows(
    tensors: Sequence[torch.Tensor], batches: Iterable[Sequence[int]], pin: bool
) -> Iterator[List[torch.Tensor]]:
    """Yield ``[t[indices] for t in tensors]`` for each batch of indices, one copy per tensor.

    Gives the same values, dtypes and list type as DataLoader's per-sample indexing followed
    by ``default_collate``, without creating one view per sample. With ``pin`` the rows of a
    CPU tensor are gathered straight into page-locked memory (from torch's caching host
    allocator, which keeps a block until the copies reading it have finished), ready for an
    asynchronous copy to the GPU.
    """
    if not pin and all(tensor.device.type == "cpu" for tensor in tensors):
        for indices in batches:
            index = indices
            if type(index) is not torch.Tensor:
                index = torch.as_tensor(indices, dtype=torch.long)
            yield [tensor.index_select(0, index) for tensor in tensors]
        return
    for indices in batches:
        index = torch.as_tensor(indices, dtype=torch.long)
        batch = []
        for tensor in tensors:
            if tensor.device.type != "cpu":
                batch.append(tensor.index_select(0, index.to(tensor.device)))
            elif pin:
                rows = torch.empty(
                    (len(index), *tensor.shape[1:]), dtype=tensor.dtype, pin_memory=True
                )
                batch.append(torch.index_select(tensor, 0, index, out=rows))
            else:
                batch.append(tensor.index_select(0, index))
        yield batch


def gather_blocks(
    tensors: Sequence[torch.Tensor], indices: torch.Tensor, batch_size: int
) -> Iterator[List[torch.Tensor]]:
    """Yield ``[t[batch] for t in tensors]`` for each ``batch_size`` run of ``indices``.

    The same batches as :func:`gather_rows` over ``indices.split(batch_size)`` (the last
    one may be shorter), from CPU ``tensors``. Each batch is a contiguous slice of a block
    of up to ``_BLOCK_BATCHES`` batches gathered at once (at most ``_BLOCK_BYTES``, unless
    one batch is larger), so it keeps that block's memory alive while it is referenced, and
    ``torch.save`` of one saves the whole block.
    """
    row_bytes = sum(math.prod(t.shape[1:]) * t.element_size() for t in tensors)
    per_block = max(1, min(_BLOCK_BATCHES, _BLOCK_BYTES // max(1, row_bytes * batch_size)))
    rows = per_block * batch_size

    def blocks() -> Iterator[List[List[torch.Tensor]]]:
        for start in range(0, len(indices), rows):
            index = indices[start : start + rows]
            pieces = [tensor.index_select(0, index).split(batch_size) for tensor in tensors]
            yield list(map(list, zip(*pieces)))

    # Within a block, batches come from a list through C iterators: no Python frame runs
    # per batch, which a tiny model's step notices.
    return itertools.chain.from_iterable(blocks())
