"""HDF5 files that a kill at any moment leaves readable, as they were at their last flush.

HDF5 keeps a file's structure (object headers, chunk indexes, heaps) in a metadata cache and
writes pieces of it to the file whenever the cache evicts them. A process killed between
two such writes leaves a structure that is half old and half new; with compressed datasets
that makes reads fail ("filter returned failure during read") in most kills, and
uncompressed files can end with "bad object header version number". Files opened here:

* write no metadata between flushes: the metadata cache's evictions are switched off, so the
  structure on disk stays the one the last flush wrote;
* never reuse space freed during a session (file space strategy ``"none"``, set when the
  file is created), so data written after the last flush cannot overwrite anything the
  structure on disk still points to;
* are created under another name, flushed, and only then renamed into place, so a new
  file exists only once it is whole (an existing one opened with ``"w"`` is truncated in
  place and flushed at once);
* are flushed and synced by their owners at checkpoints, every few seconds and at close;
* are not held by forked children (DataLoader workers, see ``_forked``), so HDF5's file
  lock does not outlive a killed run in a worker that lingers for a few seconds (a requeue
  would find the file locked), and nothing the child's copy of HDF5 might write reaches it.

A kill therefore leaves the file readable with at least everything written before its last
flush (tests/data/test_hdf5.py and tests/recording/test_durability.py kill writers at
random moments). HDF5's own alternative, SWMR, cannot create datasets once started and
leaves files that plain readers refuse to open after a crash.

Files created here need HDF5 1.10 (2017) or newer to read, for the file space strategy.
"""
import contextlib
import os
import threading
import time
import weakref
from typing import Any

from . import _forked

_flush_lock = threading.Lock()
_flushed_periodically: "weakref.WeakSet[Any]" = weakref.WeakSet()
_flusher: Any = None
_POLL_SECONDS = 0.5


def open_file(path: str, mode: str) -> Any:
    """Open ``path`` with h5py (``mode`` ``"w"``, ``"a"`` or ``"r+"``) for crash-safe writing."""
    import h5py

    path = os.fspath(path)
    exists = os.path.exists(path)
    if mode == "w" and exists:
        # Truncated in place, as h5py does (which refuses a file this process holds open);
        # a replacement file would leave open handles on the old one, writing into nothing.
        handle = _without_evictions(h5py.File(path, "w", fs_strategy="none"))
        flush(handle)
        return handle
    if exists:
        return _without_evictions(h5py.File(path, mode))
    # Until its first flush a new file is a superblock pointing at nothing, which no reader
    # opens: it is created under another name and renamed once flushed, so the file at
    # ``path`` is whole from the moment it exists. (HDF5 does not reopen files by name.)
    creating_path = path + ".creating"
    handle = _without_evictions(h5py.File(creating_path, "w", fs_strategy="none"))
    try:
        flush(handle)
        os.replace(creating_path, path)
    except BaseException:
        with contextlib.suppress(Exception):  # the flush's error is the one to report
            handle.close()
        with contextlib.suppress(OSError):
            os.unlink(creating_path)
        raise
    return handle


def _without_evictions(handle: Any) -> Any:
    _remember_descriptor(handle)
    config = handle.id.get_mdc_config()
    config.evictions_enabled = False
    # HDF5 accepts disabled evictions only with the automatic cache resizing off.
    config.incr_mode = config.decr_mode = config.flash_incr_mode = 0
    handle.id.set_mdc_config(config)
    return handle


def _remember_descriptor(handle: Any) -> None:
    try:
        _forked.let_go_in_children(int(handle.id.get_vfd_handle()))
    except (OSError, TypeError, ValueError, RuntimeError):
        pass  # a driver without a plain descriptor: nothing for a child to inherit


def flush(handle: Any) -> None:
    """Write everything ``handle`` holds to the file and sync it to disk."""
    handle.flush()
    os.fsync(handle.id.get_vfd_handle())


def flush_periodically(owner: Any) -> None:
    """Call ``owner.flush_if_due()`` about twice a second from a daemon thread.

    The owner is held weakly; the thread starts on first use and serves every owner.
    """
    global _flusher
    with _flush_lock:
        _flushed_periodically.add(owner)
        if _flusher is None or not _flusher.is_alive():
            _flusher = threading.Thread(
                target=_flush_due, name="pystematic-torch-hdf5-flush", daemon=True
            )
            _flusher.start()


def _flush_due() -> None:
    while True:
        time.sleep(_POLL_SECONDS)  # a polling period, not a synchronisation
        for owner in list(_flushed_periodically):
            try:
                owner.flush_if_due()
            except Exception:  # noqa: BLE001 - the owner reports its failure at its next call
                pass
