"""One process writes a run directory at a time.

A run continued in its own directory (``--checkpoint latest``) while its earlier process
still writes there, because the same command was started twice or a scheduler requeued a
job whose first instance had not ended, would mix two runs' recordings and checkpoints in
one directory. The process that writes a run (rank 0 of a distributed one) holds a lock on
``.pystematic-torch.lock`` in it for as long as the experiment runs, and a run that would
continue a locked directory is refused before it writes anything.

The lock is an ``flock`` on the file: the kernel releases it when its process ends however
it ends, SIGKILL included, so nothing stale is ever left to clean up. It belongs to the open
file, not to the process, so the process opening and closing the lock file itself (copying
its run directory, say) does not release it; forked children (DataLoader workers) drop
their inherited copy at once (``_forked``), so a worker outliving a killed run does not
hold the run.
Linux's NFS client turns it into a lock the server holds, seen from every machine (not on
mounts with ``nolock``, where it is local to each machine). The lock file names its holder,
for the error a refused run gets.
"""
import datetime
import errno
import json
import logging
import os
import pathlib
import socket
from typing import Optional

from . import _forked
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
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
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
    _forked.let_go_in_children(descriptor)
    _name_the_holder(descriptor)


def _name_the_holder(descriptor: int) -> None:
    # Written under the lock, before anything else of the run: run.json names the run's
    # process only once the run has started, after the job has formed.
    since = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": since}
    try:
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, json.dumps(holder).encode(), 0)
    except OSError:
        pass  # the lock holds without it; only the refusal's message is poorer


def _forget_in_child() -> None:
    # The child's copy of the descriptor is /dev/null by now (``_forked``): it holds nothing.
    global _held, _held_dir
    _held, _held_dir = None, None


os.register_at_fork(after_in_child=_forget_in_child)


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
    try:
        record = json.loads((run_dir / LOCK_NAME).read_text())
    except (OSError, ValueError):
        record = {}
    holder = ""
    if isinstance(record, dict) and record.get("pid") is not None:
        holder = f" (process {record['pid']} on {record.get('host', 'an unknown host')}"
        holder += f", since {record['since']})" if record.get("since") else ")"
    return (
        f"{what}, {run_dir}, is still being written by another process{holder}. Two "
        "processes writing one run would mix their recordings and checkpoints. Wait for that "
        "run to end (or stop it), then run this command again."
    )
