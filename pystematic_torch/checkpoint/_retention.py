"""``keep_last``: deleting a run's older checkpoints, and what is never deleted.

Runs only after the new checkpoint is complete on disk, so at every moment the newest
``keep_last`` checkpoints are whole files. Only checkpoints with numeric ids (epochs,
steps) written with metadata are candidates, oldest sequence number first; named ones
(``best``, ``preempted``) and the checkpoint the running experiment resumed from are kept.
"""
import logging
import pathlib
import threading
from typing import Set

from .. import _session
from . import _runs

logger = logging.getLogger("pystematic.torch.checkpoint")

_lock = threading.Lock()
_resumed_from: Set[pathlib.Path] = set()


def protect(path: pathlib.Path) -> None:
    """Never delete ``path`` while the current experiment runs (it resumed from it)."""
    with _lock:
        first = not _resumed_from
        _resumed_from.add(path.resolve())
    if first:
        _session.call_at_exit(_forget)


def _forget() -> None:
    with _lock:
        _resumed_from.clear()


def keep_last(directory: pathlib.Path, count: int, newest: pathlib.Path) -> None:
    """Delete all but the ``count`` newest numeric-id checkpoints of ``directory``."""
    infos, _ = _runs.scan(directory)
    candidates = [info for info in infos if info.numeric and info.sequence is not None]
    with _lock:
        kept = set(_resumed_from) | {newest.resolve()}
    for info in candidates[: max(len(candidates) - count, 0)]:
        if info.path.resolve() in kept:
            continue
        try:
            info.path.unlink()
        except FileNotFoundError:
            pass
        except OSError as error:
            logger.warning("keep_last could not delete %s: %s", info.path, error)
        else:
            logger.info("Deleted %s (keep_last=%d).", info.path, count)
