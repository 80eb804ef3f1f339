"""HDF5 recordings: one growing dataset per tag, with its steps beside it."""
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .. import _hdf5_durable
from .._hdf5_walk import dataset_names
from ._backend import RecorderBackend, ResumePoint

__all__ = ["HDF5Backend"]

logger = logging.getLogger("pystematic.torch.recording")

# Values are kept in memory and appended in blocks: resizing a dataset per value is slow.
_BLOCK = 1024
_STEPS = ".steps"


class HDF5Backend(RecorderBackend):
    """Writes scalars and arrays to ``recordings.h5`` in the output directory.

    Each tag is a dataset at the tag's path (``train/loss`` is dataset ``loss`` in group
    ``train``) that grows along its first axis: shape ``(n,)`` of float64 for scalars and
    ``(n, *shape)`` for arrays, in the dtype of the tag's first array. Beside it, the
    dataset ``<tag>.steps`` (int64, shape ``(n,)``) holds the step of each entry. An
    existing file is appended to.

    The file is written so that a kill at any moment leaves it readable as of its last
    flush (every ``flush_secs``, before every checkpoint and at close); see
    :doc:`recording`.

    Example:
        >>> with h5py.File(run_dir / "recordings.h5", "r") as f:
        ...     losses, steps = f["train/loss"][:], f["train/loss.steps"][:]
    """

    name = "hdf5"

    def __init__(self, filename: str = "recordings.h5") -> None:
        self._filename = filename
        self._file: Any = None
        self._dir: Optional[Path] = None
        self._has_own_history = False
        self._buffers: Dict[str, Tuple[List[Any], List[int]]] = {}

    def open(self, output_dir: Optional[Path]) -> None:
        self._dir = Path(output_dir)
        path = self._dir / self._filename
        try:
            self._file = _hdf5_durable.open_file(str(path), "a")
        except OSError:
            if not _unreadable(path):
                raise
            # A requeued job would otherwise fail at every restart; the file is kept.
            kept = _free_name(path, f".unreadable-{time.strftime('%Y%m%dT%H%M%S')}")
            os.replace(path, kept)
            logger.warning(
                "%s does not open as an HDF5 file (a power loss, or a crash of an earlier "
                "version, can leave it so); it was renamed to %s and a new file started.",
                path, kept.name,
            )  # fmt: skip
            self._file = _hdf5_durable.open_file(str(path), "a")
        # An empty file is what a kill leaves while the history was being copied into it.
        self._has_own_history = bool(dataset_names(self._file))

    def _scalar_run(self, run: List[tuple]) -> None:
        buffers = self._buffers
        for _, tag, value, step, _ in run:
            buffer = buffers.get(tag)
            if buffer is None:
                buffer = buffers[tag] = ([], [])
            buffer[0].append(value)
            buffer[1].append(step)
            if len(buffer[1]) >= _BLOCK:
                self._write(tag)

    def scalar(self, tag: str, value: float, step: int) -> None:
        self._append(tag, value, step)

    def array(self, tag: str, array: np.ndarray, step: int) -> None:
        self._append(tag, array, step)

    def resume(self, point: ResumePoint) -> None:
        self._write_buffers()
        source = None if self._has_own_history else point.source_for(self._dir)
        if source is not None and (source / self._filename).exists():
            self._copy_history(source / self._filename, point)
        else:
            self._truncate(point)
        self._has_own_history = True
        _hdf5_durable.flush(self._file)

    def flush(self) -> None:
        self._write_buffers()
        _hdf5_durable.flush(self._file)

    def close(self) -> None:
        if self._file is None:
            return
        try:
            self.flush()
        finally:
            # Closed now even when the flush failed (a full disk): left to the garbage
            # collector, HDF5 would write its cached structure whenever that ran, perhaps
            # after another recorder had written to the file.
            handle, self._file = self._file, None
            try:
                handle.close()
            except Exception:  # noqa: BLE001 - the flush's error is the one reported
                logger.debug("Closing %s after a failed flush failed too.", self._filename)

    def _truncate(self, point: ResumePoint) -> None:
        """Cut every tag of the own file down to the resumed run's history."""
        for name, steps in self._tags(self._file):
            kept = self._kept(name, steps, point)
            if kept.all():
                continue
            for dataset, data in ((self._file[name], None), (self._file[name + _STEPS], steps)):
                data = dataset[:][kept] if data is None else data[kept]
                dataset.resize(len(data), axis=0)
                dataset[...] = data

    def _copy_history(self, source: Path, point: ResumePoint) -> None:
        """Put the kept history of another run's file in front of what this file holds."""
        import h5py

        with h5py.File(source, "r") as old:
            for name, steps in self._tags(old):
                kept = self._kept(name, steps, point)
                values = old[name][:][kept]
                for dataset_name, history in ((name, values), (name + _STEPS, steps[kept])):
                    mine = self._file[dataset_name][:] if dataset_name in self._file else None
                    data = history if mine is None else np.concatenate([history, mine])
                    self._store(dataset_name, data)

    @staticmethod
    def _tags(handle: Any) -> List[Tuple[str, np.ndarray]]:
        names = [n for n in dataset_names(handle) if not n.endswith(_STEPS)]
        return [(n, handle[n + _STEPS][:]) for n in names if n + _STEPS in handle]

    @staticmethod
    def _kept(name: str, steps: np.ndarray, point: ResumePoint) -> np.ndarray:
        """Which entries of tag ``name`` (steps in recording order) the resumed run keeps."""
        # Scalars and arrays of a tag share its dataset, so both kinds' counts apply.
        recorded = point.recorded or {}
        count = sum(recorded.get(kind, {}).get(name, 0) for kind in ("scalar", "array"))
        kept = steps < point.step
        kept[np.flatnonzero(steps == point.step)[:count]] = True
        return kept

    def _append(self, tag: str, value: Any, step: int) -> None:
        values, steps = self._buffers.setdefault(tag, ([], []))
        values.append(value)
        steps.append(step)
        if len(steps) >= _BLOCK:
            self._write(tag)

    def _write_buffers(self) -> None:
        for tag in list(self._buffers):
            self._write(tag)

    def _write(self, tag: str) -> None:
        values, steps = self._buffers.pop(tag)
        if not steps:
            return
        first = np.asarray(values[0])
        try:
            data = np.asarray(values, dtype=np.float64 if first.ndim == 0 else first.dtype)
        except OverflowError:  # an int beyond float64: +-inf, as TensorBoard stores it
            data = np.asarray([_as_float(value) for value in values], dtype=np.float64)
        for name, block in ((tag, data), (tag + _STEPS, np.asarray(steps, dtype=np.int64))):
            if name not in self._file:
                self._create(name, block)
            dataset = self._file[name]
            start = dataset.shape[0]
            dataset.resize(start + len(block), axis=0)
            dataset[start:] = block

    def _store(self, name: str, data: np.ndarray) -> None:
        if name not in self._file:
            self._create(name, data)
        dataset = self._file[name]
        dataset.resize(len(data), axis=0)
        dataset[...] = data

    def _create(self, name: str, block: np.ndarray) -> None:
        self._file.create_dataset(
            name, shape=(0,) + block.shape[1:], maxshape=(None,) + block.shape[1:],
            dtype=block.dtype, chunks=(_chunk_rows(block),) + block.shape[1:],
        )  # fmt: skip


def _as_float(number: Any) -> float:
    try:
        return float(number)
    except OverflowError:
        return math.inf if number > 0 else -math.inf


def _unreadable(path: Path) -> bool:
    """Whether ``path`` exists and its content is not an HDF5 file any reader opens.

    Opened read-only and without HDF5's file lock, so a file another process holds open
    (locked) or one this process may not read is not taken for a broken one.
    """
    import h5py

    if not path.is_file() or not os.access(path, os.R_OK | os.W_OK):
        return False
    try:
        try:
            h5py.File(path, "r", locking=False).close()
        except (TypeError, ValueError):  # an h5py or HDF5 too old to open without the lock
            h5py.File(path, "r").close()
    except OSError:
        return True
    return False


def _free_name(path: Path, suffix: str) -> Path:
    """``path`` with ``suffix`` added, and a number after it if that name is taken."""
    candidate, number = path.with_name(path.name + suffix), 1
    while candidate.exists():
        candidate, number = path.with_name(f"{path.name}{suffix}.{number}"), number + 1
    return candidate


def _chunk_rows(block: np.ndarray) -> int:
    # About 256 KiB per chunk, and at least one row.
    row_bytes = max(1, block[0].nbytes) if len(block) else 8
    return max(1, min(_BLOCK, (256 * 1024) // row_bytes))
