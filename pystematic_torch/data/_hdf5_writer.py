"""Writing results to HDF5 files as they are produced, in files a kill cannot break."""
import os
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

import numpy as np

from .. import _hdf5_durable
from .._hdf5_walk import dataset_names
from .._session import call_at_exit, register_durable, unregister_durable
from ..devices import to_numpy
from ..distributed import get_num_processes, get_rank
from ..errors import DataError

__all__ = ["HDF5Writer"]

PathLike = Union[str, "os.PathLike[str]"]
_COMPRESSIONS = (None, "gzip", "lzf")
_CHUNK_BYTES = 1 << 18


class HDF5Writer:
    """Append rows of results to an HDF5 file as they are produced.

    Each key becomes a resizable, chunked dataset whose first dimension is the row count.
    Every call to :meth:`append` must give the same keys with the same number of rows, so
    the file always reads back with :class:`HDF5Dataset`.

    In a process group of ``N > 1`` ranks each rank writes its own file,
    ``<stem>.rank<r><suffix>`` (``results.h5`` becomes ``results.rank0.h5``,
    ``results.rank1.h5``, ...): no locking, no collective per write, and a crash of one rank
    cannot corrupt another's file. :attr:`path` is the file this process writes.

    The file survives a kill at any moment: it is written so that what is on disk is always
    the state of its last flush, and it is flushed (and synced to disk) every
    ``flush_secs`` seconds while rows arrive, before every checkpoint
    (``save_checkpoint`` flushes every open writer first) and at :meth:`close`. After a
    kill it opens with any HDF5 reader and holds at least every row appended before the
    last of these flushes, with all keys equally long. See :doc:`data`.

    Args:
        path: The file to write.
        mode: ``"w"`` creates or truncates the file; ``"a"`` appends to the datasets already
            in it (to continue after resuming from a checkpoint).
        compression: ``None``, ``"gzip"`` or ``"lzf"``.
        compression_opts: The gzip level, 0-9.
        chunk_rows: Rows per chunk; default: as many as fit in about 256 KiB.
        flush_secs: At most this many seconds pass between an append and the flush that
            puts it on disk.

    Raises:
        DataError: an unknown ``mode`` or ``compression``, (in ``"a"`` mode) a file whose
            datasets have different lengths, or a file that cannot be opened (for ``"w"``:
            one this process still holds open).

    Example:
        >>> with HDF5Writer("predictions.h5", compression="gzip") as writer:  # doctest: +SKIP
        ...     for x, y in loader:
        ...         writer.append(logits=model(x), label=y)
    """

    def __init__(
        self,
        path: PathLike,
        mode: str = "w",
        compression: Optional[str] = None,
        compression_opts: Optional[int] = None,
        chunk_rows: Optional[int] = None,
        flush_secs: float = 5.0,
    ) -> None:
        problems = []
        if mode not in ("w", "a"):
            problems.append(f"mode={mode!r} is not allowed; use 'w' or 'a'")
        if compression not in _COMPRESSIONS:
            problems.append(f"compression={compression!r} is not allowed; use None, gzip or lzf")
        if chunk_rows is not None and (not isinstance(chunk_rows, int) or chunk_rows < 1):
            problems.append(f"chunk_rows={chunk_rows!r} is not a positive int")
        if isinstance(flush_secs, bool) or not isinstance(flush_secs, (int, float)) or (
            not flush_secs > 0
        ):
            problems.append(f"flush_secs={flush_secs!r} is not a positive number of seconds")
        if problems:
            raise DataError("HDF5Writer: " + "; ".join(problems) + ".")
        self.path = _rank_path(os.fspath(path))
        self.compression = compression
        self.compression_opts = compression_opts
        self.chunk_rows = chunk_rows
        self.flush_secs = float(flush_secs)
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        # Appends (training thread) and periodic flushes (flusher thread) take turns, so a
        # flush never writes a state in which some keys have more rows than others.
        self._lock = threading.Lock()
        try:
            self._file = _hdf5_durable.open_file(self.path, mode)
        except OSError as error:
            raise DataError(
                f"HDF5Writer could not open {self.path} with mode={mode!r} ({error}). If "
                "another HDF5Writer or HDF5Dataset holds it open, close that one first; "
                "mode='a' appends to an existing file."
            ) from error
        self._file.attrs["rank"] = get_rank()
        self._file.attrs["num_processes"] = get_num_processes()
        self._keys: Optional[List[str]] = None
        self._failure: Optional[BaseException] = None
        self._dirty = True
        self._flushed_at = time.monotonic()
        self.rows = 0
        if mode == "a":
            self._adopt_existing()
        self._flush_locked()
        call_at_exit(self.close)
        register_durable(self)
        _hdf5_durable.flush_periodically(self)

    def _adopt_existing(self) -> None:
        names = dataset_names(self._file)
        if not names:
            return
        lengths = {name: self._file[name].shape[0] for name in names}
        if len(set(lengths.values())) > 1:
            self._file.close()
            raise DataError(
                f"HDF5Writer(mode='a'): the datasets in {self.path!r} have different lengths "
                f"({_listing(lengths)}); append to a file written by HDF5Writer, or use mode='w'."
            )
        self._keys = sorted(names)
        self.rows = next(iter(lengths.values()))

    def append(self, rows: Optional[Mapping[str, Any]] = None, **columns: Any) -> None:
        """Append rows: one array-like per key, all with the same first dimension.

        Values may be tensors (any device; detached and copied to the host), numpy arrays,
        numbers or lists. A number or 0-dimensional value is one row; to append a single
        vector row, give it a leading dimension of 1. bfloat16 is stored as float32.

        Args:
            rows: A mapping from key to values; may be combined with keyword arguments.
            **columns: Keys and values as keyword arguments.

        Raises:
            DataError: no values, keys that differ from the first append, unequal row
                counts, a row shape that differs from the rows already written, or a
                periodic flush that failed since the last call.
        """
        self._raise_failure()
        if self._file is None:
            raise DataError(f"HDF5Writer for {self.path!r} is closed; create a new writer.")
        data = dict(rows or {})
        data.update(columns)
        if not data:
            raise DataError("HDF5Writer.append needs at least one key with values.")
        arrays = {str(key): _to_numpy(value) for key, value in data.items()}
        counts = {key: array.shape[0] for key, array in arrays.items()}
        problems = []
        if len(set(counts.values())) > 1:
            problems.append(f"the row counts differ ({_listing(counts)})")
        if self._keys is not None and sorted(arrays) != self._keys:
            problems.append(f"the keys are {sorted(arrays)}, earlier rows have {self._keys}")
        for key, array in arrays.items():
            if key in self._file and self._file[key].shape[1:] != array.shape[1:]:
                problems.append(
                    f"{key!r} rows have shape {list(array.shape[1:])}, the file has "
                    f"{list(self._file[key].shape[1:])}"
                )
        if problems:
            raise DataError(f"HDF5Writer.append: {'; '.join(problems)}.")
        count = next(iter(counts.values()))
        with self._lock:
            if self._keys is None:
                # New datasets change the file's structure the most; put them on disk
                # before any row goes in.
                for key, array in arrays.items():
                    self._column(key, array)
                self._flush_locked()
            self._keys = sorted(arrays)
            self._dirty = True
            try:
                for key, array in arrays.items():
                    column = self._file[key]
                    column.resize(self.rows + count, axis=0)
                    column[self.rows : self.rows + count] = array
            except Exception as error:
                for key in arrays:  # every key keeps the same number of rows
                    self._file[key].resize(self.rows, axis=0)
                raise DataError(
                    f"HDF5Writer.append could not write the rows to {self.path!r}: "
                    f"{type(error).__name__}: {error}; no row of this call was kept."
                ) from error
            self.rows += count

    def _column(self, key: str, array: np.ndarray):
        if key in self._file:
            return self._file[key]
        import h5py

        row_shape = array.shape[1:]
        row_bytes = max(1, int(np.prod(row_shape, dtype=np.int64)) * array.dtype.itemsize)
        chunk = self.chunk_rows or max(1, min(65536, _CHUNK_BYTES // row_bytes))
        dtype = h5py.string_dtype() if array.dtype.kind in "OU" else array.dtype
        return self._file.create_dataset(
            key,
            shape=(0, *row_shape),
            maxshape=(None, *row_shape),
            dtype=dtype,
            chunks=(chunk, *row_shape),
            compression=self.compression,
            compression_opts=self.compression_opts,
        )

    def flush(self) -> None:
        """Put every appended row on disk (flushed and synced), so it survives a kill.

        Raises:
            DataError: the flush, or a periodic flush since the last call, failed.
        """
        with self._lock:
            if self._file is not None:
                try:
                    self._flush_locked()
                except Exception as error:
                    self._failure = error
        self._raise_failure()

    def flush_if_due(self) -> None:
        """Flush if rows arrived and ``flush_secs`` passed; called by a background thread."""
        if self._file is None or not self._dirty:
            return
        if time.monotonic() - self._flushed_at < self.flush_secs:
            return
        if not self._lock.acquire(blocking=False):
            return  # an append is running; the next poll flushes
        try:
            if self._file is not None and self._dirty:
                self._flush_locked()
        except Exception as error:  # raised at the training thread's next call
            self._failure = error
        finally:
            self._lock.release()

    def close(self) -> None:
        """Flush and close the file; called at experiment end if not called before.

        Raises:
            DataError: the last flush, or a periodic flush since the last call, failed.
        """
        with self._lock:
            if self._file is not None:
                unregister_durable(self)
                try:
                    self._flush_locked()
                    self._file.close()
                except Exception as error:
                    self._failure = error
                self._file = None
        self._raise_failure()

    def state_dict(self) -> Dict[str, Any]:
        """The writer's state for a checkpoint: how many rows it holds, and its file.

        Assign the writer to a Context (``ctx.predictions = HDF5Writer(...)``) and its
        state is saved with every checkpoint. ``save_checkpoint`` flushes the file before
        writing, so the rows counted here are on disk.
        """
        return {"rows": self.rows, "path": os.path.abspath(self.path)}

    #: Loading cuts rows off the file, which no roll-back can undo: a Context loads a writer
    #: after every other item, once nothing else can fail.
    irreversible_load = True

    def check_state_dict(self, state: Mapping[str, Any]) -> None:
        """Raise if ``state`` cannot be loaded into this writer, changing nothing.

        Raises:
            DataError: as :meth:`load_state_dict` would, before it changes the file.
        """
        rows, source = self._resume_point(state)
        copies = (self.rows == 0 and rows > 0 and source is not None
                  and os.path.exists(source) and not _same_file(source, self.path))  # fmt: skip
        if self._file is None:
            raise DataError(f"HDF5Writer for {self.path!r} is closed; create a new writer.")
        if not copies and self.rows < rows:
            raise DataError(
                f"HDF5Writer.load_state_dict(): {self.path!r} holds {self.rows} rows, but the "
                f"checkpoint was taken after {rows}; open the file with mode='a' to resume, or "
                "check that it is the file the checkpointed run wrote."
            )

    @staticmethod
    def _resume_point(state: Any):
        rows = state.get("rows") if isinstance(state, Mapping) else None
        source = state.get("path") if isinstance(state, Mapping) else None
        if isinstance(rows, bool) or not isinstance(rows, int) or rows < 0:
            raise DataError(
                f"HDF5Writer.load_state_dict() got {state!r}; expected a dict like "
                "{'rows': 128, 'path': '/runs/a/predictions.h5'} from HDF5Writer.state_dict()."
            )
        return rows, source if isinstance(source, str) else None

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from a checkpoint: the file then holds exactly its rows, each once.

        Rows appended after the checkpoint (by the run that was interrupted) are removed.
        When this writer's file is empty and the checkpoint's file is another one that
        exists (the run was resumed into a new directory), its first rows are copied in.

        Raises:
            DataError: ``state`` is not from :meth:`state_dict`, or the file holds fewer
                rows than the checkpoint counted (it was truncated: open it with
                ``mode="a"`` to resume).
        """
        rows, source = self._resume_point(state)
        self._raise_failure()
        with self._lock:
            if self._file is None:
                raise DataError(f"HDF5Writer for {self.path!r} is closed; create a new writer.")
            copy = (self.rows == 0 and rows > 0 and source is not None
                    and os.path.exists(source) and not _same_file(source, self.path))  # fmt: skip
            if copy:
                self._copy_rows(source, rows)
            elif self.rows < rows:
                raise DataError(
                    f"HDF5Writer.load_state_dict(): {self.path!r} holds {self.rows} rows, but "
                    f"the checkpoint was taken after {rows}; open the file with mode='a' to "
                    "resume, or check that it is the file the checkpointed run wrote."
                )
            else:
                for key in self._keys or []:
                    self._file[key].resize(rows, axis=0)
            self.rows = rows
            self._dirty = True
            self._flush_locked()

    def _copy_rows(self, source: str, rows: int) -> None:
        import h5py

        with h5py.File(source, "r") as old:
            names = sorted(dataset_names(old))
            short = {name: old[name].shape[0] for name in names if old[name].shape[0] < rows}
            if short:
                raise DataError(
                    f"HDF5Writer.load_state_dict(): {source!r} holds fewer rows than the "
                    f"checkpoint counted ({_listing(short)} < {rows})."
                )
            for name in names:
                self._column(name, old[name][:1])
                self._file[name].resize(rows, axis=0)
                self._file[name][:rows] = old[name][:rows]
        self._keys = names

    def _flush_locked(self) -> None:
        if self._dirty:
            _hdf5_durable.flush(self._file)
            self._dirty = False
        self._flushed_at = time.monotonic()

    def _raise_failure(self) -> None:
        failure, self._failure = self._failure, None
        if failure is not None:
            raise DataError(
                f"HDF5Writer could not write {self.path!r}: {type(failure).__name__}: "
                f"{failure}. Rows appended before the last successful flush are on disk."
            ) from failure

    def __enter__(self) -> "HDF5Writer":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def _same_file(a: str, b: str) -> bool:
    return os.path.exists(b) and os.path.samefile(a, b)


def _rank_path(path: str) -> str:
    if get_num_processes() <= 1:
        return path
    base, suffix = os.path.splitext(path)
    return f"{base}.rank{get_rank()}{suffix}"


def _listing(values: Mapping[str, Any]) -> str:
    return ", ".join(f"{key}: {value}" for key, value in values.items())


def _to_numpy(value: Any) -> np.ndarray:
    array = to_numpy(value)
    return array.reshape(1) if array.ndim == 0 else array
