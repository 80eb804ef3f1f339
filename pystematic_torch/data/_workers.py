"""How a SmartDataLoader's worker processes start.

A scheduler that preempts a job signals every process in it (SLURM's ``scancel
--signal=TERM`` and its time limit do; so does a terminal's process group), DataLoader
workers included. A worker killed that way makes the training process raise "DataLoader
worker is killed by signal" before the ranks have agreed where to stop, and the run fails
instead of saving its state. Workers therefore leave the preemption signals to the training
process: it stops them when it stops, and a worker whose training process is gone ends on
its own (torch's workers watch their parent).
"""
import signal
from typing import Callable, Optional

_PREEMPTION_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGUSR1") if hasattr(signal, name)
)


class WorkerStart:
    """A ``worker_init_fn``: ignore the preemption signals, then run the user's own."""

    def __init__(self, user_init: Optional[Callable[[int], None]]) -> None:
        self.user_init = user_init

    def __call__(self, worker_id: int) -> None:
        for signum in _PREEMPTION_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
        if self.user_init is not None:
            self.user_init(worker_id)
