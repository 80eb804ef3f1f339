"""Moving nested structures of tensors between devices."""
import dataclasses
from typing import Any, Callable, Iterator, Union

import torch

from .errors import DeviceError

__all__ = ["move_to_device", "resolve_device", "map_tensors", "iter_tensors", "to_numpy"]

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

    Raises:
        DeviceError: ``device`` names no device torch knows.

    Example:
        >>> x, y = move_to_device("cpu", (torch.zeros(2), {"label": torch.ones(1)}))
    """
    target = resolve_device(device)
    moved = tuple(_move(obj, target, non_blocking) for obj in objs)
    return moved[0] if len(moved) == 1 else moved


def _move(obj: Any, device: torch.device, non_blocking: bool) -> Any:
    return map_tensors(lambda tensor: tensor.to(device, non_blocking=non_blocking), obj)


def map_tensors(fn: Callable[[torch.Tensor], Any], obj: Any) -> Any:
    """Rebuild a nested batch with ``fn`` applied to every tensor in it.

    Dicts, lists, tuples, namedtuples and dataclass instances are rebuilt around the
    results; other leaves are returned as they are.
    """
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        return type(obj)((key, map_tensors(fn, value)) for key, value in obj.items())
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(map_tensors(fn, value) for value in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(map_tensors(fn, value) for value in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changes = {
            field.name: map_tensors(fn, getattr(obj, field.name))
            for field in dataclasses.fields(obj)
            if field.init
        }
        return dataclasses.replace(obj, **changes)
    return obj


def iter_tensors(obj: Any) -> Iterator[torch.Tensor]:
    """Every tensor in a nested batch, in the order ``map_tensors`` visits them."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from iter_tensors(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from iter_tensors(value)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for field in dataclasses.fields(obj):
            if field.init:
                yield from iter_tensors(getattr(obj, field.name))


def to_numpy(value: Any) -> "numpy.ndarray":  # noqa: F821 - numpy is imported when used
    """A tensor (from any device) or array-like as a NumPy array; bfloat16 becomes float32.

    NumPy has no bfloat16, so such tensors are widened rather than refused.
    """
    import numpy

    if isinstance(value, torch.Tensor):
        tensor = value.detach()
        if tensor.dtype == torch.bfloat16:
            tensor = tensor.float()
        return tensor.cpu().numpy()
    return numpy.asarray(value)
