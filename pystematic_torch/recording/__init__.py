"""Recording what a run measures: the :class:`Recorder` and its backends.

The heavy libraries (tensorboard, matplotlib, h5py, PIL) are imported only when a backend
opens its files or a value needs them, so importing this package stays cheap.
"""
from ._backend import RecordedImage, RecorderBackend, ResumePoint
from ._console import ConsoleBackend
from ._files import FileBackend
from ._hdf5 import HDF5Backend
from ._recorder import Recorder
from ._tensorboard import TensorBoardBackend

__all__ = [
    "Recorder",
    "RecorderBackend",
    "RecordedImage",
    "ResumePoint",
    "TensorBoardBackend",
    "FileBackend",
    "ConsoleBackend",
    "HDF5Backend",
]
