"""pystematic-torch: PyTorch experiments that run unchanged on a CPU, GPUs or a cluster.

Installing the package registers a pystematic plugin, so after ``import pystematic`` the
public API below is also reachable as ``pystematic.torch``.

Public names are imported on first use (PEP 562): ``import pystematic`` loads this package
to register the plugin, and must not pay for importing torch until the experiment uses it.
"""
import importlib
from typing import Any, Dict, List

from ._version import __version__

# public name -> the module that defines it
_EXPORTS: Dict[str, str] = {
    "Context": "context",
    "stop_requested": "distributed._preemption",
    "move_to_device": "devices",
    "save_checkpoint": "checkpoint",
    "load_checkpoint": "checkpoint",
    "find_checkpoint": "checkpoint",
    "wait_for_checkpoints": "checkpoint",
    "find_latest_run": "checkpoint",
    "list_checkpoints": "checkpoint",
    "checkpoint_info": "checkpoint",
    "CheckpointInfo": "checkpoint",
    "is_distributed": "distributed",
    "is_master": "distributed",
    "get_rank": "distributed",
    "get_local_rank": "distributed",
    "get_num_processes": "distributed",
    "distributed_barrier": "distributed",
    "broadcast_from_master": "distributed",
    "all_reduce": "distributed",
    "gather_to_master": "distributed",
    "Error": "errors",
    "ParameterError": "errors",
    "DeviceError": "errors",
    "PrecisionError": "errors",
    "DistributedError": "errors",
    "LaunchError": "errors",
    "StateDictError": "errors",
    "CheckpointError": "errors",
    "DataError": "errors",
    "RecorderError": "errors",
    "Recorder": "recording",
    "RecorderBackend": "recording",
    "RecordedImage": "recording",
    "TensorBoardBackend": "recording",
    "FileBackend": "recording",
    "ConsoleBackend": "recording",
    "HDF5Backend": "recording",
    "SmartDataLoader": "data",
    "HDF5Dataset": "data",
    "HDF5Writer": "data",
    "run_parameter_sweep": "sweep",
    "SweepResult": "sweep",
    "SweepError": "sweep",
}

__all__: List[str] = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'pystematic_torch' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module_name}"), name)
    globals()[name] = value
    return value


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(__all__))

