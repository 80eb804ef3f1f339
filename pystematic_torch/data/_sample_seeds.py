"""Randomness inside a dataset as a function of (seed, epoch, rank, position), not of workers.

A random augmentation in ``Dataset.__getitem__`` draws from the global generators of the
process that runs it (Python's ``random``, NumPy's global ``RandomState``, torch's CPU
generator). In a DataLoader worker those generators are seeded once, when the worker
starts, so what a sample draws depends on which worker fetched it and on everything that
worker fetched before: a run resumed in the middle of an epoch, or a persistent worker in
its second epoch, draws different numbers than an uninterrupted run.

Here every fetch starts from generators seeded with a hash of (the loader's seed, the epoch,
the rank, the position of the fetch's first sample in the rank's epoch). The index sampler
(``ResumableIndices``) wraps each batch of indices in a :class:`SeededBatch` that carries
the epoch's base seed and the batch's position; the loader's iterators fetch through
:class:`SeededFetch`, a proxy of the dataset that seeds the three generators and then calls
the dataset as usual. One seeding per batch, not per sample: a batch is always fetched
whole by one process, so each sample's draws are still fixed by the position; seeding costs
about 10 us (benchmarks/README.md), more than reading a sample of an in-memory dataset.

With ``num_workers=0`` the fetch runs in the training process; its own generators (dropout,
everything the loop draws) are saved before and put back after, so the loop's stream is the
same whichever number of workers fetched the data. That costs about 150 us a fetch (NumPy's
state is slow to read and write), as much as reading a batch of an in-memory dataset, so the
first fetch of each pass also finds out whether the dataset draws from these generators at
all: when it does not, the pass's other fetches run as they are.
"""
import random
import sys
from typing import Any, Iterator, List

import numpy
import torch
from torch.utils.data import get_worker_info

_MASK32 = 0xFFFFFFFF


class SeededBatch:
    """A batch of indices, as the sampler gave it, with the seed of its fetch."""

    __slots__ = ("indices", "seed")

    def __init__(self, indices: Any, seed: int) -> None:
        self.indices = indices
        self.seed = seed

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.indices)

    def __reduce__(self):
        return SeededBatch, (self.indices, self.seed)


class SeededIndex(SeededBatch):
    """One index of a loader without batching (``batch_size=None``), with its seed."""

    __slots__ = ()

    def __reduce__(self):
        return SeededIndex, (self.indices, self.seed)




def seed_globals(seed: int) -> None:
    """Seed torch's CPU generator, Python's ``random`` and NumPy's global ``RandomState``.

    torch's CPU generator keeps 32 bits of a seed, and NumPy's legacy seeding takes 32: they
    get different bits, or their streams would repeat each other.
    """
    torch.default_generator.manual_seed(seed & _MASK32)
    random.seed(seed)
    numpy.random.seed((seed >> 31) & _MASK32)


def _generator_states() -> tuple:
    """The three global generators' states, in a form ``==`` compares."""
    kind, keys, position, has_gauss, cached = numpy.random.get_state()
    return (bytes(torch.default_generator.get_state().numpy()), random.getstate(),
            (kind, keys.tobytes(), position, has_gauss, cached))  # fmt: skip


class _MainProcessStreamsKept:
    """Around a fetch in the training process: put its own generators back afterwards."""

    __slots__ = ("_saved",)

    def __enter__(self) -> None:
        if get_worker_info() is not None:
            self._saved = None
            return
        self._saved = (torch.default_generator.get_state(), random.getstate(),
                       numpy.random.get_state())  # fmt: skip

    def __exit__(self, *exc_info) -> None:
        if self._saved is None:
            return
        torch_state, python_state, numpy_state = self._saved
        torch.default_generator.set_state(torch_state)
        random.setstate(python_state)
        numpy.random.set_state(numpy_state)


class SeededFetch:
    """The dataset as the loader's iterators see it: each seeded fetch starts from its seed.

    Attribute reads and writes go to the dataset itself, so ``get_worker_info().dataset``
    (which is this proxy) still works as the dataset in a ``worker_init_fn``.
    """

    def __init__(self, dataset: Any) -> None:
        object.__setattr__(self, "_dataset", dataset)
        # In the training process: whether a fetch draws random numbers (None: not known yet).
        object.__setattr__(self, "_draws", None)

    def __getattr__(self, name: str) -> Any:
        if name == "_dataset" or name.startswith("__"):
            # Pickling asks for dunder hooks before _dataset exists: never recurse.
            raise AttributeError(name)
        return getattr(self._dataset, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._dataset, name, value)

    def __len__(self) -> int:
        return len(self._dataset)

    def __getitem__(self, item: Any) -> Any:
        if type(item) is not SeededIndex:
            return self._dataset[item]
        return self._seeded(item.seed, self._dataset.__getitem__, item.indices)

    def __getitems__(self, batch: Any) -> List[Any]:
        if type(batch) is not SeededBatch:
            return self._fetch(batch)
        return self._seeded(batch.seed, self._fetch, batch.indices)

    def _seeded(self, seed: int, fetch, what: Any) -> Any:
        if get_worker_info() is not None:
            seed_globals(seed)
            return fetch(what)
        if self._draws is False:
            return fetch(what)
        with _MainProcessStreamsKept():
            seed_globals(seed)
            if self._draws:
                return fetch(what)
            before = _generator_states()
            result = fetch(what)
            object.__setattr__(self, "_draws", _generator_states() != before)
            return result

    def _fetch(self, indices: Any) -> List[Any]:
        dataset = self._dataset
        batched = getattr(dataset, "__getitems__", None)
        if batched:
            return batched(indices)
        return [dataset[index] for index in indices]


def applies_to(dataset: Any) -> bool:
    """Whether fetches from ``dataset`` are seeded: map-style datasets, not DataPipes."""
    datapipes = sys.modules.get("torch.utils.data.datapipes.datapipe")
    if datapipes is not None and isinstance(dataset, datapipes.MapDataPipe):
        return False  # the iterators shard DataPipes by their type, which a proxy hides
    return True
