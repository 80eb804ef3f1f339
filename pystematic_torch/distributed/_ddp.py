"""A DistributedDataParallel wrapper that the user's code cannot tell from the module.

Plain DDP hides the model's own methods behind ``.module``, and calling one of them there
(``ddp.module.compute_loss(x)``) bypasses DDP's forward, so its gradients are never
averaged: the ranks silently train apart. Here every public method the model's own class
defines runs *as* DDP's forward: the module's ``forward`` is replaced for exactly one call
by the method, and the wrapper is called, so DDP does all it does around a forward (buffer
broadcast, reducer preparation, unused-parameter search) and ``self(x)`` inside the method
reaches the real ``forward``.
"""
import functools
import inspect
import logging
from typing import Any, Callable, FrozenSet, Mapping, Tuple

from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..errors import DistributedError

__all__ = ["TransparentDDP", "forward_methods"]

logger = logging.getLogger("pystematic.torch")

_ABSENT = object()
# What every module answers itself; the wrapper answers these for the module it wraps.
_MODULE_API = frozenset(dir(nn.Module())) | {"forward"}


def forward_methods(module: nn.Module) -> FrozenSet[str]:
    """Names of the public methods ``module``'s own classes define, which must run as forward.

    Methods that torch's classes define (``parameters()``, ``train()``, ``state_dict()``,
    ``nn.Sequential.append()``, ...) are left out: gradients never flow through them.
    Static and class methods are left out too: they do not use the module's parameters.
    The same names are what FSDP2's ``register_fsdp_forward_method`` will be given.
    """
    return _forward_methods_of(type(module))


@functools.cache
def _forward_methods_of(cls: type) -> FrozenSet[str]:
    names = set()
    for klass in cls.__mro__:
        if _is_torch_class(klass):
            continue
        for name in vars(klass):
            if name.startswith("_") or name in _MODULE_API:
                continue
            if inspect.isfunction(inspect.getattr_static(cls, name)) and not _is_torch_class(
                _defining_class(cls, name)
            ):
                names.add(name)
    return frozenset(names)


def _is_torch_class(klass: type) -> bool:
    return klass is object or klass.__module__.split(".")[0] == "torch"


def _defining_class(cls: type, name: str) -> type:
    return next(klass for klass in cls.__mro__ if name in vars(klass))


class TransparentDDP(DistributedDataParallel):
    """DDP whose attributes, methods and state dict are those of the wrapped module.

    - Attribute reads fall through to the module: ``ddp.fc``, ``ddp.hidden_size``.
    - Every public method of the module's own class runs as DDP's forward, so gradients
      are averaged across ranks whichever method computes the loss. Methods are called on
      every rank, like the model itself; for work on one rank only (a summary, sampling on
      rank 0) call ``ddp.module.method()``. Generator methods are refused, since their body
      would run after DDP's forward had ended.
    - ``state_dict()`` and ``load_state_dict()`` are the module's own, without the
      ``module.`` prefix, so checkpoints move between distributed and single-process runs.
    - Attribute writes land on the wrapper: set attributes on ``.module``.

    Names that DDP itself defines (``dim``, ``device``, ``join``, ...) answer as DDP's; a
    warning at wrapping lists those the module also has.
    """

    def __init__(self, module: nn.Module, **ddp_options: Any) -> None:
        super().__init__(module, **ddp_options)
        shadowed = sorted(_public_names(module) & (set(dir(self)) - _MODULE_API))
        if shadowed:
            logger.warning(
                "DistributedDataParallel has attributes of its own named %s, so reading them "
                "on the wrapped %s gives DDP's; read the model's as .module.%s, or rename them.",
                ", ".join(shadowed), type(module).__name__, shadowed[0],
            )  # fmt: skip

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "module":
                raise
        module = self.module
        if name in forward_methods(module) and name not in vars(module):
            return self._as_forward(name)
        return getattr(module, name)

    def _as_forward(self, name: str) -> Callable[..., Any]:
        method = getattr(self.module, name)

        @functools.wraps(method)
        def call(*args: Any, **kwargs: Any) -> Any:
            if _is_lazy(method):
                raise DistributedError(
                    f"{type(self.module).__name__}.{name}() is a generator or coroutine "
                    "function: its body would run after DistributedDataParallel's forward "
                    "ended, so its gradients would not be averaged across ranks. Return a "
                    f"list instead, or call .module.{name}() where no gradients are involved."
                )
            return _call_as_forward(self, method, args, kwargs)

        return call

    def state_dict(self, *args, **kwargs):
        return self.module.state_dict(*args, **kwargs)

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ):
        return self.module.load_state_dict(state_dict, strict=strict, assign=assign)


def _call_as_forward(wrapper: nn.Module, method: Callable, args: Tuple, kwargs: dict) -> Any:
    """Call ``wrapper(*args, **kwargs)`` with ``method`` standing in for the module's forward."""
    module = wrapper.module
    own_forward = vars(module).get("forward", _ABSENT)

    def put_forward_back() -> None:
        if own_forward is _ABSENT:
            vars(module).pop("forward", None)
        else:
            vars(module)["forward"] = own_forward

    def run_method(*inner_args: Any, **inner_kwargs: Any) -> Any:
        # The real forward is back before the method runs, so self(x) inside it reaches it.
        put_forward_back()
        return method(*inner_args, **inner_kwargs)

    # An instance attribute shadows the class's forward for nn.Module.__call__.
    vars(module)["forward"] = run_method
    try:
        return wrapper(*args, **kwargs)
    finally:
        put_forward_back()


def _is_lazy(method: Callable) -> bool:
    function = getattr(method, "__func__", method)
    return (
        inspect.isgeneratorfunction(function)
        or inspect.iscoroutinefunction(function)
        or inspect.isasyncgenfunction(function)
    )


def _public_names(module: nn.Module) -> set:
    names = set(vars(module)).union(module._modules, module._parameters, module._buffers)
    names = {name for name in names if not name.startswith("_")}
    for klass in type(module).__mro__:
        if not _is_torch_class(klass):
            names.update(name for name in vars(klass) if not name.startswith("_"))
    return names - _MODULE_API
