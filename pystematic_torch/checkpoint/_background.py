"""The one checkpoint write that may run in the background, and waiting for it.

At most one write is in flight: the next save waits for it first, so checkpoints reach the
disk in the order they were saved and at most one snapshot is held in memory. A failed write
is kept and raised by the next :func:`wait` (the next save, ``wait_for_checkpoints()`` or
the end of the experiment) so it never vanishes with its thread.
"""
import logging
import os
import pathlib
import threading
from typing import Callable, Optional

from .. import _session
from ..errors import CheckpointError

logger = logging.getLogger("pystematic.torch.checkpoint")

# How much lower than the training loop's the writer thread's CPU priority is.
_NICENESS = 10
_lock = threading.Lock()
_pending: Optional["_Write"] = None
# The experiment whose end already waits for our writes (its params dict, compared by identity).
_waited_for_by: Optional[dict] = None


class _Write:
    def __init__(self, path: pathlib.Path, write: Callable[[], None]) -> None:
        self.path = path
        self.error: Optional[BaseException] = None
        # Not a daemon: an interpreter that ends outside an experiment still finishes the file.
        self.thread = threading.Thread(
            target=self._run, args=(write,), name=f"checkpoint writer ({path.name})"
        )

    def _run(self, write: Callable[[], None]) -> None:
        _yield_to_training()
        try:
            write()
        except BaseException as error:  # noqa: BLE001 - handed to whoever waits next
            self.error = error
            logger.error(
                "Writing checkpoint %s in the background failed: %s: %s. The next "
                "save_checkpoint or wait_for_checkpoints raises this error.",
                self.path, type(error).__name__, error,
            )  # fmt: skip


def start(path: pathlib.Path, write: Callable[[], None]) -> None:
    """Run ``write`` in a background thread; call :func:`wait` first."""
    global _pending
    job = _Write(path, write)
    with _lock:
        if _pending is not None:
            raise RuntimeError("a background checkpoint write is already running")
        _pending = job
        _wait_at_experiment_end()
        job.thread.start()


def wait() -> None:
    """Return once no checkpoint is being written in the background.

    Raises:
        CheckpointError: the last background write failed; the error names the checkpoint
            and chains the original exception.
    """
    global _pending
    with _lock:
        job = _pending
    if job is None:
        return
    job.thread.join()
    with _lock:
        if _pending is job:
            _pending = None
        else:
            return  # another thread waited for it concurrently and reports its outcome
    if job.error is not None:
        raise CheckpointError(
            f"Writing checkpoint {job.path} in the background failed: "
            f"{type(job.error).__name__}: {job.error}. The checkpoints written before it are "
            "intact; fix the cause (disk space, permissions) and save again."
        ) from job.error


def _yield_to_training() -> None:
    """Lower this thread's CPU priority, so a loop sharing the cores keeps its pace.

    On Linux each thread has its own nice value; elsewhere this does nothing. Raising it
    needs no privilege.
    """
    try:
        thread_id = threading.get_native_id()
        niceness = os.getpriority(os.PRIO_PROCESS, thread_id)
        os.setpriority(os.PRIO_PROCESS, thread_id, min(niceness + _NICENESS, 19))
    except (AttributeError, OSError):
        pass


def _wait_at_experiment_end() -> None:
    global _waited_for_by
    params = _session.current_params()
    if params is not None and params is not _waited_for_by:
        _waited_for_by = params
        _session.call_at_exit(wait)
