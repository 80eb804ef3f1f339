"""Reading samples from HDF5 files (h5py, imported only when used); the writer is beside it.

:class:`HDF5Dataset` opens its file lazily, once per process, so DataLoader workers each get
their own handle: an HDF5 handle shared across a ``fork`` is a known source of corrupt
reads. :class:`HDF5Writer` (in ``_hdf5_writer``) appends rows to chunked, resizable
datasets; in a process group every rank writes its own file.
"""
import os
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from .._hdf5_walk import dataset_names
from ..errors import DataError
from ._hdf5_writer import HDF5Writer, PathLike, _listing

__all__ = ["HDF5Dataset", "HDF5Writer"]



class HDF5Dataset(Dataset):
    """A map-style dataset over equally long datasets of an HDF5 file, read lazily.

    Sample ``i`` is row ``i`` of every key, as tensors (numbers become 0-dimensional
    tensors, strings stay strings). The file is checked when the dataset is created, then
    closed; it is opened again on first use in each process, so the dataset works with
    ``num_workers > 0`` under both ``fork`` and ``spawn``. Batched reads
    (``__getitems__``, used by DataLoader) fetch a whole batch with one read per key.

    Args:
        path: The HDF5 file.
        keys: One dataset name (samples are single tensors), a sequence of names (samples
            are tuples in that order) or ``None`` for every dataset in the file's root
            group (samples are dicts by name). Names may contain ``/`` for nested groups.

    Raises:
        DataError: the file does not exist or is not HDF5, a key is missing or is not a
            dataset, or the keys' first dimensions differ.

    Example:
        >>> dataset = HDF5Dataset("train.h5", keys=["images", "labels"])  # doctest: +SKIP
        >>> loader = SmartDataLoader(dataset, batch_size=64, num_workers=4)  # doctest: +SKIP
    """

    def __init__(self, path: PathLike, keys: Union[str, Sequence[str], None] = None) -> None:
        import h5py

        self.path = os.fspath(path)
        self._form = "single" if isinstance(keys, str) else "dict" if keys is None else "tuple"
        if not os.path.isfile(self.path):
            raise DataError(f"HDF5Dataset: no file at {self.path!r}; check the path.")
        try:
            handle = h5py.File(self.path, "r")
        except OSError as error:
            raise DataError(f"HDF5Dataset: cannot open {self.path!r} as HDF5 ({error}).") from None
        with handle:
            self.keys = _check_keys(handle, keys, self.path)
            self._length = handle[self.keys[0]].shape[0]
        self._pid: Optional[int] = None
        self._file = None
        self._columns: List[Any] = []

    def __len__(self) -> int:
        return self._length

    def _open(self) -> List[Any]:
        pid = os.getpid()
        if self._file is None or self._pid != pid:
            import h5py

            # A handle inherited through fork is dropped, never used: reads through it from
            # several processes corrupt each other.
            self._file = h5py.File(self.path, "r")
            self._pid = pid
            self._columns = [self._file[key] for key in self.keys]
        return self._columns

    def _index(self, index: int) -> int:
        position = int(index)
        if position < 0:
            position += self._length
        if not 0 <= position < self._length:
            raise IndexError(f"HDF5Dataset index {index} is out of range for length {self._length}")
        return position

    def _sample(self, values: Sequence[Any]) -> Any:
        if self._form == "single":
            return values[0]
        if self._form == "tuple":
            return tuple(values)
        return dict(zip(self.keys, values))

    def __getitem__(self, index: int) -> Any:
        position = self._index(index)
        return self._sample([_to_torch(column[position]) for column in self._open()])

    def __getitems__(self, indices: Sequence[int]) -> List[Any]:
        """Read a batch with one read per key; returns the samples in the order asked."""
        if len(indices) == 0:
            return []
        positions = np.asarray([self._index(i) for i in indices], dtype=np.int64)
        # h5py reads fancy selections only in increasing order without repeats.
        unique, inverse = np.unique(positions, return_inverse=True)
        contiguous = unique[-1] - unique[0] + 1 == len(unique)
        selection = slice(int(unique[0]), int(unique[-1]) + 1) if contiguous else unique
        rows = [column[selection][inverse] for column in self._open()]
        columns = [_rows_to_torch(block) for block in rows]
        return [self._sample([column[j] for column in columns]) for j in range(len(positions))]

    def close(self) -> None:
        """Close this process's handle; the next read opens the file again."""
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file, self._pid, self._columns = None, None, []

    def __getstate__(self) -> Dict[str, Any]:
        state = dict(self.__dict__)
        state.update(_file=None, _pid=None, _columns=[])
        return state


def _check_keys(handle: Any, keys: Union[str, Sequence[str], None], path: str) -> List[str]:
    import h5py

    if keys is None:
        names = sorted(name for name, item in handle.items() if isinstance(item, h5py.Dataset))
        if not names:
            raise DataError(f"HDF5Dataset: {path!r} has no datasets in its root group.")
    else:
        names = [keys] if isinstance(keys, str) else [str(key) for key in keys]
        if not names:
            raise DataError("HDF5Dataset: keys is empty; name at least one dataset or give None.")
    available = dataset_names(handle)
    missing = [name for name in names if name not in handle]
    not_data = [name for name in names if name in handle and name not in available]
    problems = []
    if missing:
        problems.append(f"missing keys {missing}")
    if not_data:
        problems.append(f"{not_data} are groups, not datasets")
    scalars = [n for n in names if n in available and handle[n].shape in ((), None)]
    if scalars:
        problems.append(f"{scalars} are scalars, with no rows")
    if problems:
        raise DataError(
            f"HDF5Dataset: {path!r} has {'; '.join(problems)}; its datasets are {available}."
        )
    lengths = {name: handle[name].shape[0] for name in names}
    if len(set(lengths.values())) > 1:
        raise DataError(
            f"HDF5Dataset: the keys of {path!r} have different lengths ({_listing(lengths)}); "
            "give keys whose first dimensions agree."
        )
    return names


def _to_torch(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray) and value.dtype.kind in "OSU":
        return value.tolist()
    if isinstance(value, (np.ndarray, np.generic)):
        return torch.from_numpy(np.array(value))
    return value


def _rows_to_torch(block: np.ndarray) -> Any:
    if block.dtype.kind in "OSU":
        return [_to_torch(row) for row in block]
    return torch.from_numpy(np.ascontiguousarray(block))
