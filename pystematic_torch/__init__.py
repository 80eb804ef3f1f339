"""pystematic-torch: PyTorch experiments that run unchanged on a CPU, GPUs or a cluster.

Installing the package registers a pystematic plugin, so after ``import pystematic`` the
public API below is also reachable as ``pystematic.torch``.
"""
# pystematic is imported first so that its plugin loading (which imports
# pystematic_torch.plugin) happens before this package's own modules are half initialised.
import pystematic as _pystematic  # noqa: F401

from ._version import __version__
from .checkpoint import find_checkpoint, load_checkpoint, save_checkpoint
from .context import Context
from .devices import move_to_device
from .distributed import (
    all_reduce,
    broadcast_from_master,
    distributed_barrier,
    gather_to_master,
    get_local_rank,
    get_num_processes,
    get_rank,
    is_distributed,
    is_master,
)
from .errors import (
    CheckpointError,
    DataError,
    DeviceError,
    DistributedError,
    Error,
    ParameterError,
    RecorderError,
    StateDictError,
)

__all__ = [
    "__version__",
    "Context",
    "move_to_device",
    "save_checkpoint",
    "load_checkpoint",
    "find_checkpoint",
    "is_distributed",
    "is_master",
    "get_rank",
    "get_local_rank",
    "get_num_processes",
    "distributed_barrier",
    "broadcast_from_master",
    "all_reduce",
    "gather_to_master",
    "Error",
    "ParameterError",
    "DeviceError",
    "DistributedError",
    "StateDictError",
    "CheckpointError",
    "DataError",
    "RecorderError",
]
