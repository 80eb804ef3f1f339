"""HDF5 recordings: one growing dataset per tag, with its steps beside it."""
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .._hdf5_walk import dataset_names
from ._backend import RecorderBackend

__all__ = ["HDF5Backend"]

# Values are kept in memory and appended in blocks: resizing a dataset per value is slow.
_BLOCK = 1024


class HDF5Backend(RecorderBackend):
    """Writes scalars and arrays to ``recordings.h5`` in the output directory.

    Each tag is a dataset at the tag's path (``train/loss`` is dataset ``loss`` in group
    ``train``) that grows along its first axis: shape ``(n,)`` of float64 for scalars and
    ``(n, *shape)`` for arrays, in the dtype of the tag's first array. Beside it, the
    dataset ``<tag>.steps`` (int64, shape ``(n,)``) holds the step of each entry. An
    existing file is appended to.

    Example:
        >>> with h5py.File(run_dir / "recordings.h5", "r") as f:
        ...     losses, steps = f["train/loss"][:], f["train/loss.steps"][:]
    """

    name = "hdf5"

    def __init__(self, filename: str = "recordings.h5") -> None:
        self._filename = filename
        self._file: Any = None
        self._buffers: Dict[str, Tuple[List[Any], List[int]]] = {}

    def open(self, output_dir: Optional[Path]) -> None:
        import h5py

        self._file = h5py.File(Path(output_dir) / self._filename, "a")

    def scalar(self, tag: str, value: float, step: int) -> None:
        self._append(tag, value, step)

    def array(self, tag: str, array: np.ndarray, step: int) -> None:
        self._append(tag, array, step)

    def resume(self, step: int) -> None:
        self._write_buffers()
        for name in dataset_names(self._file):
            steps_name = name + ".steps"
            if name.endswith(".steps") or steps_name not in self._file:
                continue
            steps = self._file[steps_name][:]
            keep = steps < step
            if keep.all():
                continue
            values = self._file[name][:][keep]
            pairs = ((self._file[name], values), (self._file[steps_name], steps[keep]))
            for dataset, data in pairs:
                dataset.resize(len(data), axis=0)
                dataset[...] = data

    def flush(self) -> None:
        self._write_buffers()
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self.flush()
            self._file.close()
            self._file = None

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
        data = np.asarray(values, dtype=np.float64 if first.ndim == 0 else first.dtype)
        for name, block in ((tag, data), (tag + ".steps", np.asarray(steps, dtype=np.int64))):
            if name not in self._file:
                self._file.create_dataset(
                    name, shape=(0,) + block.shape[1:], maxshape=(None,) + block.shape[1:],
                    dtype=block.dtype, chunks=(_chunk_rows(block),) + block.shape[1:],
                )
            dataset = self._file[name]
            start = dataset.shape[0]
            dataset.resize(start + len(block), axis=0)
            dataset[start:] = block


def _chunk_rows(block: np.ndarray) -> int:
    # About 256 KiB per chunk, and at least one row.
    row_bytes = max(1, block[0].nbytes)
    return max(1, min(_BLOCK, (256 * 1024) // row_bytes))

