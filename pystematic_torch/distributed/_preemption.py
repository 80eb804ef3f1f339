"""Stopping cleanly when the scheduler asks: SIGTERM (or SIGUSR1) sets a flag.

SLURM and cloud schedulers send SIGTERM (SLURM's ``--signal`` may send SIGUSR1) some time
before they kill a job. During an experiment the first such signal only sets a flag. Two
things read it:

* a :class:`SmartDataLoader` registered on a Context stops the loop at the next batch
  boundary by raising :class:`Preempted`, on every rank after the same batch, and the plugin
  saves the Context's state and exits with ``128 + signal`` (143 for SIGTERM);
* :func:`stop_requested`, for loops that want to stop on their own terms.

A second signal ends the process at once, as it would without us.
"""
import logging
import os
import signal
import threading
import time
import weakref
from typing import Callable, Dict, Optional

import torch
import torch.distributed as dist

from . import _collective_device, all_reduce, get_rank, is_distributed

__all__ = ["stop_requested"]

logger = logging.getLogger("pystematic.torch")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
# How often, in wall time, ranks agree on stopping while iterating: often enough to stop
# within a second, rarely enough that the collective costs nothing measurable.
_AGREE_EVERY_SECONDS = 0.5
_MAX_AGREE_INTERVAL = 10_000

_requested = threading.Event()
_interrupted = threading.Event()
_signal_number: Optional[int] = None
_previous_handlers: Dict[int, object] = {}
_watching: "weakref.WeakSet" = weakref.WeakSet()


class Preempted(SystemExit):
    """Raised by a loader at a batch boundary once the job has been asked to stop.

    A ``SystemExit`` whose code is ``128 + signal``, so ``except Exception`` does not catch
    it and the process exits with the conventional status and no traceback.

    Attributes:
        loader: The loader whose iteration stopped.
    """

    def __init__(self, loader=None, signum: Optional[int] = None) -> None:
        signum = signum or _signal_number or signal.SIGTERM
        super().__init__(128 + int(signum))
        self.loader = loader
        self.signal_name = signal.Signals(signum).name


def stop_requested() -> bool:
    """Whether this job has been asked to stop (SIGTERM or SIGUSR1), agreed across all ranks.

    In a distributed run this is a collective: call it at the same point on every rank
    (e.g. once per step or per epoch). It returns True on every rank as soon as any rank
    received the signal, so all ranks leave the loop after the same step.

    A loop over a :class:`~pystematic_torch.SmartDataLoader` registered on a
    :class:`~pystematic_torch.Context` needs no such call: it stops by itself at the next
    batch and the Context's state is saved as ``checkpoint-preempted.pt``.

    Example:
        >>> for x, y in loader:
        ...     train_step(x, y)
        ...     if pystematic.torch.stop_requested():
        ...         pystematic.torch.save_checkpoint(ctx.state_dict(), id="preempted")
        ...         return
    """
    local = _requested.is_set()
    if is_distributed():
        return bool(all_reduce(int(local), "max"))
    return local


def requested_here() -> bool:
    """Whether this process received a stop signal (no agreement, no collective)."""
    return _requested.is_set()


def install() -> None:
    """Catch the stop signals for the experiment about to run (main thread only)."""
    global _signal_number
    _requested.clear()
    _interrupted.clear()
    _signal_number = None
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in STOP_SIGNALS:
        _previous_handlers[signum] = signal.signal(signum, _on_stop_signal)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        _previous_handlers[signal.SIGINT] = signal.signal(signal.SIGINT, _on_interrupt)


def interrupted() -> bool:
    """Whether Ctrl-C (SIGINT) arrived during this experiment."""
    return _interrupted.is_set()


def uninstall() -> None:
    _interrupted.clear()
    if threading.current_thread() is not threading.main_thread():
        return
    for signum, previous in list(_previous_handlers.items()):
        if signal.getsignal(signum) in (_on_stop_signal, _on_interrupt):
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        del _previous_handlers[signum]


def _on_stop_signal(signum, frame) -> None:
    global _signal_number
    previous = _previous_handlers.get(signum)
    if callable(previous):
        previous(signum, frame)  # a handler the user installed before the experiment
    if _requested.is_set():
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    _signal_number = signum
    _requested.set()
    logger.warning(
        "%s received: the run stops after the current batch of a SmartDataLoader registered "
        "on a Context (or where the loop calls stop_requested()) and saves its state. Send "
        "it again to stop at once.", signal.Signals(signum).name,
    )  # fmt: skip


def watch_batches(iteration) -> None:
    """Note that ``iteration`` stops at its next batch once Ctrl-C was pressed."""
    _watching.add(iteration)


def _on_interrupt(signum, frame) -> None:
    # Raised at an arbitrary point, a KeyboardInterrupt can land in a __del__ or a weakref
    # callback, where Python ignores it and the loop trains on. While a loader can stop the
    # loop at its next batch, the first Ctrl-C leaves the raising to it; a second one, or one
    # with no such loader, raises at once as Python's own handler does.
    first = not _interrupted.is_set()
    _interrupted.set()
    if first and any(iteration.stops_at_next_batch() for iteration in list(_watching)):
        logger.warning("Interrupted (Ctrl-C): stopping after the current batch. Press Ctrl-C "
                       "again to stop at once.")  # fmt: skip
        return
    raise KeyboardInterrupt


class StopCheck:
    """Decides, at each batch boundary of one loader, whether the loop stops now.

    Alone, the answer is the local flag. In a process group the ranks must stop after the
    same batch, so they agree by a collective, but not at every batch: rank 0 measures the
    time per batch and every agreement also fixes, for every rank, how many batches to the
    next one (about every half second). Every rank must therefore iterate the loader the
    same number of times, which even shards guarantee.
    """

    def __init__(self) -> None:
        self._distributed = is_distributed()
        self._count = 0
        self._next = 0
        self._clock: Optional[tuple] = None

    def __call__(self) -> bool:
        if not self._distributed:
            return _requested.is_set()
        count = self._count = self._count + 1
        if count < self._next:
            return False
        flags = torch.tensor([int(_requested.is_set()), self._interval(count)],
                             dtype=torch.int64, device=_collective_device())  # fmt: skip
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        stop, interval = flags.tolist()
        self._next = count + max(1, interval)
        return bool(stop)

    def _interval(self, count: int) -> int:
        if get_rank() != 0:
            return 0
        now = time.monotonic()
        last, self._clock = self._clock, (now, count)
        if last is None:
            return 1  # the first batch's time includes starting the iteration: measure the next
        then, then_count = last
        if count == then_count or now <= then:
            return 1
        per_batch = (now - then) / (count - then_count)
        return max(1, min(_MAX_AGREE_INTERVAL, int(_AGREE_EVERY_SECONDS / per_batch)))


def stop_check_for(loader, registered: Callable[[object], bool]) -> Optional[StopCheck]:
    """A StopCheck for one iteration of ``loader``, or None when it must not stop the loop.

    Only a loader registered on a Context stops by itself, since only then is there a state
    to save; in a process group, only one whose ranks iterate equally often.
    """
    if not registered(loader):
        return None
    if is_distributed() and not loader._iterates_in_lockstep():
        return None
    return StopCheck()
