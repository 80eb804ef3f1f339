"""Moving a Context's items between devices, and walking the containers that hold them."""
from typing import Any, Callable, Iterator, Optional

import torch
from torch import nn

from ..devices import DeviceLike, resolve_device
from ..errors import DeviceError

_NO_CUDA_HINT = "run on the CPU with --no-cuda (or cuda=False), or call ctx.cpu()"


def require_cuda(what: str) -> None:
    if not torch.cuda.is_available():
        raise DeviceError(
            f"{what} needs CUDA, but torch.cuda.is_available() is False on this machine; "
            f"{_NO_CUDA_HINT}."
        )


def target_device(device: DeviceLike) -> torch.device:
    """Where ``ctx.to(device)`` moves: ``device``, with the current index on a bare ``cuda``."""
    target = resolve_device(device)
    if target.type == "cuda":
        require_cuda(f"Context.to({str(device)!r})")
        if target.index is None:
            target = torch.device("cuda", torch.cuda.current_device())
    return target


def own_cuda_device(device: Optional[DeviceLike]) -> DeviceLike:
    """Where ``ctx.cuda(device)`` moves: ``device``, or by default this process's own GPU."""
    require_cuda("Context.cuda()")
    if device is None:
        # In a distributed run the launch has already made this rank's GPU current.
        return torch.device("cuda", torch.cuda.current_device())
    if isinstance(device, int):
        return torch.device("cuda", device)
    return device


def leaves(value: Any) -> Iterator[Any]:
    """Everything inside ``value``'s dicts, lists and tuples (``value`` itself otherwise)."""
    if isinstance(value, dict):
        for item in value.values():
            yield from leaves(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from leaves(item)
    else:
        yield value


def map_leaves(value: Any, kind: type, function: Callable[[Any], Any]) -> Any:
    """Apply ``function`` to every leaf of type ``kind``; dicts and lists change in place."""
    if isinstance(value, kind):
        return function(value)
    if isinstance(value, dict):
        for key, item in value.items():
            value[key] = map_leaves(item, kind, function)
        return value
    if isinstance(value, list):
        for index, item in enumerate(value):
            value[index] = map_leaves(item, kind, function)
        return value
    if isinstance(value, tuple):
        items = [map_leaves(item, kind, function) for item in value]
        return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)
    return value


def move(value: Any, device: torch.device) -> Any:
    """Move one item to ``device``; return the item to keep (tensors are replaced)."""
    if isinstance(value, nn.Module):
        return value.to(device)
    if isinstance(value, torch.optim.Optimizer):
        _move_optimizer_state(value, device)
        return value
    if isinstance(value, nn.Parameter):
        # Replacing the data keeps the Parameter object, which optimizers hold on to. Like
        # nn.Module.to, fall back to a new Parameter where the storage types cannot be swapped
        # (e.g. to the meta device).
        moved = value.data.to(device)
        try:
            value.data = moved
        except RuntimeError:
            return nn.Parameter(moved, requires_grad=value.requires_grad)
        return value
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        for key, item in value.items():
            value[key] = move(item, device)
        return value
    if isinstance(value, list):
        value[:] = [move(item, device) for item in value]
        return value
    if isinstance(value, tuple):
        items = [move(item, device) for item in value]
        return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)
    move_to = getattr(value, "to", None)
    if callable(move_to) and not isinstance(value, type):
        moved = move_to(device)
        return value if moved is None else moved
    return value


def _move_optimizer_state(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    keeps_step_with_param = {}
    for group in optimizer.param_groups:
        on_device = bool(group.get("capturable") or group.get("fused"))
        for param in group["params"]:
            keeps_step_with_param[param] = on_device
    for param, entries in optimizer.state.items():
        for key, value in entries.items():
            if not isinstance(value, torch.Tensor):
                continue
            # torch keeps the scalar 'step' on the CPU unless the optimizer is capturable
            # or fused; moving it anyway would break its checks on the next step.
            if key == "step" and not keeps_step_with_param.get(param, False):
                continue
            entries[key] = value.to(device)
