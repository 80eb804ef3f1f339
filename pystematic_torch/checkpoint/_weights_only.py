"""Which values ``torch.load(weights_only=True)`` reads back, checked before anything is written.

The types are exact, found by saving and loading each kind with torch 2.13 (the tests in
``tests/checkpoint/test_weights_only.py`` do it again for every kind): a subclass of an
accepted type is refused, because the weights-only unpickler either refuses it (tensor
subclasses such as DTensor, dict and list subclasses, numpy scalars, which subclass
``float``) or silently turns it into its base class (a ``nn.Parameter`` subclass comes back as
a plain ``nn.Parameter``).
"""
import collections
from typing import Any, List, Set

import torch
from torch import nn

from ._format import ContextState

_LEAVES = frozenset({
    str, bytes, bytearray, int, float, bool, complex, type(None),
    torch.Size, torch.dtype, torch.device, torch.layout, torch.qscheme,
})  # fmt: skip
_TENSORS = frozenset({torch.Tensor, nn.Parameter})
# ContextState pickles as an OrderedDict (see its __reduce_ex__).
_MAPPINGS = frozenset({dict, collections.OrderedDict, collections.Counter, ContextState})
_SEQUENCES = frozenset({list, tuple, set})


def unloadable_values(value: Any, path: str) -> List[str]:
    """Describe each value under ``value`` that weights-only loading cannot read, by its path.

    Example: ``["state['loss'] is a numpy.float64 (use .item() ...)"]``.
    """
    problems: List[str] = []
    _check(value, path, problems, set())
    return problems


def _check(value: Any, path: str, problems: List[str], seen: Set[int]) -> None:
    kind = type(value)
    if kind in _LEAVES:
        return
    if kind in _TENSORS:
        # Attributes set on a tensor (t.note = ...) are saved with it.
        for name, attribute in vars(value).items():
            _check(attribute, f"{path}.{name}", problems, seen)
        return
    if kind not in _MAPPINGS and kind not in _SEQUENCES:
        problems.append(f"{path} is a {kind.__module__}.{kind.__qualname__} ({_hint(value)})")
        return
    if id(value) in seen:
        return
    seen.add(id(value))
    if kind in _MAPPINGS:
        for key, item in value.items():
            _check(key, f"{path} key {key!r}", problems, seen)
            _check(item, f"{path}[{key!r}]", problems, seen)
    else:
        for index, item in enumerate(value):
            _check(item, f"{path}[{index}]", problems, seen)


def _hint(value: Any) -> str:
    module = type(value).__module__.split(".")[0]
    if module == "numpy":
        return "use .item() for a number, or torch.from_numpy() for an array"
    if isinstance(value, torch.Tensor):
        return "save a plain tensor: .detach() of a parameter subclass, .full_tensor() of a DTensor"
    if isinstance(value, torch.Generator):
        return "save generator.get_state(), a tensor"
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return "use a dict or a plain tuple"
    return "turn it into tensors, numbers, strings, or dicts, lists and tuples of these"
