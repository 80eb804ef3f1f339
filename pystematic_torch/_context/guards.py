"""Catching set-up mistakes that would otherwise train silently wrong.

A Context watches each trainable module registered on it until the module's first forward
pass with gradients enabled, the moment training starts. Then:

- in a process group, a module that is not wrapped for distributed training (the user
  forgot ``ctx.autotransform()``) is an error: every rank would train its own copy;
- with ``--checkpoint`` given, if no Context has loaded a state in this run, a warning says
  the run starts from scratch (a user may load the checkpoint some other way).

The watch is a forward pre-hook that removes itself at that first training forward, so a
running loop pays nothing for it. Watching starts only where a mistake is possible: in a
process group, or with ``--checkpoint`` given.
"""
import logging
import sys
from typing import Any, Dict, Optional

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .. import _session
from ..distributed import is_distributed
from ..errors import DistributedError
from .moves import leaves

logger = logging.getLogger("pystematic.torch")

# The parameters of the last run in which a Context loaded a state, and of the last run
# warned about its unloaded checkpoint: each run is told at most once.
_loaded_in: Optional[dict] = None
_warned_in: Optional[dict] = None


def note_loaded() -> None:
    """Record that a Context loaded a state in the running experiment."""
    global _loaded_in
    _loaded_in = _session.current_params()


class Guard:
    """Watches one Context's trainable modules until training starts."""

    def __init__(self) -> None:
        self._hooks: Dict[int, Any] = {}
        self.wrapping_is_users = False

    def watch(self, name: str, value: Any) -> None:
        """Watch the trainable modules in ``value``, registered as ``name``, if a mistake is
        possible (in a process group, or with a checkpoint not loaded yet)."""
        if not (is_distributed() or _checkpoint_not_loaded() is not None):
            return
        for module in leaves(value):
            if not isinstance(module, nn.Module) or isinstance(module, DistributedDataParallel):
                continue
            if id(module) in self._hooks:
                continue
            if any(param.requires_grad for param in module.parameters()):
                self._hooks[id(module)] = module.register_forward_pre_hook(_Watch(self, name))

    def release(self, value: Any) -> None:
        """Stop watching the modules in ``value``: they were wrapped, or left the context."""
        if not self._hooks:
            return
        for module in leaves(value):
            handle = self._hooks.pop(id(module), None)
            if handle is not None:
                handle.remove()

    def _first_forward(self, name: str, module: nn.Module, args: Any) -> None:
        if not torch.is_grad_enabled():
            return
        if is_distributed() and not self.wrapping_is_users and not _inside_a_wrapper(module):
            raise DistributedError(
                f"ctx.{name} is being trained in a distributed run but is not wrapped for "
                "distributed training, so every rank would train its own copy; call "
                "ctx.autotransform() (or ctx.ddp()) after registering every item and before "
                "the training loop. If you wrap the model yourself, call "
                "ctx.autotransform(distributed=False) to say so."
            )
        _warn_if_checkpoint_not_loaded()
        # Removing a hook while torch runs the hooks is safe: it iterates over a copy.
        self.release(module)


class _Watch:
    """The forward pre-hook on one watched module.

    A copy of the module (``copy.deepcopy`` for an EMA or a target network, or a pickled
    module) gets an inert hook instead: it is not the registered item, and its watch could
    never be released.
    """

    def __init__(self, guard: Guard, name: str) -> None:
        self._guard, self._name = guard, name

    def __call__(self, module: nn.Module, args: Any) -> None:
        self._guard._first_forward(self._name, module, args)

    def __deepcopy__(self, memo: dict) -> Any:
        return _inert

    def __reduce__(self) -> Any:
        return _inert_hook, ()


def _inert(module: nn.Module, args: Any) -> None:
    """What a copied module's watch becomes: nothing."""


def _inert_hook() -> Any:
    return _inert


def _checkpoint_not_loaded() -> Optional[Any]:
    """The running experiment's --checkpoint if no Context has loaded a state yet."""
    params = _session.current_params()
    if params is None or not params.get("checkpoint") or _loaded_in is params:
        return None
    return params["checkpoint"]


def _warn_if_checkpoint_not_loaded() -> None:
    global _warned_in
    checkpoint = _checkpoint_not_loaded()
    params = _session.current_params()
    if checkpoint is None or _warned_in is params:
        return
    _warned_in = params
    logger.warning(
        "--checkpoint %s was given, but training started before any Context loaded a state, "
        "so this run starts from scratch; call ctx.autotransform() after registering every "
        "item (it loads the checkpoint), or load it yourself with ctx.load_state_dict("
        "pystematic.torch.load_checkpoint(params['checkpoint'])).",
        checkpoint,
    )


def _inside_a_wrapper(module: nn.Module) -> bool:
    """Whether ``module`` runs inside a DDP forward or was sharded by FSDP2 (the user's own)."""
    if getattr(DistributedDataParallel, "_active_ddp_module", None) is not None:
        return True
    fsdp = sys.modules.get("torch.distributed.fsdp")
    fsdp_module = getattr(fsdp, "FSDPModule", None)
    return fsdp_module is not None and isinstance(module, fsdp_module)
