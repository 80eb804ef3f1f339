"""Closing a backend's files so that nothing a failed write left in a buffer reaches disk later."""
import os
from typing import Any, Sequence

__all__ = ["sync_and_close"]


def sync_and_close(handles: Sequence[Any]) -> None:
    """Flush and sync every file in ``handles``, then close them all, even when one fails.

    A file whose flush failed (a full disk) still holds the bytes it could not write.
    Closing it the usual way, or leaving it to the garbage collector, writes them whenever
    that succeeds: possibly long after another recorder has repaired and appended to the
    same file, leaving a fragment of a row and older rows after the newer ones. So every
    file is closed at its file descriptor, which drops what is still buffered; what was
    written before stays.

    Raises:
        The first error of a flush or sync, once every file is closed.
    """
    failure = None
    try:
        for handle in handles:
            try:
                handle.flush()
                os.fsync(handle.fileno())
            except Exception as error:  # the other files are still flushed
                failure = failure or error
    finally:
        for handle in handles:
            _close_dropping_buffer(handle)
    if failure is not None:
        raise failure


def _close_dropping_buffer(handle: Any) -> None:
    # A text file's buffer, then a buffered file's raw file: once the raw file is closed,
    # the layers above count as closed too, and neither close() nor the garbage collector
    # flushes them again.
    raw = getattr(getattr(handle, "buffer", handle), "raw", None)
    if raw is not None:
        raw.close()
    handle.close()
