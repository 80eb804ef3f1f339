"""How a SmartDataLoader's worker processes start.

A scheduler that preempts a job signals every process in it (SLURM's ``scancel
--signal=TERM`` and its time limit do; so does a signal to a process group), DataLoader
workers included. A worker killed that way makes the training process raise "DataLoader
worker is killed by signal" before the ranks have agreed where to stop, and the run fails
instead of saving its state. Workers therefore obey SIGTERM only from their training
process (torch terminates a worker that does not stop in time) or once it is gone, and
ignore SIGUSR1, which torch never sends. Telling the sender apart needs ``sigwaitinfo``
(Linux); elsewhere workers keep the default behaviour.
"""
import os
import signal
import threading
from typing import Callable, Optional


class WorkerStart:
    """A ``worker_init_fn``: guard against the scheduler's signals, then run the user's own."""

    def __init__(self, user_init: Optional[Callable[[int], None]]) -> None:
        self.user_init = user_init

    def __call__(self, worker_id: int) -> None:
        if hasattr(signal, "sigwaitinfo") and hasattr(signal, "pthread_kill"):
            # Blocked here, before the worker starts any thread, so every thread inherits
            # it: the signal then waits for the thread below, which decides.
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
            threading.Thread(target=_obey_sigterm_only_from, args=(os.getppid(),),
                             name="pt_worker_sigterm", daemon=True).start()  # fmt: skip
            if hasattr(signal, "SIGUSR1"):
                signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        if self.user_init is not None:
            self.user_init(worker_id)


def _obey_sigterm_only_from(training_process: int) -> None:
    while True:
        sender = signal.sigwaitinfo({signal.SIGTERM}).si_pid
        if sender == training_process or os.getppid() != training_process:
            # SIGTERM's action is still the default: delivered to this thread, where it is
            # no longer blocked, it ends the process as if it had never been blocked.
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
            signal.pthread_kill(threading.get_ident(), signal.SIGTERM)
