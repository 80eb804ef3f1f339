"""Mixed precision for a Context: what a device can run, autocast, and the fp16 loss scale.

``32`` trains in float32 and needs nothing. ``bf16-mixed`` runs the forward pass under
``torch.autocast`` in bfloat16; bfloat16 has float32's range, so gradients need no scaling.
``16-mixed`` runs it in float16 on a CUDA GPU, where small gradients underflow unless the
loss is multiplied by a large scale before ``backward`` and the gradients divided by it
before the step: :class:`ScalerState` holds that scale (a ``torch.amp.GradScaler`` once the
device is known) and is registered on the Context under :data:`SCALER_ENTRY`, so the scale
is saved and restored with everything else.
"""
import contextlib
import functools
import logging
import math
import numbers
import weakref
from typing import Any, Callable, ContextManager, Dict, Iterable, Mapping, Optional, Set, Tuple

import torch

from .. import _session
from .._precision_names import parse_precision
from ..errors import PrecisionError

logger = logging.getLogger("pystematic.torch")

#: The Context's own entry for the loss scale: not a valid attribute name, so no item of the
#: user's can take it.
SCALER_ENTRY = "precision.scaler"
_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def resolve(precision: Any) -> str:
    """The precision a new Context trains in: ``precision``, else the running experiment's
    ``--precision``, else ``"32"``.

    Raises:
        ParameterError: ``precision`` names no precision we train in.
    """
    if precision is None:
        params = _session.current_params() or {}
        precision = params.get("precision", "32")
    return parse_precision(precision)


def device_supports_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes in bfloat16 natively: the one question asked of the hardware.

    GPUs before Ampere only emulate bfloat16, many times slower than float16, so they count
    as without it. CPU autocast runs bfloat16 on every CPU torch supports.
    """
    if device.type == "cuda":
        with torch.cuda.device(device):
            return torch.cuda.is_bf16_supported(including_emulation=False)
    return True


def check_device(precision: str, device: torch.device) -> None:
    """Refuse a precision that ``device`` cannot run, saying what to use instead.

    Raises:
        PrecisionError: ``16-mixed`` off CUDA, ``bf16-mixed`` without bfloat16 support, or a
            device for which torch has no autocast.
    """
    if precision == "32":
        return
    if precision == "16-mixed" and device.type != "cuda":
        raise PrecisionError(
            f"precision '16-mixed' needs a CUDA GPU, but the context is on {device}; use "
            "'bf16-mixed' there (--precision bf16-mixed, or Context(precision='bf16-mixed')), "
            "or move the context to a GPU first (ctx.autotransform() with --cuda, or ctx.cuda())."
        )
    if not torch.amp.is_autocast_available(device.type):
        raise PrecisionError(
            f"precision {precision!r} needs torch.autocast, which torch does not offer for "
            f"{device.type} devices (the context is on {device}); use precision '32' there."
        )
    if precision == "bf16-mixed" and not device_supports_bf16(device):
        alternatives = (
            "'16-mixed' (float16 with loss scaling) or '32'" if device.type == "cuda" else "'32'"
        )
        raise PrecisionError(
            f"precision 'bf16-mixed' needs bfloat16 support, which {_describe(device)} lacks; "
            f"use {alternatives} instead (--precision, or Context(precision=...))."
        )


def autocast(precision: str, device: torch.device) -> ContextManager[Any]:
    """``torch.autocast`` for ``precision`` on ``device``; nothing at ``32``."""
    if precision == "32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=_DTYPES[precision])


def reconcile(items: Mapping[str, Any], state: Mapping[str, Any]) -> Tuple[Mapping, Set[str]]:
    """Let a run resume a checkpoint written at another precision.

    Only ``16-mixed`` runs hold a loss scale. A checkpoint's scale is left out where this run
    needs none, and a ``16-mixed`` run resuming a checkpoint without one starts from the
    initial scale, as a new run does.

    Returns:
        The state to load, and the names the context may miss in it.
    """
    ours, theirs = SCALER_ENTRY in items, SCALER_ENTRY in state
    if theirs and not ours:
        logger.info(
            "The checkpoint holds the loss scale of a '16-mixed' run; this run's precision "
            "needs none, so it is left out."
        )
        return {name: value for name, value in state.items() if name != SCALER_ENTRY}, set()
    if ours and not theirs:
        logger.info(
            "The checkpoint holds no loss scale (it was written at another precision): this "
            "'16-mixed' run starts from the initial scale."
        )
        return state, {SCALER_ENTRY}
    return state, set()


@functools.cache
def _initial_state() -> Dict[str, Any]:
    # What a new GradScaler starts from, as this torch version saves it.
    return torch.amp.GradScaler("cpu").state_dict()


class ScalerState:
    """The loss scale of a ``16-mixed`` run, registered on the Context as an item.

    Before the device is known it is the state a ``GradScaler`` will start from (the initial
    one, or a checkpoint's); once the context is on a GPU it is that ``GradScaler``.

    ``scaler.update()`` must come after every optimizer that uses gradients of one scaled
    backward has stepped: two optimizers sharing a loss unscale with the same scale. So it
    runs when it is next needed: at the next scaled backward, before an optimizer steps a
    second time, and before the state is read. Should the scale change then while other
    optimizers' gradients are still accumulating, those are multiplied by the ratio (a power
    of two: exact), so every gradient always carries the current scale.

    Args:
        optimizers: Returns the optimizers the Context has stepped or is accumulating for.
    """

    def __init__(self, optimizers: Callable[[], Iterable[torch.optim.Optimizer]]) -> None:
        self._optimizers = optimizers
        self._start: Dict[str, Any] = dict(_initial_state())
        self._scaler: Optional[torch.amp.GradScaler] = None
        self._device_type: Optional[str] = None
        self._stepped: weakref.WeakSet[torch.optim.Optimizer] = weakref.WeakSet()

    def scaler(self, device: torch.device) -> torch.amp.GradScaler:
        """The GradScaler for ``device``, made from the current state on first use."""
        if self._scaler is None or self._device_type != device.type:
            scaler = torch.amp.GradScaler(device.type)
            scaler.load_state_dict(self.state_dict())
            self._scaler, self._device_type = scaler, device.type
        return self._scaler

    def to(self, device: torch.device) -> "ScalerState":
        """Called when the context moves: on a GPU the scaler is made for it now."""
        if device.type == "cuda":
            self.scaler(device)
        return self

    def step(
        self,
        optimizer: torch.optim.Optimizer,
        device: torch.device,
        clip: Optional[Callable[[], None]] = None,
    ) -> bool:
        """Unscale, clip, and step ``optimizer`` unless its gradients hold inf or NaN.

        Returns:
            Whether the optimizer stepped.
        """
        if optimizer in self._stepped:
            self.settle()
        scaler = self.scaler(device)
        if clip is not None:
            scaler.unscale_(optimizer)
            clip()
        stepped = []
        # GradScaler.step returns what optimizer.step returns, None whether it ran or not;
        # a hook tells.
        handle = optimizer.register_step_post_hook(lambda *args: stepped.append(True))
        try:
            scaler.step(optimizer)
        finally:
            handle.remove()
        self._stepped.add(optimizer)
        return bool(stepped)

    def settle(self) -> None:
        """Apply the scale update owed by the optimizers stepped since the last one."""
        if self._scaler is None or not self._stepped:
            return
        # Stepped optimizers' gradients were zeroed; only the others' can be in flight.
        in_flight = [
            param.grad
            for optimizer in self._optimizers()
            if optimizer not in self._stepped
            for group in optimizer.param_groups
            for param in group["params"]
            if param.grad is not None
        ]
        before = self._scaler.get_scale() if in_flight else None
        self._scaler.update()
        self._stepped = weakref.WeakSet()
        if in_flight:
            ratio = self._scaler.get_scale() / before
            if ratio != 1.0:
                with torch.no_grad():
                    for grad in {id(grad): grad for grad in in_flight}.values():
                        grad.mul_(ratio)

    # -- the item's state ----------------------------------------------------------------

    def state_dict(self) -> Dict[str, Any]:
        """The scaler's state: plain floats and ints, loadable with ``weights_only=True``."""
        if self._scaler is None:
            return dict(self._start)
        self.settle()
        return self._scaler.state_dict()

    def check_state_dict(self, state: Any) -> None:
        """Raise ValueError, changing nothing, unless ``state`` is a GradScaler's state."""
        if not isinstance(state, Mapping):
            raise ValueError(f"a loss scale's state is a dict, got {type(state).__name__}")
        missing = sorted(set(_initial_state()) - set(state))
        if missing:
            raise ValueError(f"missing from the checkpoint: {', '.join(missing)}")
        problems = [
            f"{key} must be {allowed}, got {state[key]!r}"
            for key, (fits, allowed) in _FIELDS.items()
            if key in state and not fits(state[key])
        ]
        if problems:
            raise ValueError("; ".join(problems))

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from ``state``; a GradScaler that exists is replaced by one made from it."""
        self.check_state_dict(state)
        self._start = dict(state)
        self._stepped = weakref.WeakSet()
        device_type, self._scaler = self._device_type, None
        if device_type is not None:
            self.scaler(torch.device(device_type))


def _real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _count(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


_FIELDS = {
    "scale": (lambda v: _real(v) and v > 0, "a positive number"),
    "growth_factor": (lambda v: _real(v) and v > 1, "a number above 1"),
    "backoff_factor": (lambda v: _real(v) and 0 < v < 1, "a number between 0 and 1"),
    "growth_interval": (lambda v: _count(v) and v >= 1, "an integer >= 1"),
    "_growth_tracker": (lambda v: _count(v) and v >= 0, "an integer >= 0"),
}


def _describe(device: torch.device) -> str:
    if device.type == "cuda" and torch.cuda.is_available():
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)
