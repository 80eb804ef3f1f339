"""Files a forked child (a DataLoader worker) must not keep open.

A forked child shares its parent's open files, and a lock held through one (the run
directory's lock, HDF5's own file lock) lasts until the last process holding it ends: a
worker that outlives a killed run by a few seconds kept the run, or its HDF5 files, locked
against the requeue. A child therefore replaces each such descriptor with /dev/null at
once: its share of the file is gone, and whatever the child's copy of a library might
still write there goes nowhere.
"""
import os
from typing import Dict, Tuple

# Each descriptor with the identity (device, inode) of its file: a number the process has
# reused since for another file is left alone.
_descriptors: Dict[int, Tuple[int, int]] = {}


def let_go_in_children(descriptor: int) -> None:
    """Have every child forked from now on drop its copy of ``descriptor``."""
    stat = os.fstat(descriptor)
    _descriptors[descriptor] = (stat.st_dev, stat.st_ino)


def _let_go() -> None:
    # Plain system calls only: another thread of the parent may have held a library's lock
    # (h5py's) at the fork, so the child must not call into the library.
    if not _descriptors:
        return
    null = os.open(os.devnull, os.O_RDWR)
    try:
        for descriptor, identity in list(_descriptors.items()):
            try:
                stat = os.fstat(descriptor)
            except OSError:
                continue
            if (stat.st_dev, stat.st_ino) == identity:
                os.dup2(null, descriptor)
    finally:
        os.close(null)
    _descriptors.clear()


os.register_at_fork(after_in_child=_let_go)
