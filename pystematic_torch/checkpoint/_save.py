"""save_checkpoint and wait_for_checkpoints: the writing side."""
import functools
import logging
import os
import pathlib
import threading
from typing import Any, Mapping, Optional, Union

from .. import _session
from ..distributed import get_num_processes, is_master
from ..errors import CheckpointError
from . import _atomic, _background, _format, _retention, _runs, _snapshot
from ._format import CONTEXT, STATE, ContextState
from ._weights_only import unloadable_values

__all__ = ["save_checkpoint", "wait_for_checkpoints"]

logger = logging.getLogger("pystematic.torch.checkpoint")

PathLike = Union[str, "os.PathLike[str]"]
# Saves from several threads take turns, so each waits for the write before it.
_one_save_at_a_time = threading.Lock()


def save_checkpoint(
    state: Mapping[str, Any],
    id: Union[int, str],
    directory: Optional[PathLike] = None,
    keep_last: Optional[int] = None,
    blocking: bool = True,
    *,
    overwrite: bool = True,
) -> Optional[pathlib.Path]:
    """Save ``state`` as ``<directory>/checkpoint-<id>.pt``, atomically.

    The file is a plain ``torch.save`` file that loads with ``torch.load(weights_only=
    True)``; next to the state it records the experiment's parameters, the world size, the
    library version and a sequence number (see :doc:`checkpoints`). A crash or a kill while
    saving leaves the previous file or the complete new one, never half a file, so saving an
    id that exists (``id="best"``) replaces it safely.

    Before anything is written, every recorder and HDF5 writer is flushed, so a kill right
    after this call loses nothing recorded before it. In a distributed run every rank calls
    this; each flushes its own recordings and rank 0 writes the file.

    Args:
        state: A dict, usually ``ctx.state_dict()``: tensors, numbers, strings, None, and
            dicts, lists and tuples of these. A Context's state is what resuming a run
            means; any other dict (a model's weights) is saved but never chosen to resume.
        id: Names the checkpoint: an int such as the epoch, or letters, digits, ``_``,
            ``.`` and ``-`` such as ``"best"``.
        directory: Where to write; defaults to the running experiment's output directory.
        keep_last: Once this checkpoint is complete, delete the run's older checkpoints
            with numeric ids until ``keep_last`` of them remain. Named checkpoints
            (``best``) and the checkpoint this experiment resumed from are never deleted.
        blocking: With False, copy the state to host memory (pinned memory for GPU
            tensors), return, and write the file in a background thread. The next save,
            :func:`wait_for_checkpoints` and the end of the experiment wait for it.
        overwrite: With False, refuse to replace a checkpoint that has this id already.

    Returns:
        The checkpoint's path (with ``blocking=False``, where it is being written), or None
        on ranks other than 0.

    Raises:
        CheckpointError: the id or ``keep_last`` is invalid, the checkpoint exists and
            ``overwrite`` is False, ``state`` is not a dict, no
            directory is known, the state holds values ``torch.load(weights_only=True)``
            cannot read (each is listed by its path), the write failed, or the previous
            background write failed (raised before anything new is written).
        Exception: flushing a recorder failed; it is raised after the checkpoint is saved.
    """
    name = _format.file_name(id)
    if keep_last is not None and (type(keep_last) is not int or keep_last < 1):
        raise CheckpointError(
            f"save_checkpoint got keep_last={keep_last!r}; give an int >= 1, or None to keep "
            "every checkpoint."
        )
    kind = CONTEXT if isinstance(state, ContextState) else STATE
    _format.with_metadata(state, {})  # refuses a non-dict or the reserved key
    problems = unloadable_values(state, "state")
    if problems:
        raise CheckpointError(
            "The checkpoint state holds values that torch.load(weights_only=True) cannot "
            "read:\n  - " + "\n  - ".join(problems)
        )
    flush_error = _flush_recordings()
    path = None
    if is_master():
        with _one_save_at_a_time:
            path = _save_on_master(state, kind, name, str(id), directory, keep_last, blocking,
                                   overwrite)  # fmt: skip
    if flush_error is not None:
        logger.error("Checkpoint %s was saved, but flushing the recordings failed.", path)
        raise flush_error
    return path


def wait_for_checkpoints() -> None:
    """Return once the checkpoint being written in the background (if any) is on disk.

    Use it before reading a checkpoint saved with ``blocking=False``, or to learn about a
    failed write at a point of your choosing. The end of an experiment calls it too.

    Raises:
        CheckpointError: the background write failed; it names the checkpoint, and the
            checkpoints written before it are intact.
    """
    _background.wait()


def _flush_recordings() -> Optional[BaseException]:
    try:
        _session.make_durable()
    except Exception as error:  # noqa: BLE001 - the checkpoint is still saved, then raised
        return error
    return None


def _save_on_master(state, kind, name, checkpoint_id, directory, keep_last, blocking, overwrite):
    _background.wait()
    target_dir = pathlib.Path(directory) if directory is not None else _default_directory()
    path = target_dir / name
    if not overwrite and path.exists():
        raise CheckpointError(
            f"{path} already exists and overwrite=False; use another id, or leave overwrite "
            "at True to replace it atomically."
        )
    try:
        target_dir.mkdir(parents=True, exist_ok=True)
        sequence = _runs.next_sequence(target_dir)
    except OSError as error:
        raise CheckpointError(
            f"Could not create checkpoint directory {target_dir}: {error}"
        ) from error
    metadata = _format.metadata(kind, sequence, checkpoint_id, get_num_processes())
    payload = _format.with_metadata(state, metadata)
    if blocking:
        try:
            _write(payload, path, keep_last)
        except Exception as error:
            raise CheckpointError(
                f"Could not write checkpoint {path}: {type(error).__name__}: {error}. The "
                "checkpoints written before it are intact."
            ) from error
    else:
        _background.start(path, functools.partial(_write, _snapshot.snapshot(payload), path,
                                                  keep_last))  # fmt: skip
    return path


def _write(payload: Any, path: pathlib.Path, keep_last: Optional[int]) -> None:
    _atomic.save_atomically(payload, path)
    logger.info("Saved checkpoint %s.", path)
    if keep_last is not None:
        _retention.keep_last(path.parent, keep_last, newest=path)


def _default_directory() -> pathlib.Path:
    if _session.current_params() is None:
        raise CheckpointError(
            "save_checkpoint needs a directory outside a running experiment; pass directory=."
        )
    import pystematic

    return pathlib.Path(str(pystematic.output_dir))
