"""Moving nested structures of tensors between devices."""
import dataclasses
from typing import Any, Union

import torch

from .errors import DeviceError

__all__ = ["move_to_device", "resolve_device"]

DeviceLike = Union[str, int, torch.device]


def resolve_device(device: DeviceLike) -> torch.device:
    """Turn ``"cuda:1"``, ``1`` or a ``torch.device`` into a ``torch.device``.

    Raises:
        DeviceError: the value names no device torch knows.
    """
    if isinstance(device, torch.device):
        return device
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise DeviceError(
            f"{device!r} is not a device; give a torch.device, a string such as 'cpu' or "
            f"'cuda:0', or a CUDA index ({error})."
        ) from None


def move_to_device(device: DeviceLike, *objs: Any, non_blocking: bool = False) -> Any:
    """Return ``objs`` with every tensor inside them moved to ``device``.

    Dicts, lists, tuples, namedtuples and dataclass instances are rebuilt around the moved
    tensors, so the caller's structure is not modified; any other leaf (strings, numbers,
    arbitrary objects) is returned as it is.

    Args:
        device: Where the tensors go.
        *objs: One or more batches.
        non_blocking: Passed to ``Tensor.to``; lets copies from pinned memory overlap with
            compute on CUDA.

    Returns:
        The moved object when one is given, else a tuple of the moved objects.

    Example:
        >>> x, y = move_to_device("cpu", (torch.zeros(2), {"label": torch.ones(1)}))
    """
    target = resolve_device(device)
    moved = tuple(_move(obj, target, non_blocking) for obj in objs)
    return moved[0] if len(moved) == 1 else moved


def _move(obj: Any, device: torch.device, non_blocking: bool) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=non_blocking)
    if isinstance(obj, dict):
        return type(obj)((key, _move(value, device, non_blocking)) for key, value in obj.items())
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(_move(value, device, non_blocking) for value in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(_move(value, device, non_blocking) for value in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changes = {
            field.name: _move(getattr(obj, field.name), device, non_blocking)
            for field in dataclasses.fields(obj)
            if field.init
        }
        return dataclasses.replace(obj, **changes)
    return obj
