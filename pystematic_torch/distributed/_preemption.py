"""Stopping cleanly when the scheduler asks: SIGTERM sets a flag the training loop checks.

SLURM and cloud schedulers send SIGTERM some time before they kill a job. During an
experiment the first SIGTERM only sets a flag, so the loop can save a checkpoint and return;
a second SIGTERM ends the process at once, as usual.
"""
import logging
import os
import signal
import threading

from . import all_reduce, is_distributed

__all__ = ["stop_requested"]

logger = logging.getLogger("pystematic.torch")

_requested = threading.Event()
_previous_handler = None


def stop_requested() -> bool:
    """Whether this job has been asked to stop (SIGTERM), agreed across all ranks.

    In a distributed run this is a collective: call it at the same point on every rank
    (e.g. once per step or per epoch). It returns True on every rank as soon as any rank
    received SIGTERM, so all ranks leave the loop after the same step.

    Example:
        >>> for x, y in ctx.loader:
        ...     train_step(x, y)
        ...     if pystematic.torch.stop_requested():
        ...         pystematic.torch.save_checkpoint(ctx.state_dict(), id="preempted")
        ...         return
    """
    local = _requested.is_set()
    if is_distributed():
        return bool(all_reduce(int(local), "max"))
    return local


def _install() -> None:
    global _previous_handler
    _requested.clear()
    if threading.current_thread() is threading.main_thread():
        _previous_handler = signal.signal(signal.SIGTERM, _on_sigterm)


def _uninstall() -> None:
    global _previous_handler
    if _previous_handler is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _previous_handler)
        _previous_handler = None


def _on_sigterm(signum, frame) -> None:
    if _requested.is_set():
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        return
    _requested.set()
    logger.warning(
        "SIGTERM received: stop_requested() now returns True. Send SIGTERM again to stop "
        "immediately."
    )
