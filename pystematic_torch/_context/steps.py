"""The Context's training-step helpers: backward, optimizer steps, accumulation, clipping.

Behind ``ctx.autocast()``, ``ctx.backward(loss)``, ``ctx.step_optimizer(optimizer)`` and
``ctx.accumulate(n)``. With accumulation over ``n`` micro-steps each optimizer counts its own
``step_optimizer`` calls and steps on every n-th; the loss is divided by ``n``, so n
micro-batches give the update of one batch n times larger. In a process group, the models
skip DDP's gradient all-reduce on the micro-steps before the last one of a cycle.
"""
import numbers
import weakref
from typing import Any, Callable, ContextManager, Dict, Iterator, List, Optional

import torch
from torch.nn.parallel import DistributedDataParallel

from ..distributed import is_distributed
from ..errors import PrecisionError
from . import precision
from .moves import leaves

Clip = Callable[[List[torch.Tensor]], Any]


class Steps:
    """The step helpers of one Context.

    Args:
        precision_name: One of ``params.PRECISIONS``.
        items: The Context's items (name -> item), read to find its DDP-wrapped models.
    """

    def __init__(self, precision_name: str, items: Dict[str, Any]) -> None:
        self.precision = precision_name
        self._items = items
        self._every = 1
        # Per optimizer: its step_optimizer calls since it last stepped, and the number of
        # ctx.backward() calls seen at its previous step_optimizer call.
        self._calls: weakref.WeakKeyDictionary[torch.optim.Optimizer, int] = (
            weakref.WeakKeyDictionary()
        )
        self._backwards_at: weakref.WeakKeyDictionary[torch.optim.Optimizer, int] = (
            weakref.WeakKeyDictionary()
        )
        self._backwards = 0
        self._checked: Optional[torch.device] = None
        self._sync_held_back = False
        self.scaler = (
            precision.ScalerState(self._calls.keys) if precision_name == "16-mixed" else None
        )

    # -- what the Context's methods call -------------------------------------------------

    def autocast(self, device: torch.device) -> ContextManager[Any]:
        self._check(device)
        self._set_grad_sync()
        return precision.autocast(self.precision, device)

    def backward(self, loss: torch.Tensor, device: torch.device, **options: Any) -> None:
        if not isinstance(loss, torch.Tensor):
            raise TypeError(f"ctx.backward() needs the loss tensor, got {type(loss).__name__}.")
        self._check(device)
        if self._every > 1:
            loss = loss / self._every
        if self.scaler is not None:
            self.scaler.settle()
            loss = self.scaler.scaler(device).scale(loss)
        loss.backward(**options)
        self._backwards += 1

    def step_optimizer(
        self,
        optimizer: torch.optim.Optimizer,
        device: torch.device,
        clip_grad_norm: Optional[float] = None,
        clip_grad_value: Optional[float] = None,
    ) -> bool:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                "ctx.step_optimizer() needs a torch.optim.Optimizer, got "
                f"{type(optimizer).__name__}."
            )
        clip = _clipper(clip_grad_norm, clip_grad_value)
        self._check(device)
        self._require_our_backward(optimizer)
        calls = self._calls.get(optimizer, 0) + 1
        if calls < self._every:
            self._calls[optimizer] = calls
            self._set_grad_sync()
            return False
        self._calls[optimizer] = 0
        stepped = self._step(optimizer, device, clip)
        optimizer.zero_grad(set_to_none=True)
        self._set_grad_sync()
        return stepped

    def mid_cycle(self) -> bool:
        """Whether some optimizer holds gradients of an unfinished accumulation cycle."""
        return any(self._calls.values())

    def accumulate(self, every: int) -> None:
        if isinstance(every, bool) or not isinstance(every, numbers.Integral) or every < 1:
            raise ValueError(
                f"ctx.accumulate() needs the number of micro-steps per optimizer step, an "
                f"int >= 1, got {every!r}; 1 steps on every call."
            )
        pending = [calls for calls in self._calls.values() if calls]
        if pending and every != self._every:
            raise PrecisionError(
                f"ctx.accumulate({every}) was called in the middle of an accumulation cycle "
                f"(an optimizer has {pending[0]} of its {self._every} micro-steps), whose "
                "gradients were divided by the old count; call it between cycles, once "
                "ctx.step_optimizer() has returned True."
            )
        self._every = int(every)
        self._set_grad_sync()

    # -- the parts -----------------------------------------------------------------------

    def _check(self, device: torch.device) -> None:
        if device != self._checked:
            precision.check_device(self.precision, device)
            self._checked = device

    def _require_our_backward(self, optimizer: torch.optim.Optimizer) -> None:
        """Refuse gradients that did not come from ctx.backward() where that matters."""
        needs_ours = self.scaler is not None or self._every > 1
        seen = self._backwards_at.get(optimizer, 0)
        self._backwards_at[optimizer] = self._backwards
        if not needs_ours or self._backwards > seen or not _has_grads(optimizer):
            return
        why = (
            "scales the loss at '16-mixed'"
            if self.scaler is not None
            else f"divides the loss by the {self._every} accumulated micro-steps"
        )
        raise PrecisionError(
            "ctx.step_optimizer() found gradients that did not come from ctx.backward(loss), "
            f"which {why}: stepping would apply wrongly sized gradients. Call "
            "ctx.backward(loss) instead of loss.backward()."
        )

    def _step(
        self, optimizer: torch.optim.Optimizer, device: torch.device, clip: Optional[Clip]
    ) -> bool:
        if not _has_grads(optimizer):
            # Nothing to apply; GradScaler would even refuse to step such an optimizer.
            return False

        def clip_gradients() -> None:
            clip(_parameters_with_grads(optimizer))

        clip_these = clip_gradients if clip is not None else None
        if self.scaler is not None:
            return self.scaler.step(optimizer, device, clip_these)
        if clip_these is not None:
            clip_these()
        optimizer.step()
        return True

    def _set_grad_sync(self) -> None:
        """Let DDP all-reduce gradients only in the backward of a cycle's last micro-step.

        DDP decides in its forward whether the coming backward all-reduces, by the flag its
        own ``no_sync()`` sets; a forward comes after a step_optimizer call, or first after
        autocast() or accumulate(), so the flag is set there.
        """
        if self._every == 1 and not self._sync_held_back:
            return
        if not is_distributed():
            return
        last = self._every - 1
        sync = self._every == 1 or any(calls == last for calls in self._calls.values())
        for module in self._ddp_modules():
            module.require_backward_grad_sync = sync
        self._sync_held_back = not sync

    def _ddp_modules(self) -> Iterator[DistributedDataParallel]:
        for value in self._items.values():
            for leaf in leaves(value):
                if isinstance(leaf, DistributedDataParallel):
                    yield leaf


def _has_grads(optimizer: torch.optim.Optimizer) -> bool:
    return any(
        param.grad is not None for group in optimizer.param_groups for param in group["params"]
    )


def _parameters_with_grads(optimizer: torch.optim.Optimizer) -> List[torch.Tensor]:
    return [
        param
        for group in optimizer.param_groups
        for param in group["params"]
        if param.grad is not None
    ]


def _clipper(norm: Optional[float], value: Optional[float]) -> Optional[Clip]:
    if norm is not None and value is not None:
        raise ValueError(
            f"ctx.step_optimizer() got clip_grad_norm={norm!r} and clip_grad_value={value!r}; "
            "give one of them: clipping by norm and by value in one step has no single order."
        )
    if norm is not None:
        _require_positive("clip_grad_norm", norm)
        return lambda params: torch.nn.utils.clip_grad_norm_(params, norm)
    if value is not None:
        _require_positive("clip_grad_value", value)
        return lambda params: torch.nn.utils.clip_grad_value_(params, value)
    return None


def _require_positive(name: str, number: Any) -> None:
    if isinstance(number, bool) or not isinstance(number, numbers.Real) or not number > 0:
        raise ValueError(
            f"ctx.step_optimizer() got {name}={number!r}; give a positive number, or None "
            "not to clip."
        )
