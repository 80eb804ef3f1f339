"""The exceptions pystematic-torch raises.

Errors about settings, devices, process groups, state, checkpoints, data and recording derive
from :class:`Error`, so a user can tell ours apart from torch's with one
``except pystematic_torch.Error``. Calling a function with an argument of the wrong kind
raises the usual ``TypeError`` or ``ValueError`` (``ParameterError`` is both an ``Error`` and a
``ValueError``).
"""

__all__ = [
    "Error",
    "ParameterError",
    "DeviceError",
    "PrecisionError",
    "DistributedError",
    "LaunchError",
    "StateDictError",
    "CheckpointError",
    "DataError",
    "RecorderError",
]


class Error(Exception):
    """Base class of every error raised by pystematic-torch."""


class ParameterError(Error, ValueError):
    """An experiment parameter has a value outside its allowed range."""


class DeviceError(Error, RuntimeError):
    """A device was asked for that this machine or process cannot use."""


class PrecisionError(DeviceError):
    """A precision the context's device cannot run (``16-mixed`` on a CPU, ``bf16-mixed`` on a
    GPU without bfloat16), or the training-step helpers used in a way that would train wrongly
    (a loss scaled at ``16-mixed`` but differentiated with ``loss.backward()``).
    """


class DistributedError(Error, RuntimeError):
    """Distributed training was set up wrongly or a rank failed."""


class LaunchError(DistributedError):
    """A distributed run cannot start as configured (a taken port, too few GPUs, an
    inconsistent torchrun or SLURM environment, a rank that died before the job formed).

    On the command line it is reported in one line, without a traceback (``--debug`` shows
    one).
    """


class StateDictError(Error, RuntimeError):
    """A state dict does not fit the objects it is loaded into."""


class CheckpointError(Error, RuntimeError):
    """A checkpoint could not be found, read or written."""


class DataError(Error, ValueError):
    """A dataset or data loader was given arguments it cannot work with."""


class RecorderError(Error, RuntimeError):
    """A value could not be recorded, or a recorder was used after it was closed."""
