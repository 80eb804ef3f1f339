"""The backends a ``Recorder(...)`` call chooses, after checking its arguments."""
from typing import List, Sequence

from ..errors import RecorderError
from ._backend import RecorderBackend
from ._console import ConsoleBackend
from ._files import FileBackend
from ._hdf5 import HDF5Backend
from ._tensorboard import TensorBoardBackend


def chosen_backends(
    tensorboard: bool,
    file: bool,
    console: bool,
    hdf5: bool,
    backends: Sequence[RecorderBackend],
    max_pending: int,
) -> List[RecorderBackend]:
    """The built-in backends turned on, then ``backends``; raises on a wrong argument."""
    bad = [repr(b) for b in backends if not isinstance(b, RecorderBackend)]
    if bad:
        raise RecorderError(
            f"Recorder(backends=...) got {', '.join(bad)}; every backend must be an "
            "instance of a RecorderBackend subclass."
        )
    if not isinstance(max_pending, int) or max_pending < 2:
        raise RecorderError(f"Recorder got max_pending={max_pending!r}; give an int >= 2.")
    return [
        cls() for on, cls in ((tensorboard, TensorBoardBackend), (file, FileBackend),
                              (console, ConsoleBackend), (hdf5, HDF5Backend)) if on
    ] + list(backends)
