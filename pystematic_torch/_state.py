"""Capturing, checking and restoring the state of a Context's items.

Loading happens in two passes: every problem in the whole state is collected first, so the
user sees all of them in one error and nothing is half-loaded when any is wrong.
"""
import numbers
from typing import Any, List, Mapping

import torch
from torch import nn

_PLAIN = (int, float, bool, str, bytes, type(None))
# Optimizer state entries that always have their parameter's shape.
_PARAM_SHAPED_STATE = {
    "momentum_buffer", "exp_avg", "exp_avg_sq", "max_exp_avg_sq", "square_avg",
    "sum", "acc_delta", "grad_avg", "ax", "prev", "mu_product",
}  # fmt: skip


class _Opaque:
    """Marks an item that holds no state (a function, an arbitrary object)."""


OPAQUE = _Opaque()


def is_stateful(value: Any) -> bool:
    return (
        not isinstance(value, type)
        and callable(getattr(value, "state_dict", None))
        and callable(getattr(value, "load_state_dict", None))
    )


def has_state(value: Any) -> bool:
    """Whether ``capture(value)`` gives a state rather than OPAQUE, without computing it."""
    return is_stateful(value) or isinstance(value, (torch.Tensor, dict, list, tuple, *_PLAIN))


def capture(value: Any) -> Any:
    """The state of one item, or OPAQUE when it has none."""
    if is_stateful(value):
        return value.state_dict()
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, dict):
        captured = ((key, capture(item)) for key, item in value.items())
        return {key: state for key, state in captured if state is not OPAQUE}
    if isinstance(value, (list, tuple)):
        # Positions must survive, so stateless elements leave a None in their place.
        states = [capture(item) for item in value]
        states = [None if state is OPAQUE else state for state in states]
        return tuple(states) if isinstance(value, tuple) else states
    return OPAQUE


def check(path: str, current: Any, saved: Any, strict: bool, problems: List[str]) -> None:
    """Append to ``problems`` every way in which ``saved`` does not fit ``current``."""
    if isinstance(current, nn.Module):
        _check_module(path, current, saved, strict, problems)
    elif isinstance(current, torch.optim.Optimizer):
        _check_optimizer(path, current, saved, problems)
    elif is_stateful(current):
        return
    elif isinstance(current, torch.Tensor):
        if not isinstance(saved, torch.Tensor):
            problems.append(f"{path}: checkpoint has {_kind(saved)}, context has a tensor")
        elif saved.shape != current.shape:
            problems.append(
                f"{path}: checkpoint has {list(saved.shape)}, context has {list(current.shape)}"
            )
    elif isinstance(current, dict):
        if not isinstance(saved, Mapping):
            problems.append(f"{path}: checkpoint has {_kind(saved)}, context has a dict")
            return
        own = {key for key, item in current.items() if has_state(item)}
        _check_keys(path, own, set(saved), strict, problems)
        for key in own & set(saved):
            check(f"{path}.{key}", current[key], saved[key], strict, problems)
    elif isinstance(current, (list, tuple)):
        if not isinstance(saved, (list, tuple)) or len(saved) != len(current):
            problems.append(f"{path}: checkpoint has {_kind(saved)}, context has {_kind(current)}")
            return
        for index, (item, item_state) in enumerate(zip(current, saved)):
            check(f"{path}[{index}]", item, item_state, strict, problems)
    elif isinstance(current, _PLAIN) and not _plain_types_fit(current, saved):
        problems.append(f"{path}: checkpoint has {_kind(saved)}, context has {_kind(current)}")


def restore(path: str, current: Any, saved: Any, strict: bool) -> Any:
    """Load ``saved`` into ``current`` in place where possible; return the item to keep."""
    if isinstance(current, nn.Module):
        current.load_state_dict(saved, strict=strict)
        return current
    if is_stateful(current):
        if isinstance(saved, Mapping) and not saved and not current.state_dict():
            # A disabled GradScaler saves {} and refuses to load {}: nothing to restore.
            return current
        current.load_state_dict(saved)
        return current
    if isinstance(current, torch.Tensor):
        with torch.no_grad():
            current.copy_(saved)
        return current
    if isinstance(current, dict):
        for key in saved:
            if key in current:
                current[key] = restore(f"{path}.{key}", current[key], saved[key], strict)
        return current
    if isinstance(current, list):
        for index, item_state in enumerate(saved):
            current[index] = restore(f"{path}[{index}]", current[index], item_state, strict)
        return current
    if isinstance(current, tuple):
        items = [
            restore(f"{path}[{index}]", item, item_state, strict)
            for index, (item, item_state) in enumerate(zip(current, saved))
        ]
        return type(current)(*items) if hasattr(current, "_fields") else type(current)(items)
    if not has_state(current):
        return current
    return saved


def _check_module(path, module, saved, strict, problems) -> None:
    if not isinstance(saved, Mapping):
        problems.append(f"{path}: checkpoint has {_kind(saved)}, context has a module")
        return
    own = module.state_dict()
    _check_keys(path, set(own), set(saved), strict, problems)
    for key in own.keys() & saved.keys():
        mine, theirs = own[key], saved[key]
        if isinstance(mine, torch.Tensor) and isinstance(theirs, torch.Tensor):
            if mine.shape != theirs.shape:
                problems.append(
                    f"{path}.{key}: checkpoint has {list(theirs.shape)}, "
                    f"model has {list(mine.shape)}"
                )


def _check_optimizer(path, optimizer, saved, problems) -> None:
    if not isinstance(saved, Mapping) or "param_groups" not in saved or "state" not in saved:
        problems.append(f"{path}: checkpoint has {_kind(saved)}, context has an optimizer")
        return
    groups, saved_groups = optimizer.param_groups, saved["param_groups"]
    if len(groups) != len(saved_groups):
        problems.append(
            f"{path}: checkpoint has {len(saved_groups)} parameter groups, "
            f"optimizer has {len(groups)}"
        )
        return
    for index, (group, saved_group) in enumerate(zip(groups, saved_groups)):
        if len(group["params"]) != len(saved_group["params"]):
            problems.append(
                f"{path}.param_groups[{index}]: checkpoint has {len(saved_group['params'])} "
                f"parameters, optimizer has {len(group['params'])}"
            )
            return
    params = [param for group in groups for param in group["params"]]
    index_of = {saved_id: position for position, saved_id in enumerate(
        saved_id for group in saved_groups for saved_id in group["params"]
    )}  # fmt: skip
    for saved_id, entries in saved["state"].items():
        param = params[index_of[saved_id]] if saved_id in index_of else None
        for key, value in entries.items():
            if param is None or key not in _PARAM_SHAPED_STATE:
                continue
            if isinstance(value, torch.Tensor) and value.shape != param.shape:
                problems.append(
                    f"{path}.state[{saved_id}].{key}: checkpoint has {list(value.shape)}, "
                    f"parameter has {list(param.shape)}"
                )


def _check_keys(path, own: set, saved: set, strict: bool, problems: List[str]) -> None:
    if not strict:
        return
    missing = sorted(map(str, own - saved))
    unexpected = sorted(map(str, saved - own))
    if missing:
        problems.append(f"{path}: missing from the checkpoint: {', '.join(missing)}")
    if unexpected:
        problems.append(f"{path}: unexpected in the checkpoint: {', '.join(unexpected)}")


def _plain_types_fit(current: Any, saved: Any) -> bool:
    if current is None or saved is None:
        return True
    if isinstance(current, bool) or isinstance(saved, bool):
        return isinstance(current, bool) and isinstance(saved, bool)
    if isinstance(current, numbers.Real) and isinstance(saved, numbers.Real):
        return True
    return type(current) is type(saved)


def _kind(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {list(value.shape)}"
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of length {len(value)}"
    return type(value).__name__
