"""Capturing, checking and restoring the state of a Context's items.

Each kind of item answers four questions: has it state (:func:`has_state`), what is it
(:func:`capture`), does a saved state fit it, without changing anything (:func:`check`), and
put it back (:func:`restore`). :func:`snapshot` is a copy of an item's state that undoes a
load which failed half-way.

A stateful object (one with ``state_dict`` and ``load_state_dict``) is checked by, in order:

1. its own ``check_state_dict(state)`` method, if it has one: it raises when ``state`` does
   not fit and changes nothing;
2. for torch modules and optimizers, what their own loaders would refuse: missing and
   unexpected keys, tensor shapes, parameter groups;
3. for anything else (schedulers, gradient scalers, loaders, recorders, your own objects),
   the form of its current ``state_dict()``: a dict with every key it has now (when
   strict), plain values of fitting types, tensors of the same shape. Deeper structure is
   the object's own ``load_state_dict``'s to judge, so the Context loads these first and
   rolls them back if anything fails (see :func:`load_order`).

Generators of torch, NumPy and Python are items of their own kind (see ``_generators``).
"""
import collections
import copy
import numbers
from typing import Any, List, Mapping

import torch
from torch import nn

from . import _generators

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
    return (
        is_stateful(value)
        or _generators.kind_of(value) is not None
        or isinstance(value, (torch.Tensor, dict, list, tuple, *_PLAIN))
    )


def capture(value: Any) -> Any:
    """The state of one item, or OPAQUE when it has none."""
    if _generators.kind_of(value) is not None:
        return _generators.capture(value)
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


def snapshot(value: Any) -> Any:
    """A copy of ``value``'s state that later changes to ``value`` do not reach.

    Tensors are copied to the CPU, so a snapshot of a model on a GPU costs host memory, not
    device memory. ``restore(path, value, snapshot(value), strict=False)`` undoes a load.
    """
    return _detached(capture(value))


def load_order(value: Any) -> int:
    """When to load ``value`` among the others, lowest first.

    0: objects only checked by the form of their state, whose loading may still fail, go
    first, before anything else was touched; 1: what :func:`check` judges exactly (modules,
    optimizers, generators, tensors, plain values); 2: objects with their own
    ``check_state_dict``: they vouch for the state; 3: objects whose loading cannot be
    undone (``irreversible_load = True``: a recorder trimming its files to the loaded step),
    very last, when nothing else can fail any more.
    """
    if getattr(type(value), "irreversible_load", False):
        return 3
    if isinstance(value, dict):
        return min(map(load_order, value.values()), default=1)
    if isinstance(value, (list, tuple)):
        return min(map(load_order, value), default=1)
    if is_stateful(value) and _generators.kind_of(value) is None:
        if callable(getattr(value, "check_state_dict", None)):
            return 2
        return 1 if isinstance(value, (nn.Module, torch.optim.Optimizer)) else 0
    return 1


def check(path: str, current: Any, saved: Any, strict: bool, problems: List[str]) -> None:
    """Append to ``problems`` every way in which ``saved`` does not fit ``current``."""
    try:
        _check(path, current, saved, strict, problems)
    except Exception as error:  # noqa: BLE001 - a malformed state is a problem to report
        problems.append(f"{path}: the checkpoint's state is malformed ({error!r})")


def _check(path: str, current: Any, saved: Any, strict: bool, problems: List[str]) -> None:
    if _generators.kind_of(current) is not None:
        problem = _generators.problem(current, saved)
        if problem:
            problems.append(f"{path}: {problem}")
    elif is_stateful(current) and callable(getattr(current, "check_state_dict", None)):
        try:
            current.check_state_dict(saved)
        except Exception as error:  # noqa: BLE001 - the object's own verdict, reported
            problems.append(f"{path}: {error}")
    elif isinstance(current, nn.Module):
        _check_module(path, current, saved, strict, problems)
    elif isinstance(current, torch.optim.Optimizer):
        _check_optimizer(path, current, saved, problems)
    elif is_stateful(current):
        _check_like_current(path, current, saved, strict, problems)
    elif isinstance(current, torch.Tensor):
        _check_tensor(path, current, saved, "context", problems)
    elif isinstance(current, dict):
        if not isinstance(saved, Mapping):
            problems.append(f"{path}: checkpoint has {_kind(saved)}, context has a dict")
            return
        own = {key for key, item in current.items() if has_state(item)}
        _check_keys(path, own, set(saved), strict, problems)
        for key in own & set(saved):
            _check(f"{path}.{key}", current[key], saved[key], strict, problems)
    elif isinstance(current, (list, tuple)):
        if not isinstance(saved, (list, tuple)) or len(saved) != len(current):
            problems.append(f"{path}: checkpoint has {_kind(saved)}, context has {_kind(current)}")
            return
        for index, (item, item_state) in enumerate(zip(current, saved)):
            _check(f"{path}[{index}]", item, item_state, strict, problems)
    elif isinstance(current, _PLAIN) and not _plain_types_fit(current, saved):
        problems.append(f"{path}: checkpoint has {_kind(saved)}, context has {_kind(current)}")


def restore(path: str, current: Any, saved: Any, strict: bool) -> Any:
    """Load ``saved`` into ``current`` in place where possible; return the item to keep."""
    if _generators.kind_of(current) is not None:
        _generators.restore(current, saved)
        return current
    if isinstance(current, nn.Module):
        current.load_state_dict(saved, strict=strict)
        return current
    if is_stateful(current):
        if isinstance(saved, Mapping) and not saved and not current.state_dict():
            # A disabled GradScaler saves {}; there is nothing to restore.
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
        if isinstance(own[key], torch.Tensor):
            _check_tensor(f"{path}.{key}", own[key], saved[key], "model", problems)


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


def _check_like_current(path, obj, saved, strict, problems) -> None:
    """The saved state must have the form of ``obj``'s current state, at its top level."""
    current = obj.state_dict()
    if not isinstance(current, Mapping):
        return
    if not isinstance(saved, Mapping):
        problems.append(
            f"{path}: checkpoint has {_kind(saved)}, {type(obj).__name__} saves a dict"
        )
        return
    if strict:
        missing = sorted(map(str, current.keys() - saved.keys()))
        if missing:
            problems.append(f"{path}: missing from the checkpoint: {', '.join(missing)}")
    for key in current.keys() & saved.keys():
        mine, theirs = current[key], saved[key]
        if isinstance(mine, torch.Tensor):
            _check_tensor(f"{path}.{key}", mine, theirs, type(obj).__name__, problems)
        elif isinstance(mine, _PLAIN) and not _plain_types_fit(mine, theirs):
            problems.append(
                f"{path}.{key}: checkpoint has {_kind(theirs)}, "
                f"{type(obj).__name__} has {_kind(mine)}"
            )


def _check_tensor(path, mine, theirs, owner, problems) -> None:
    if not isinstance(theirs, torch.Tensor):
        problems.append(f"{path}: checkpoint has {_kind(theirs)}, {owner} has a tensor")
    elif theirs.shape != mine.shape:
        problems.append(
            f"{path}: checkpoint has {list(theirs.shape)}, {owner} has {list(mine.shape)}"
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


def _detached(state: Any) -> Any:
    if isinstance(state, torch.Tensor):
        return state.detach().to("cpu", copy=True)
    if isinstance(state, Mapping):
        copied = collections.OrderedDict((key, _detached(item)) for key, item in state.items())
        if hasattr(state, "_metadata"):
            # Module state dicts carry their layout versions here; loaders read them.
            copied._metadata = copy.deepcopy(state._metadata)
        return copied if isinstance(state, collections.OrderedDict) else dict(copied)
    if isinstance(state, (list, tuple)):
        items = [_detached(item) for item in state]
        return type(state)(items) if not hasattr(state, "_fields") else type(state)(*items)
    return copy.deepcopy(state)


def _kind(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {list(value.shape)}"
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of length {len(value)}"
    return type(value).__name__
