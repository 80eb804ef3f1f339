"""Writing a file so that a crash or a kill leaves the old file or the whole new one.

The bytes go to a temporary file beside the target, are fsynced, and the temporary file is
renamed over the target; the directory is fsynced so the rename itself survives a power
loss. A kill mid-write leaves only the temporary file, which a later save removes.
"""
import logging
import os
import pathlib
import re
import socket
from typing import Any

import torch

logger = logging.getLogger("pystematic.torch.checkpoint")

_HOST = socket.gethostname()
_TEMPORARY = re.compile(r"^\.checkpoint-.+\.pt\.(?P<host>.+)\.(?P<pid>\d+)\.tmp$")


def temporary_path(path: pathlib.Path) -> pathlib.Path:
    # Host and pid in the name: a requeued job on another machine may share the directory.
    return path.with_name(f".{path.name}.{_HOST}.{os.getpid()}.tmp")


def save_atomically(obj: Any, path: pathlib.Path) -> None:
    """``torch.save(obj)`` to ``path``, atomically and durably.

    Raises:
        OSError: or whatever ``torch.save`` raised; ``path`` is then as it was before.
    """
    temporary = temporary_path(path)
    try:
        with open(temporary, "wb") as file:
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    fsync_directory(path.parent)


def fsync_directory(directory: pathlib.Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot fsync a directory; the rename is done either way
    finally:
        os.close(fd)


def remove_abandoned_temporaries(directory: pathlib.Path) -> None:
    """Delete temporary files of writes killed on this machine (their process is gone).

    Call it only while this process writes nothing into ``directory``: a file named with
    this process's own pid is then left over from an earlier process that had the same pid,
    which happens in containers.
    """
    for child in directory.iterdir():
        match = _TEMPORARY.match(child.name)
        if not match or match["host"] != _HOST:
            continue
        pid = int(match["pid"])
        if pid != os.getpid() and _process_alive(pid):
            continue
        try:
            child.unlink()
            logger.info("Removed %s, left by a checkpoint write that was killed.", child)
        except OSError:
            pass


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
