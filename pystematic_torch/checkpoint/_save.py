"""Saving and loading checkpoints.

A checkpoint is a plain ``torch.save`` file of a state dict that loads with
``torch.load(weights_only=True)``: it never needs pickled code, so it is safe to open and
keeps loading after the code that wrote it has changed.
"""
import collections
import logging
import os
import pathlib
import re
from typing import Any, List, Optional, Union

import torch

from .. import _session
from ..distributed import is_master
from ..errors import CheckpointError

__all__ = ["save_checkpoint", "load_checkpoint", "find_checkpoint"]

logger = logging.getLogger("pystematic.torch.checkpoint")

PathLike = Union[str, os.PathLike]
_ID_PATTERN = re.compile(r"^[A-Za-z0-9_.-]+$")
_FILE_PATTERN = re.compile(r"^checkpoint-(?P<id>[A-Za-z0-9_.-]+)\.pt$")
# Exact types: numpy.float64 subclasses float but needs pickled numpy code to load.
_SAFE_PLAIN_TYPES = {str, bytes, int, float, bool, complex, type(None)}
_SAFE_TORCH_TYPES = (torch.Tensor, torch.Size, torch.dtype, torch.device)


def save_checkpoint(
    state: dict,
    id: Union[int, str],
    directory: Optional[PathLike] = None,
    overwrite: bool = False,
) -> Optional[pathlib.Path]:
    """Write ``state`` to ``<directory>/checkpoint-<id>.pt`` atomically.

    The file is written under a temporary name and renamed into place, so a crash or a kill
    while saving leaves either the previous file or the complete new one, never half a file.
    In a distributed run every rank may call this; only rank 0 writes.

    Args:
        state: Usually ``ctx.state_dict()``. Tensors, numbers, strings, None and dicts,
            lists and tuples of these.
        id: Names the checkpoint, e.g. the epoch. Letters, digits, ``_``, ``.`` and ``-``.
        directory: Where to write; defaults to the running experiment's output directory.
        overwrite: Replace an existing checkpoint with the same id instead of refusing.

    Returns:
        The path written, or None on ranks other than 0.

    Raises:
        CheckpointError: the id has other characters, the file exists and ``overwrite`` is
            False, no directory is known, the state holds values ``torch.load(weights_only=
            True)`` cannot read (each is listed by its path), or the write failed.
    """
    if not _ID_PATTERN.match(str(id)):
        raise CheckpointError(
            f"Checkpoint id {id!r} has characters other than letters, digits, '_', '.' and '-'."
        )
    problems = _unloadable_values(state, "state")
    if problems:
        raise CheckpointError(
            "The checkpoint state holds values that torch.load(weights_only=True) cannot read; "
            "turn them into tensors, numbers or strings: " + "; ".join(problems) + "."
        )
    if not is_master():
        return None

    target_dir = pathlib.Path(directory) if directory is not None else _default_directory()
    target_dir.mkdir(parents=True, exist_ok=True)
    path = target_dir / f"checkpoint-{id}.pt"
    if path.exists() and not overwrite:
        raise CheckpointError(
            f"{path} already exists; pass overwrite=True to replace it or use another id."
        )
    temporary = target_dir / f".checkpoint-{id}.pt.tmp-{os.getpid()}"
    try:
        with open(temporary, "wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
        _fsync_directory(target_dir)
    except OSError as error:
        raise CheckpointError(f"Could not write checkpoint {path}: {error}") from error
    finally:
        temporary.unlink(missing_ok=True)
    logger.info("Saved checkpoint %s.", path)
    return path


def find_checkpoint(path: PathLike) -> pathlib.Path:
    """Return the checkpoint file ``path`` names: the file itself, or a run directory's newest.

    The newest is the most recently written ``checkpoint-*.pt``; among files written in the
    same instant the highest numeric id wins.

    Raises:
        CheckpointError: the path does not exist or the directory holds no checkpoint.
    """
    path = pathlib.Path(path)
    if not path.exists():
        raise CheckpointError(
            f"Checkpoint {str(path)!r} does not exist; give a checkpoint file or a run directory."
        )
    if path.is_file():
        return path
    candidates = [child for child in path.iterdir() if _FILE_PATTERN.match(child.name)]
    if not candidates:
        raise CheckpointError(f"Run directory {str(path)!r} holds no checkpoint-*.pt file.")

    def newest_first(candidate: pathlib.Path):
        file_id = _FILE_PATTERN.match(candidate.name)["id"]
        numeric_id = int(file_id) if file_id.isdigit() else -1
        return candidate.stat().st_mtime_ns, numeric_id

    return max(candidates, key=newest_first)


def load_checkpoint(path: PathLike, map_location: Any = "cpu") -> dict:
    """Read a checkpoint file, or a run directory's newest checkpoint.

    Args:
        path: A checkpoint file or a run's output directory.
        map_location: Where tensors are loaded; CPU by default, since
            ``Context.load_state_dict`` copies them onto the context's own device.

    Raises:
        CheckpointError: nothing to load there, or the file is not a weights-only checkpoint.
    """
    file = find_checkpoint(path)
    try:
        state = torch.load(file, map_location=map_location, weights_only=True)
    except Exception as error:
        raise CheckpointError(
            f"Could not load checkpoint {str(file)!r} with torch.load(weights_only=True): "
            f"{str(error).splitlines()[0]}"
        ) from error
    logger.info("Loaded checkpoint %s.", file)
    return state


def _default_directory() -> pathlib.Path:
    if _session.current_params() is None:
        raise CheckpointError(
            "save_checkpoint needs a directory outside a running experiment; pass directory=."
        )
    import pystematic

    return pathlib.Path(pystematic.output_dir)


def _unloadable_values(value: Any, path: str) -> List[str]:
    if type(value) in _SAFE_PLAIN_TYPES or isinstance(value, _SAFE_TORCH_TYPES):
        return []
    if type(value) in (dict, collections.OrderedDict):
        problems = []
        for key, item in value.items():
            if type(key) not in _SAFE_PLAIN_TYPES:
                problems.append(f"{path}: key {key!r} of type {type(key).__name__}")
            problems.extend(_unloadable_values(item, f"{path}[{key!r}]"))
        return problems
    if type(value) in (list, tuple, set):
        problems = []
        for index, item in enumerate(value):
            problems.extend(_unloadable_values(item, f"{path}[{index}]"))
        return problems
    return [f"{path} is a {type(value).__module__}.{type(value).__qualname__}"]


def _fsync_directory(directory: pathlib.Path) -> None:
    # The rename is only durable once the directory entry itself reaches the disk.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
