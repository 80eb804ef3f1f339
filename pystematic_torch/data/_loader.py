"""SmartDataLoader: the right batches, on the right device, in the right order, resumable.

See ``docs/data.rst`` for the behaviour in full; the short version:

- Order: the epoch's order is a function of (seed, epoch) only, so runs with the same seed
  see the same batches and every rank computes the same permutation.
- Epochs: an epoch ends when its batches run out; a loop left early keeps the loader's
  place, and the next ``iter()`` continues that epoch (see ``_epoch``).
- Resume: the loader counts the batches it has *delivered*; a loaded state skips that many
  batches at the index level, so no data is loaded twice or skipped (see ``_resume``).
- Randomness: each fetch from the dataset is seeded by its place in the run (see
  ``_sample_seeds``).

Each ``iter()`` is set up by ``_epoch_start``; its batches come from ``_host_batches``.
"""
import logging
import weakref
from typing import Any, Iterator, Optional

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from ..devices import DeviceLike, resolve_device
from ..distributed import broadcast_from_master, get_num_processes, is_distributed, is_master
from ..errors import DeviceError, DistributedError
from ._epoch import EpochIterator
from ._epoch_start import prepare_epoch
from ._host_batches import fast_gather_applies as _fast_gather_applies
from ._host_batches import host_batches
from ._options import check_arguments, resolve_seed
from ._progress import epoch_progress
from ._resume import check_state
from ._sample_seeds import SeededFetch
from ._samplers import ResumableIndices, ShardedSampler
from ._workers import WorkerStart

__all__ = ["SmartDataLoader"]

logger = logging.getLogger("pystematic.torch.data")


class SmartDataLoader(DataLoader):
    """A :class:`torch.utils.data.DataLoader` that delivers batches on the right device, in a
    seeded and shardable order, and can resume in the middle of an epoch.

    Every standard ``DataLoader`` argument works and keeps its meaning. What changes:

    - **Device.** Batches are moved (nested dicts, lists, tuples, namedtuples and
      dataclasses included) to the device set with :meth:`to`; by default they are
      delivered as the dataset yields them. On CUDA, host memory is pinned and the next
      batch is copied on a side stream while the current one is in use.
    - **Order.** With ``shuffle=True`` every epoch has a new order, seeded by
      ``random_seed``; no ``set_epoch`` call is needed.
    - **Distributed.** Inside a ``torch.distributed`` process group, each rank iterates a
      disjoint shard of every epoch (unless a ``sampler`` or ``batch_sampler`` is given).
    - **Resume.** :meth:`state_dict` records the epoch and the batches delivered in it.
    - **Random augmentations.** Every fetch from a map-style dataset starts from torch,
      NumPy and Python generators seeded by (seed, epoch, rank, position), so what the
      dataset draws does not depend on the workers and repeats in a resumed epoch; with
      ``num_workers=0`` the loop's own generators are put back after each fetch.
    - **Progress.** On rank 0, a tqdm bar in a terminal shows the epoch, the position and
      the rate; in a log, an epoch longer than a minute gets a line a minute.
    - **Preemption.** Worker processes ignore SIGUSR1, and SIGTERM from anyone but the
      training process (Linux): a scheduler signals every process of a job, and the
      training process stops them when it stops.

    Args:
        dataset: A map-style or iterable dataset.
        batch_size: Samples per batch; ``None`` turns batching off, as in ``DataLoader``.
        shuffle: Shuffle every epoch with a seeded order. Not allowed with an
            ``IterableDataset``, a ``sampler`` or a ``batch_sampler``.
        random_seed: Seed of the order. Default: the running experiment's ``random_seed``
            parameter; outside an experiment, a draw from torch's global generator when the
            loader is created (so ``torch.manual_seed`` before it makes runs repeatable).
        sampler: A sampler used as given: the loader neither shuffles nor shards it, and
            calls its ``set_epoch(epoch)`` if it has one.
        batch_sampler: A batch sampler used as given, like ``sampler``.
        move_output: Move batches to the loader's device. ``False`` delivers them as the
            dataset yields them, whatever :meth:`to` was given.
        loading_bar: Show the progress of each epoch on rank 0.
        even_shards: In a process group, give every rank the same number of samples by
            repeating a few (or, with ``drop_last``, dropping the last few), as collective
            training needs. ``False`` is the evaluation mode: every sample is delivered
            exactly once across ranks and shard sizes differ by at most one.
        cache: ``"device"`` loads the whole dataset once, on the first iteration, into
            tensors on the loader's device and gathers every batch from there. Costs the
            dataset's collated size in device memory (host memory on CPU); sample
            transforms run once, so random augmentations are frozen.
        **dataloader_kwargs: Any other ``DataLoader`` argument (``num_workers``,
            ``collate_fn``, ``drop_last``, ``pin_memory``, ``persistent_workers``, ...).

    Raises:
        DataError: an argument combination that cannot work (``shuffle`` with an iterable
            dataset or a custom sampler, an unknown ``cache``, ...).

    Example:
        >>> loader = SmartDataLoader(dataset, batch_size=64, shuffle=True, num_workers=2)
        >>> loader.to("cuda")  # doctest: +SKIP
        >>> for x, y in loader:  # doctest: +SKIP
        ...     loss = loss_fn(model(x), y)
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: Optional[int] = 1,
        shuffle: bool = False,
        random_seed: Optional[int] = None,
        sampler: Any = None,
        batch_sampler: Any = None,
        move_output: bool = True,
        loading_bar: bool = True,
        even_shards: bool = True,
        cache: Optional[str] = None,
        **dataloader_kwargs: Any,
    ) -> None:
        iterable = isinstance(dataset, IterableDataset)
        check_arguments(
            iterable, shuffle, sampler, batch_sampler, cache, random_seed, batch_size,
            dataloader_kwargs,
        )  # fmt: skip
        seed = resolve_seed(random_seed)
        own_sampler = None
        if not iterable and sampler is None and batch_sampler is None:
            own_sampler = ShardedSampler(
                dataset, shuffle, seed, even_shards, bool(dataloader_kwargs.get("drop_last"))
            )
        dataloader_kwargs["worker_init_fn"] = WorkerStart(dataloader_kwargs.get("worker_init_fn"))
        super().__init__(
            dataset,
            batch_size=batch_size,
            sampler=own_sampler if own_sampler is not None else sampler,
            batch_sampler=batch_sampler,
            **dataloader_kwargs,
        )
        self.move_output = move_output
        self.loading_bar = loading_bar
        self.shuffle = bool(shuffle)
        self.even_shards = even_shards
        self.cache = cache
        self._own_sampler = own_sampler
        self._seed = seed
        self._seed_agreed = False
        self._user_pin_memory = "pin_memory" in dataloader_kwargs
        self._user_generator = dataloader_kwargs.get("generator") is not None
        self._device: Optional[torch.device] = None
        self._epoch = 0
        self._position = 0
        self._skip = 0
        # The epoch's base seed of dataset fetches; None where fetches are not seeded.
        self._fetch_seed_base: Optional[int] = None
        self._saved_layout: Optional[tuple] = None
        self._active: Optional[weakref.ref] = None
        self._cached: Optional[Any] = None
        self._cached_on: Optional[torch.device] = None

    # DataLoader reads `_index_sampler` to create its iterators; answering with a wrapper that
    # skips already-delivered batches makes resuming work for every sampler and worker count.
    @property
    def _index_sampler(self):
        resumable = self.__dict__.get("_resumable_indices")
        if resumable is None:
            resumable = ResumableIndices(weakref.ref(self))
            self.__dict__["_resumable_indices"] = resumable
        return resumable

    @property
    def device(self) -> Optional[torch.device]:
        """Where batches are delivered; ``None`` until :meth:`to` is called (not moved)."""
        return self._device

    @property
    def epoch(self) -> int:
        """The epoch the next (or current) iteration covers, counted from 0."""
        return self._epoch

    @property
    def random_seed(self) -> int:
        """The seed of the order (and of the workers' base seeds)."""
        return self._seed

    def to(self, device: DeviceLike) -> "SmartDataLoader":
        """Deliver batches on ``device`` from the next iteration on.

        On a CUDA device the loader also pins host memory (unless ``pin_memory`` was given
        explicitly) and copies each batch ahead on a side stream.

        Args:
            device: A ``torch.device``, a string such as ``"cuda:0"``, or a CUDA index.

        Returns:
            The loader itself.

        Raises:
            DeviceError: ``device`` is not a device, or is a CUDA device on a machine
                without CUDA.
        """
        target = resolve_device(device)
        if target.type == "cuda":
            if not torch.cuda.is_available():
                raise DeviceError(
                    f"SmartDataLoader.to({device!r}): CUDA is not available on this machine; "
                    "use 'cpu' or run on a machine with a GPU."
                )
            if target.index is None:
                target = torch.device("cuda", torch.cuda.current_device())
        self._device = target
        if not self._user_pin_memory:
            self.pin_memory = target.type == "cuda"
        return self

    def setup_distributed(self) -> None:
        """Switch to sharded sampling in the current process group (called by ``Context.ddp``).

        The loader also shards by itself when it is iterated inside a process group; this
        call additionally agrees on the seed now (rank 0's wins), so that it is a collective:
        every rank must call it. A loader given its own ``sampler`` or ``batch_sampler`` is
        left as it is.

        Raises:
            DistributedError: no process group is initialized.
        """
        if not is_distributed():
            raise DistributedError(
                "SmartDataLoader.setup_distributed() was called without a process group; "
                "initialize torch.distributed (or use Context.ddp()) first."
            )
        if self._own_sampler is None:
            logger.info("SmartDataLoader uses the sampler it was given; it is not sharded.")
            return
        self._agree_seed()

    def _iterates_in_lockstep(self) -> bool:
        """Whether every rank delivers the same number of batches per epoch."""
        return self._own_sampler is not None and self.even_shards

    def _agree_seed(self) -> None:
        if self.shuffle and not self._seed_agreed:
            self._seed = int(broadcast_from_master(self._seed))
            self._own_sampler.seed = self._seed
        self._seed_agreed = True

    def state_dict(self) -> dict:
        """The loader's position: epoch, batches delivered in it, seed and layout.

        Holds only Python ints (and ``None``), so it loads with ``weights_only=True``.
        """
        return {
            "epoch": self._epoch,
            "position": self._position,
            "seed": self._seed,
            "num_processes": get_num_processes(),
            "batch_size": self.batch_size,
        }

    def check_state_dict(self, state: dict) -> None:
        """Raise if ``state`` cannot be loaded, changing nothing (``Context`` asks first).

        Raises:
            StateDictError: ``state`` lacks a key or holds a wrong type.
        """
        check_state(state)

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state``: the next iteration resumes after the delivered batches.

        An iteration in progress is ended first. If the world size or batch size differs
        from the saved one, the position is rescaled to the same number of samples and a
        warning is logged: the continuation is then approximate.

        Raises:
            StateDictError: ``state`` lacks a key or holds a wrong type.
        """
        self.check_state_dict(state)
        self._end_active_iteration()
        self._epoch = state["epoch"]
        self._position = state["position"]
        self._seed = state["seed"]
        self._seed_agreed = True
        if self._own_sampler is not None:
            self._own_sampler.seed = self._seed
        self._saved_layout = (state["num_processes"], state["batch_size"])

    def __iter__(self) -> EpochIterator:
        self._end_active_iteration()
        prepare_epoch(self)
        iterator = EpochIterator(self)
        self._active = weakref.ref(iterator)
        return iterator

    def _end_active_iteration(self) -> None:
        iterator = self._active() if self._active is not None else None
        if iterator is not None:
            iterator.close()
        self._active = None

    def _runs_dataset_code_in_process(self) -> bool:
        """Whether the dataset's own code runs in this process (no workers, no gather)."""
        return self.num_workers == 0 and self.cache is None and not _fast_gather_applies(self)

    def _get_iterator(self):
        # DataLoader's iterators (and its workers) take the dataset from the loader here;
        # with seeded fetches they get the proxy that seeds each fetch (see _sample_seeds).
        if self._fetch_seed_base is None:
            return super()._get_iterator()
        dataset = self.dataset
        self.__dict__["dataset"] = SeededFetch(dataset)
        try:
            return super()._get_iterator()
        finally:
            self.__dict__["dataset"] = dataset

    def _host_batches(self) -> Iterator[Any]:
        # DataLoader's own iterators serve where neither the cache nor the gather applies.
        batches = host_batches(self)
        return super().__iter__() if batches is None else batches

    def _make_bar(self, start: int):
        if not self.loading_bar or not is_master():
            return None
        try:
            total = len(self)
        except TypeError:
            total = None
        return epoch_progress(self._epoch, start, total)

