"""The Context: one registry for every object of a training session.

Assign models, optimizers, schedulers, loaders, recorders, tensors and plain values to a
Context's attributes; it then moves them to a device together, wraps them for distributed
training, and saves or restores all of them at once.
"""
import logging
import os
from typing import Any, Callable, Dict, Iterator, List, Optional, Union

import torch
from torch import nn

from . import _session, _state
from .checkpoint import ContextState, load_checkpoint
from .devices import DeviceLike, resolve_device
from .distributed import get_local_rank, is_distributed
from .distributed._ddp import TransparentDDP
from .errors import DeviceError, DistributedError, StateDictError

__all__ = ["Context"]

logger = logging.getLogger("pystematic.torch")

_NO_CUDA_HINT = "run on the CPU with --no-cuda (or cuda=False), or call ctx.cpu()"


class Context:
    """A registry of the objects that make up a training session.

    Anything can be assigned as an attribute: ``nn.Module``, optimizers, LR schedulers,
    gradient scalers, :class:`SmartDataLoader`, :class:`Recorder`, tensors, plain values
    (int, float, bool, str, None) and dicts, lists and tuples of these. Names that start
    with ``_`` are private: the context stores them as ordinary attributes and never moves
    or saves them. Items keep the order in which they were first assigned.

    The names of the context's own methods and properties (``to``, ``device``, ...) cannot
    hold items: assigning one raises ``AttributeError``. Items assigned after a move are not
    moved retroactively; register everything, then call :meth:`autotransform` (or
    :meth:`to`).

    Example:
        >>> ctx = Context()
        >>> ctx.epoch = 0
        >>> ctx.model = torch.nn.Linear(4, 2)
        >>> ctx.optimizer = torch.optim.SGD(ctx.model.parameters(), lr=0.1)
        >>> state = ctx.state_dict()
        >>> sorted(state)
        ['epoch', 'model', 'optimizer']
    """

    def __init__(self) -> None:
        object.__setattr__(self, "_items", {})
        object.__setattr__(self, "_device", torch.device("cpu"))

    # -- the registry -------------------------------------------------------------------

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            object.__setattr__(self, name, value)
            return
        if hasattr(type(self), name):
            raise AttributeError(
                f"'{name}' is a Context method or property and cannot hold an item; "
                "register the object under another name."
            )
        self._items[name] = value

    def __getattr__(self, name: str) -> Any:
        items = self.__dict__.get("_items", {})
        if name in items:
            return items[name]
        raise AttributeError(
            f"Context has no item {name!r}; registered items are: {', '.join(items) or 'none'}."
        )

    def __delattr__(self, name: str) -> None:
        if name in self._items:
            del self._items[name]
        else:
            object.__delattr__(self, name)

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        """Iterate over the registered names, in registration order."""
        return iter(list(self._items))

    def __repr__(self) -> str:
        names = ", ".join(f"{name}={type(value).__name__}" for name, value in self._items.items())
        return f"Context(device={self._device}, {names})"

    @property
    def device(self) -> torch.device:
        """The device the context's items were last moved to (CPU until moved)."""
        return self._device

    # -- devices -------------------------------------------------------------------------

    def to(self, device: DeviceLike) -> "Context":
        """Move every item that can move to ``device`` and return the context.

        Modules move in place, so optimizers built before the move keep optimizing the same
        parameters; their state tensors (momentum, Adam moments) move with them. Tensors
        are replaced by moved copies, containers are traversed, objects with a ``to``
        method (such as :class:`SmartDataLoader`) are told the new device, and anything
        else is left alone.

        Raises:
            DeviceError: ``device`` is not a device, or it is a CUDA device and CUDA is not
                available to this process.
        """
        target = resolve_device(device)
        if target.type == "cuda":
            _require_cuda(f"Context.to({str(device)!r})")
            if target.index is None:
                target = torch.device("cuda", torch.cuda.current_device())
        for name, value in self._items.items():
            self._items[name] = _move(value, target)
        self._device = target
        return self

    def cpu(self) -> "Context":
        """Move everything to the CPU; see :meth:`to`."""
        return self.to("cpu")

    def cuda(self, device: Optional[DeviceLike] = None) -> "Context":
        """Move everything to a CUDA device; see :meth:`to`.

        Args:
            device: A CUDA device or index. By default this process's own GPU: in a
                distributed run the GPU of its local rank, otherwise the current device.

        Raises:
            DeviceError: CUDA is not available on this machine.
        """
        _require_cuda("Context.cuda()")
        if device is None:
            index = get_local_rank() if is_distributed() else torch.cuda.current_device()
            device = torch.device("cuda", index)
        elif isinstance(device, int):
            device = torch.device("cuda", device)
        return self.to(device)

    # -- distributed ---------------------------------------------------------------------

    def ddp(self, sync_batchnorm: bool = False, **ddp_options: Any) -> "Context":
        """Prepare every item for distributed data-parallel training; return the context.

        Every module with trainable parameters is wrapped in ``DistributedDataParallel``
        (with ``device_ids`` on CUDA); frozen modules are left as they are. The wrapped
        module stays transparent: its attributes and methods are reachable as before and
        its ``state_dict()`` keys are unchanged, so checkpoints move freely between
        distributed and single-process runs. Objects with a ``setup_distributed()`` method
        are told about the process group: recorders on ranks other than 0 fall silent and
        data loaders switch to sharded sampling.

        Args:
            sync_batchnorm: Convert BatchNorm layers to ``SyncBatchNorm`` before wrapping,
                so batch statistics are computed over the global batch. CUDA only.
            **ddp_options: Passed on to ``DistributedDataParallel``, e.g.
                ``find_unused_parameters=True``.

        Raises:
            DistributedError: no process group has been initialized, or
                ``sync_batchnorm=True`` on a context that is not on CUDA.
        """
        if not is_distributed():
            raise DistributedError(
                "Context.ddp() needs an initialized process group; run the experiment with "
                "--distributed, or call torch.distributed.init_process_group() first."
            )
        if sync_batchnorm and self._device.type != "cuda":
            raise DistributedError(
                f"Context.ddp(sync_batchnorm=True) needs the context on CUDA (it is on "
                f"{self._device}), because torch's SyncBatchNorm only runs on GPUs; call "
                "ctx.cuda() first, or leave sync_batchnorm off on the CPU."
            )
        device_ids = [self._device.index] if self._device.type == "cuda" else None

        def wrap(module: nn.Module) -> nn.Module:
            if isinstance(module, TransparentDDP):
                return module
            if not any(param.requires_grad for param in module.parameters()):
                return module
            if sync_batchnorm:
                module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
            return TransparentDDP(module, device_ids=device_ids, **ddp_options)

        for name, value in self._items.items():
            self._items[name] = _map_leaves(value, nn.Module, wrap)
        for value in self._items.values():
            for leaf in _leaves(value):
                setup = getattr(leaf, "setup_distributed", None)
                if callable(setup) and not isinstance(leaf, type):
                    setup()
        return self

    # -- state ---------------------------------------------------------------------------

    def state_dict(self) -> Dict[str, Any]:
        """The state of every registered item, keyed by name.

        Modules, optimizers, schedulers, scalers, loaders and recorders contribute their own
        ``state_dict()``; tensors, plain values and containers appear as they are. Items
        without state (functions, arbitrary objects) are left out. Everything in it loads
        with ``torch.load(weights_only=True)`` as long as the items' own state dicts do.
        """
        state = {}
        for name, value in self._items.items():
            captured = _state.capture(value)
            if captured is not _state.OPAQUE:
                state[name] = captured
        return ContextState(state)

    def load_state_dict(self, state: Dict[str, Any], strict: bool = True) -> None:
        """Restore every item from ``state``, in place, and plain values on the context.

        All problems are collected before anything is changed, so a failed load leaves the
        context as it was. Tensors in ``state`` may live on any device: a CPU checkpoint
        loads into a CUDA context and the other way round.

        Args:
            state: A dict from :meth:`state_dict`, possibly read back from disk.
            strict: Refuse entries that are missing or unexpected, at the top level and
                inside modules and dicts. Shape and type mismatches are refused either way.

        Raises:
            StateDictError: listing every missing or unexpected entry and every mismatch by
                its full path, e.g. ``model.fc.weight: checkpoint has [10, 4], model has
                [10, 5]``.
        """
        if not isinstance(state, dict):
            raise StateDictError(
                f"Context.load_state_dict needs a dict from Context.state_dict(), "
                f"got {type(state).__name__}."
            )
        stateful = [name for name, value in self._items.items() if _state.has_state(value)]
        problems: List[str] = []
        if strict:
            missing = [name for name in stateful if name not in state]
            unexpected = [name for name in state if name not in self._items]
            if missing:
                problems.append(f"missing from the checkpoint: {', '.join(missing)}")
            if unexpected:
                problems.append(f"unexpected in the checkpoint: {', '.join(unexpected)}")
        to_load = [name for name in stateful if name in state]
        for name in to_load:
            _state.check(name, self._items[name], state[name], strict, problems)
        if problems:
            raise StateDictError(
                "The state does not fit this Context:\n  - " + "\n  - ".join(problems)
            )
        for name in to_load:
            try:
                self._items[name] = _state.restore(name, self._items[name], state[name], strict)
            except StateDictError:
                raise
            except Exception as error:
                raise StateDictError(f"{name}: could not load its state: {error}") from error
        ignored = [name for name in state if name not in self._items]
        if ignored:
            logger.warning("Ignored checkpoint entries the context has no item for: %s.", ignored)

    # -- the automatic path --------------------------------------------------------------

    def autotransform(
        self,
        checkpoint: Optional[Union[str, "os.PathLike[str]"]] = None,
        cuda: Optional[bool] = None,
        distributed: Optional[bool] = None,
    ) -> "Context":
        """Load a checkpoint, move to CUDA and wrap for DDP, as the run's parameters say.

        Inside a running experiment the choices come from the ``--checkpoint``, ``--cuda``
        and ``--distributed`` parameters; keyword arguments override them, and outside an
        experiment they are the only source (defaults as for the parameters: no checkpoint,
        CUDA on, not distributed). In that order:

        1. ``checkpoint`` (a file, or a run directory whose newest checkpoint is used) is
           loaded with :meth:`load_state_dict`;
        2. with ``cuda`` the context moves to this process's GPU; without CUDA on the
           machine it stays on the CPU and logs one warning;
        3. with ``distributed`` the context is prepared with :meth:`ddp`.

        Args:
            checkpoint: A checkpoint file or run directory to resume from.
            cuda: Move to this process's GPU when CUDA is available.
            distributed: Wrap for distributed data-parallel training.

        Returns:
            The context.

        Raises:
            CheckpointError: the checkpoint cannot be found or read.
            StateDictError: the checkpoint does not fit the context.
            DistributedError: ``distributed`` is set but no process group exists.
        """
        params = _session.current_params() or {}
        if checkpoint is None:
            checkpoint = params.get("checkpoint")
        cuda = params.get("cuda", True) if cuda is None else cuda
        distributed = params.get("distributed", False) if distributed is None else distributed

        if checkpoint is not None:
            self.load_state_dict(load_checkpoint(checkpoint))
        if cuda:
            if torch.cuda.is_available():
                self.cuda()
            else:
                logger.warning(
                    "CUDA was requested but is not available on this machine; staying on the "
                    "CPU. Pass --no-cuda to run on the CPU without this warning."
                )
        if distributed:
            self.ddp()
        return self


def _require_cuda(what: str) -> None:
    if not torch.cuda.is_available():
        raise DeviceError(
            f"{what} needs CUDA, but torch.cuda.is_available() is False on this machine; "
            f"{_NO_CUDA_HINT}."
        )


def _leaves(value: Any) -> Iterator[Any]:
    if isinstance(value, dict):
        for item in value.values():
            yield from _leaves(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _leaves(item)
    else:
        yield value


def _map_leaves(value: Any, kind: type, function: Callable[[Any], Any]) -> Any:
    """Apply ``function`` to every leaf of type ``kind``; dicts and lists change in place."""
    if isinstance(value, kind):
        return function(value)
    if isinstance(value, dict):
        for key, item in value.items():
            value[key] = _map_leaves(item, kind, function)
        return value
    if isinstance(value, list):
        for index, item in enumerate(value):
            value[index] = _map_leaves(item, kind, function)
        return value
    if isinstance(value, tuple):
        items = [_map_leaves(item, kind, function) for item in value]
        return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)
    return value


def _move(value: Any, device: torch.device) -> Any:
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
            value[key] = _move(item, device)
        return value
    if isinstance(value, list):
        value[:] = [_move(item, device) for item in value]
        return value
    if isinstance(value, tuple):
        items = [_move(item, device) for item in value]
        return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)
    move = getattr(value, "to", None)
    if callable(move) and not isinstance(value, type):
        moved = move(device)
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
