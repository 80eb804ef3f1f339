"""Rank helpers and collectives that behave the same with or without a process group.

Without a process group every helper answers as the only process of a world of one, so code
written for distributed training runs unchanged in a single process.
"""
import numbers
import os
from typing import Any, List, Optional, TypeVar, Union

import torch
import torch.distributed as dist

from ..errors import DistributedError

__all__ = [
    "is_distributed",
    "is_master",
    "get_rank",
    "get_local_rank",
    "get_num_processes",
    "distributed_barrier",
    "broadcast_from_master",
    "all_reduce",
    "gather_to_master",
]

_T = TypeVar("_T")
Number = Union[int, float]
_REDUCE_OPS = ("mean", "sum", "max", "min")


def is_distributed() -> bool:
    """Whether this process is part of an initialized ``torch.distributed`` process group."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """The global rank of this process, 0 when not distributed."""
    return dist.get_rank() if is_distributed() else 0


def get_local_rank() -> int:
    """The rank of this process among the processes on its machine.

    Read from ``LOCAL_RANK``, which both our launcher and ``torchrun`` set; 0 when unset.
    """
    return int(os.environ.get("LOCAL_RANK", "0"))


def get_num_processes() -> int:
    """The number of processes in the job (the world size), 1 when not distributed."""
    return dist.get_world_size() if is_distributed() else 1


def is_master() -> bool:
    """Whether this process is global rank 0, the one that writes files and shows progress."""
    return get_rank() == 0


def distributed_barrier() -> None:
    """Wait until every rank reaches this call; returns at once when not distributed."""
    if is_distributed():
        dist.barrier()


def _collective_device() -> torch.device:
    # NCCL only moves CUDA tensors; gloo moves CPU ones.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def broadcast_from_master(obj: _T) -> _T:
    """Return rank 0's ``obj`` on every rank.

    Args:
        obj: A tensor or any picklable object. Tensors keep their device, dtype and shape
            as they are on this rank; every rank must pass a tensor of the same shape.

    Returns:
        Rank 0's value; ``obj`` itself when not distributed.
    """
    if not is_distributed():
        return obj
    if isinstance(obj, torch.Tensor):
        buffer = obj.detach().clone().to(_collective_device())
        dist.broadcast(buffer, src=0)
        return buffer.to(obj.device)
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def all_reduce(
    value: Union[Number, torch.Tensor],
    op: str = "mean",
    weight: Optional[Number] = None,
) -> Union[Number, torch.Tensor]:
    """Combine ``value`` across all ranks and return the result on every rank.

    The caller's tensor is never modified. A mean is computed in floating point, so integer
    inputs give a float (or a floating tensor).

    Args:
        value: A Python number or a tensor with the same shape on every rank.
        op: ``"mean"``, ``"sum"``, ``"max"`` or ``"min"``.
        weight: Only with ``op="mean"``: this rank's weight, for example the number of samples
            it processed, so that ranks that saw unequal amounts of data give the exact
            weighted mean ``sum(value * weight) / sum(weight)``.

    Returns:
        A Python number for a number, a tensor on the input's device for a tensor.

    Raises:
        ValueError: ``op`` is not one of the four names, or ``weight`` is given with another op.
        TypeError: ``value`` is neither a number nor a tensor.
        DistributedError: every rank's weight is zero, so the weighted mean is undefined.
    """
    if op not in _REDUCE_OPS:
        raise ValueError(f"all_reduce got op={op!r}; allowed ops are {', '.join(_REDUCE_OPS)}.")
    if weight is not None and op != "mean":
        raise ValueError(f"all_reduce accepts a weight only with op='mean', not op={op!r}.")

    is_tensor = isinstance(value, torch.Tensor)
    if not is_tensor and not isinstance(value, numbers.Number):
        raise TypeError(
            f"all_reduce needs a Python number or a tensor, got {type(value).__name__}; "
            "use gather_to_master for other objects."
        )
    tensor = value.detach() if is_tensor else torch.tensor(value)
    needs_float = op == "mean" and not (tensor.is_floating_point() or tensor.is_complex())
    work_dtype = torch.float64 if needs_float else tensor.dtype

    if not is_distributed():
        result = tensor.to(work_dtype)
    else:
        result = _reduce_across_ranks(tensor.to(work_dtype), op, weight)

    if is_tensor:
        return result.to(value.device)
    return result.item()


def _reduce_across_ranks(tensor: torch.Tensor, op: str, weight: Optional[Number]) -> torch.Tensor:
    device = _collective_device()
    buffer = tensor.clone().to(device)
    if op in ("max", "min"):
        dist.all_reduce(buffer, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.MIN)
        return buffer
    if op == "sum":
        dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
        return buffer
    if weight is None:
        dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
        return buffer / get_num_processes()
    # The weights travel in the same collective as the values, so one call does both.
    packed = torch.cat([(buffer * weight).reshape(-1), buffer.new_tensor([float(weight)])])
    dist.all_reduce(packed, op=dist.ReduceOp.SUM)
    total_weight = packed[-1]
    if total_weight.item() == 0:
        raise DistributedError("all_reduce(op='mean', weight=...) got a zero weight on every rank.")
    return (packed[:-1] / total_weight).reshape(buffer.shape)


def gather_to_master(obj: _T) -> Optional[List[_T]]:
    """Collect one picklable object from every rank onto rank 0.

    Returns:
        On rank 0 a list with every rank's object, in rank order; ``None`` on the other
        ranks. ``[obj]`` when not distributed.
    """
    if not is_distributed():
        return [obj]
    gathered: Optional[List[Any]] = [None] * get_num_processes() if is_master() else None
    dist.gather_object(obj, gathered, dst=0)
    return gathered
