"""One process writes a run directory at a time.

A run continued in its own directory (``--checkpoint latest``) while its earlier process
still writes there, because the same command was started twice or a scheduler requeued a
job whose first instance had not ended, would mix two runs' recordings and checkpoints in
one directory. The process that writes a run (rank 0 of a distributed one) holds a lock on
``.pystematic-torch.lock`` in it for as long as the experiment runs, and a run that would
continue a locked directory is refused before it writes anything.

The lock is a POSIX record lock (``fcntl.lockf``): the kernel releases it when its process
ends however it ends, SIGKILL included, so nothing stale is ever left to clean up; forked
children (DataLoader workers) do not inherit it; and NFS shares it between machines.
"""
import errno
import logging
import os
import pathlib
from typing import Optional

from .errors import LaunchError

logger = logging.getLogger("pystematic.torch")

LOCK_NAME = ".pystematic-torch.lock"
_BUSY = (errno.EACCES, errno.EAGAIN)

_held: Optional[int] = None
_held_dir: Optional[pathlib.Path] = None


class RunBusy(LaunchError):
    """The run directory is being written by another process."""


def hold(run_dir: pathlib.Path, what: str) -> None:
    """Lock ``run_dir`` for this process until :func:`release` or the process's end.

    Args:
        run_dir: The run directory this process is about to write.
        what: The run, as the error names it (``"--checkpoint latest: the newest run of
            'train'"``).

    Raises:
        RunBusy: another process holds the directory; the message names it as far as the
            run's ``run.json`` says.
    """
    import fcntl

    release()
    run_dir = pathlib.Path(run_dir)
    try:
        descriptor = os.open(run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as error:
        logger.warning("Could not create the lock file in %s (%s); another process writing "
                       "this run at the same time would go unnoticed.", run_dir, error)  # fmt: skip
        return
    try:
        fcntl.lockf(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        os.close(descriptor)
        if error.errno in _BUSY:
            raise RunBusy(_busy_message(run_dir, what)) from None
        logger.warning("Could not lock %s (%s): this file system does not support locks, so "
                       "another process writing this run at the same time would go unnoticed.",
                       run_dir / LOCK_NAME, error)  # fmt: skip
        return
    global _held, _held_dir
    _held, _held_dir = descriptor, run_dir


def release() -> None:
    """Release the lock this process holds, if any (at the end of each experiment)."""
    global _held, _held_dir
    if _held is not None:
        os.close(_held)  # closing the descriptor releases the lock
    _held, _held_dir = None, None


def held_dir() -> Optional[pathlib.Path]:
    """The run directory this process holds, or None."""
    return _held_dir


def _busy_message(run_dir: pathlib.Path, what: str) -> str:
    from . import _run_record

    record = _run_record.read(run_dir) or {}
    holder = ""
    if record.get("pid") is not None:
        holder = f" (process {record['pid']} on {record.get('host', 'an unknown host')}"
        holder += f", started {record['started_at']})" if record.get("started_at") else ")"
    return (
        f"{what}, {run_dir}, is still being written by another process{holder}. Two "
        "processes writing one run would mix their recordings and checkpoints. Wait for that "
        "run to end (or stop it), then run this command again."
    )
