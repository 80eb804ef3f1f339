"""One pass over a SmartDataLoader: delivery counting, device feeding, the end of an epoch.

An epoch ends when its batches run out. Leaving the loop early (``break``, an exception,
preemption) keeps the loader's place, so the next ``iter()`` continues the same epoch after
the last delivered batch, exactly as a run resumed from a checkpoint taken there does.
"""
import itertools
import logging
from typing import Any

from torch.utils.data import IterableDataset

from .. import _session
from ..devices import iter_tensors, move_to_device
from ..distributed._preemption import Preempted, _interrupted, stop_check_for, watch_batches
from . import _prefetch

logger = logging.getLogger("pystematic.torch.data")

# The bar is told of batches in groups: it redraws ten times a second at most, and telling
# it of every batch costs more than a tiny model's step takes to gather its batch.
_BAR_EVERY = 8


class EpochIterator:
    """One pass over a SmartDataLoader: counts deliveries, ends the epoch when it runs out."""

    def __init__(self, loader) -> None:
        # Closed until fully built, so a failed start does not count as an ended epoch.
        self._done = True
        self._loader = loader
        self._epoch = loader._epoch
        self._feeder = None
        start = loader._position
        self._bar = None
        host = loader._host_batches()
        if isinstance(loader.dataset, IterableDataset) and start:
            logger.warning(
                "Resuming an IterableDataset mid-epoch: reading and discarding the %d batches "
                "delivered before the checkpoint.", start,
            )  # fmt: skip
            host = itertools.islice(host, start, None)
        device = loader._device if loader.move_output else None
        if device is None or loader.cache is not None:
            self._next = host.__next__
        elif device.type == "cuda" and loader._runs_dataset_code_in_process():
            # The dataset draws from this process's global generators, as the loop does: a
            # fetch on the prefetch thread would interleave their draws at random.
            self._next = lambda: move_to_device(
                device, _prefetch.pin_tree(next(host)), non_blocking=True
            )
        elif device.type == "cuda":
            self._feeder = _prefetch.cuda_feeder(host, device)
            self._next = self._feeder.__next__
        else:
            self._host, self._device = host, device
            self._next = self._first_batch
        self._bar = loader._make_bar(start)
        self._unshown = 0
        self._stop_check = stop_check_for(loader, _registered_on_a_context)
        self._stop_agreed = False
        if self._stop_check is not None:
            watch_batches(self)
        # The loader's attributes, written directly: DataLoader.__setattr__ guards a few
        # attributes at a cost paid on every batch otherwise.
        self._place = vars(loader)
        self._done = False

    def __iter__(self) -> "EpochIterator":
        return self

    def __len__(self) -> int:
        return len(self._loader)

    def __next__(self) -> Any:
        if self._done:
            raise StopIteration
        if self._stop_check is not None and (self._stop_agreed or self._stop_check()):
            # Every rank agrees here, at the same batch, and then stops at the first batch
            # where the epoch still has batches and no gradients wait for more micro-steps:
            # both are the same on every rank.
            self._stop_agreed = True
            if not self._exhausted() and not _accumulating(self._loader):
                self.close()
                raise Preempted(self._loader)
        if _interrupted.is_set():
            self.close()
            raise KeyboardInterrupt
        try:
            batch = self._next()
        except StopIteration:
            self._end_epoch()
            raise
        self._place["_position"] += 1
        if self._bar is not None:
            self._unshown += 1
            if self._unshown == _BAR_EVERY:
                self._bar.update(self._unshown)
                self._unshown = 0
        return batch

    def stops_at_next_batch(self) -> bool:
        """Whether this pass is still delivering, and stops when told (Ctrl-C, preemption)."""
        return not self._done and self._stop_check is not None

    def _first_batch(self) -> Any:
        # Walking every batch to move its tensors costs more than a small model's step; when
        # the first batch is already where it should be, the rest are delivered as they come.
        batch = next(self._host)
        host, device = self._host, self._device
        if all(tensor.device == device for tensor in iter_tensors(batch)):
            self._next = host.__next__
            return batch
        self._next = lambda: move_to_device(device, next(host))
        return move_to_device(device, batch)

    def _exhausted(self) -> bool:
        # At the end of an epoch the loop is let finish it (the code after the loop runs),
        # and stops at the next epoch's first batch: a resumed run never starts with an
        # epoch that has no batches left.
        try:
            return self._loader._position >= len(self._loader)
        except TypeError:
            return False

    def _end_epoch(self) -> None:
        loader = self._loader
        active = loader._active() if loader._active is not None else None
        if not self._done and (active is self or active is None):
            loader._epoch = self._epoch + 1
            loader._position = 0
        self.close()

    def close(self) -> None:
        """Stop this pass, keeping the loader's place: its next iteration continues the epoch."""
        if self._done:
            return
        self._done = True
        if self._feeder is not None:
            self._feeder.close()
        if self._bar is not None:
            self._bar.update(self._unshown)
            self._bar.close()
        self._next = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: the loader may already be gone
            pass


def _accumulating(loader) -> bool:
    return any(context._holds(loader) and context._mid_accumulation()
               for context in _session.contexts())  # fmt: skip


def _registered_on_a_context(loader) -> bool:
    # Only inside an experiment is there a teardown to save the Context's state.
    if _session.current_params() is None:
        return False
    return any(context._holds(loader) for context in _session.contexts())
