"""The Context: one registry for every object of a training session.

Assign models, optimizers, schedulers, loaders, recorders, tensors and plain values to a
Context's attributes; it then moves them to a device together, wraps them for distributed
training, and saves or restores all of them at once.
"""
import logging
import os
from typing import Any, ContextManager, Dict, Iterator, Optional, Union

import torch

from . import _seeding, _session
from ._context import automatic, guards, loading
from ._context import ddp as _ddp
from ._context import precision as _precision
from ._context.moves import leaves, move, own_cuda_device, target_device
from ._context.registry import ItemRegistry
from ._context.steps import Steps
from .devices import DeviceLike
from .distributed import get_rank

__all__ = ["Context"]

logger = logging.getLogger("pystematic.torch")


class Context:
    """A registry of the objects that make up a training session.

    Anything can be assigned as an attribute: ``nn.Module``, optimizers, LR schedulers,
    gradient scalers, :class:`SmartDataLoader`, :class:`Recorder`, random number generators
    (``torch.Generator``, NumPy's ``Generator`` and ``RandomState``, ``random.Random``),
    tensors, plain values (int, float, bool, str, None) and dicts, lists and tuples of
    these. Names that start
    with ``_`` are private: the context stores them as ordinary attributes and never moves
    or saves them. Items keep the order in which they were first assigned.

    The names of the context's own methods and properties (``to``, ``device``, ...) cannot
    hold items: assigning one raises ``AttributeError``. Items assigned after a move are not
    moved retroactively; register everything, then call :meth:`autotransform` (or
    :meth:`to`).

    Args:
        precision: What :meth:`autocast`, :meth:`backward` and :meth:`step_optimizer` train
            in: ``"32"`` (or ``32``), ``"bf16-mixed"`` or ``"16-mixed"``, see
            :doc:`precision`. By default the running experiment's ``--precision``, and
            ``"32"`` outside an experiment.

    Raises:
        ParameterError: ``precision`` names no precision we train in.

    Example:
        >>> ctx = Context()
        >>> ctx.epoch = 0
        >>> ctx.model = torch.nn.Linear(4, 2)
        >>> ctx.optimizer = torch.optim.SGD(ctx.model.parameters(), lr=0.1)
        >>> state = ctx.state_dict()
        >>> sorted(state)
        ['epoch', 'model', 'optimizer']
    """

    def __init__(self, precision: Optional[Union[str, int]] = None) -> None:
        object.__setattr__(self, "_items", ItemRegistry(self))
        object.__setattr__(self, "_device", torch.device("cpu"))
        object.__setattr__(self, "_guard", guards.Guard())
        # Checkpoint entries a non-strict load found no item for; registering one later warns.
        object.__setattr__(self, "_not_loaded", set())
        object.__setattr__(self, "_ranks_diverged", False)
        steps = Steps(_precision.resolve(precision), self._items)
        object.__setattr__(self, "_steps", steps)
        if steps.scaler is not None:
            # The fp16 loss scale is saved and restored with the items, under a name that no
            # item of the user's can have.
            self._items[_precision.SCALER_ENTRY] = steps.scaler
        _session.register_context(self)

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
        if name in self._not_loaded:
            logger.warning(
                "ctx.%s was registered after a checkpoint holding a state for it was loaded, "
                "so that state was not restored; register every item before "
                "ctx.autotransform() or ctx.load_state_dict().",
                name,
            )
        self._items[name] = value
        self._guard.watch(name, value)

    def __getattr__(self, name: str) -> Any:
        # Items are attributes already (see ItemRegistry): this runs only for the unknown.
        items = self.__dict__.get("_items", {})
        if name in items:
            return items[name]
        raise AttributeError(
            f"Context has no item {name!r}; registered items are: {', '.join(items) or 'none'}."
        )

    def __setstate__(self, state: Dict[str, Any]) -> None:
        # A copy of a Context: its registry has to mirror into the copy's attributes.
        self.__dict__.update(state)
        object.__setattr__(self, "_items", self._items.for_copy(self))

    def __delattr__(self, name: str) -> None:
        if name in self._items:
            self._guard.release(self._items.pop(name))
        else:
            object.__delattr__(self, name)

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def _mid_accumulation(self) -> bool:
        # A checkpoint holds no gradients: a state saved mid-cycle would lose the cycle's.
        return self._steps.mid_cycle()

    def _holds(self, obj: Any) -> bool:
        """Whether ``obj`` is one of the items, or inside one of the containers."""
        return any(leaf is obj for value in self._items.values() for leaf in leaves(value))

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
        target = target_device(device)
        for name, value in self._items.items():
            self._items[name] = move(value, target)
        self._device = target
        return self

    def cpu(self) -> "Context":
        """Move everything to the CPU; see :meth:`to`."""
        return self.to("cpu")

    def cuda(self, device: Optional[DeviceLike] = None) -> "Context":
        """Move everything to a CUDA device; see :meth:`to`.

        Args:
            device: A CUDA device or index. By default this process's own GPU: in a
                distributed run the one the launch bound it to (its local rank, modulo the
                GPUs it can see), otherwise the current device.

        Raises:
            DeviceError: CUDA is not available on this machine.
        """
        return self.to(own_cuda_device(device))

    # -- distributed ---------------------------------------------------------------------

    def ddp(self, sync_batchnorm: bool = False, **ddp_options: Any) -> "Context":
        """Prepare every item for distributed data-parallel training; return the context.

        Every module with trainable parameters is wrapped in ``DistributedDataParallel``
        (with ``device_ids`` on CUDA); frozen modules are left as they are. The wrapped
        module stays transparent: its attributes are reachable as before, every public
        method of its own class runs as DDP's forward (so ``ctx.model.compute_loss(x)``
        averages gradients like ``ctx.model(x)``), and its ``state_dict()`` keys are
        unchanged, so checkpoints move freely between distributed and single-process runs.
        Objects with a ``setup_distributed()`` method are told about the process group:
        recorders on ranks other than 0 fall silent and data loaders switch to sharded
        sampling.

        The first call also re-seeds each rank's global random number generators from the
        shared stream and the rank: until now every rank drew the same numbers (the same
        initialisation and data splits), from now on dropout and augmentation differ
        between ranks, repeatably. After :meth:`load_state_dict` of a state saved past that
        point, the restored per-rank streams are kept instead.

        Args:
            sync_batchnorm: Convert BatchNorm layers to ``SyncBatchNorm`` before wrapping,
                so batch statistics are computed over the global batch. CUDA only.
            **ddp_options: Passed on to ``DistributedDataParallel``, e.g.
                ``find_unused_parameters=True``.

        Raises:
            DistributedError: no process group has been initialized, or
                ``sync_batchnorm=True`` on a context that is not on CUDA.
        """
        _ddp.prepare(self._items, self._device, self._guard, sync_batchnorm, ddp_options)
        if not self._ranks_diverged:
            _seeding.diverge_ranks(get_rank())
            self._ranks_diverged = True
        return self

    # -- training steps (see _context/steps.py) ------------------------------------------

    def autocast(self) -> ContextManager[Any]:
        """Run the enclosed forward pass in the context's precision, on its current device.

        ``torch.autocast`` in bfloat16 (``bf16-mixed``) or float16 (``16-mixed``); nothing
        at ``32``. Leave the backward pass and the optimizer step outside it.

        Raises:
            PrecisionError: the context's device cannot run its precision: ``16-mixed``
                off CUDA, ``bf16-mixed`` on a GPU without bfloat16.
        """
        return self._steps.autocast(self._device)

    def backward(self, loss: torch.Tensor, **backward_options: Any) -> None:
        """``loss.backward()``, scaled as the precision and the accumulation need.

        At ``16-mixed`` the loss is multiplied by the current loss scale, so small float16
        gradients do not underflow (never at ``bf16-mixed`` or ``32``); with
        :meth:`accumulate` it is divided by the number of micro-steps.

        Args:
            loss: The scalar loss.
            **backward_options: Passed on to ``Tensor.backward`` (``retain_graph=True``...).

        Raises:
            PrecisionError: the context's device cannot run its precision.
        """
        self._steps.backward(loss, self._device, **backward_options)

    def step_optimizer(
        self,
        optimizer: torch.optim.Optimizer,
        clip_grad_norm: Optional[float] = None,
        clip_grad_value: Optional[float] = None,
    ) -> bool:
        """Step ``optimizer`` on the gradients of :meth:`backward`, then zero them.

        In order: unscale the gradients (``16-mixed``), clip them, step, unless a gradient
        is inf or NaN at ``16-mixed`` (the loss scale then shrinks and the step is skipped),
        and zero the optimizer's gradients. With :meth:`accumulate` only every n-th call
        for this optimizer does this; the calls before it only count. Call it once per
        optimizer that should step, e.g. for a generator and a discriminator.

        Args:
            optimizer: The optimizer to step.
            clip_grad_norm: Scale the gradients down so that their joint 2-norm is at most
                this (``torch.nn.utils.clip_grad_norm_``).
            clip_grad_value: Clamp every gradient element into ``[-value, value]``
                (``torch.nn.utils.clip_grad_value_``). Give one of the two at most.

        Returns:
            Whether the optimizer stepped: False on the micro-steps of an accumulation, on a
            step skipped for inf or NaN gradients, and when no parameter has a gradient.
            Step a learning-rate scheduler only when it is True.

        Raises:
            PrecisionError: the gradients did not come from :meth:`backward` where they must
                (at ``16-mixed``, or while accumulating), or the device cannot run the
                context's precision.
            ValueError: a clipping threshold is not a positive number, or both are given.
        """
        return self._steps.step_optimizer(optimizer, self._device, clip_grad_norm, clip_grad_value)

    def accumulate(self, micro_steps: int) -> "Context":
        """Accumulate gradients over ``micro_steps`` calls of :meth:`step_optimizer`.

        Each optimizer then steps on every ``micro_steps``-th call of its own, and
        :meth:`backward` divides the loss by ``micro_steps``: the update equals that of one
        batch ``micro_steps`` times larger. In a distributed run the models skip DDP's
        gradient all-reduce on the micro-steps before the last (``no_sync``). Call it
        after :meth:`autotransform`, and between cycles; ``accumulate(1)`` stops it.

        Returns:
            The context.

        Raises:
            ValueError: ``micro_steps`` is not an int >= 1.
            PrecisionError: an accumulation cycle with another count is under way.
        """
        self._steps.accumulate(micro_steps)
        return self

    # -- state ---------------------------------------------------------------------------

    def state_dict(self) -> Dict[str, Any]:
        """The state of every registered item, keyed by name, and of the random generators.

        Modules, optimizers, schedulers, scalers, loaders and recorders contribute their own
        ``state_dict()``; tensors, plain values and containers appear as they are. Items
        without state (functions, arbitrary objects) are left out. The reserved entry
        ``"_random_state"`` holds the global generators of Python, NumPy, torch (CPU and
        every CUDA device in use) of every rank, so a resumed run draws the same dropout
        masks and augmentations (see :doc:`resume`). Everything in it loads with
        ``torch.load(weights_only=True)`` as long as the items' own state dicts do.

        In a distributed run this gathers every rank's generator states on rank 0, which
        writes the checkpoint: every rank must call it, at the same point.

        Raises:
            DistributedError: on rank 0, when another rank did not call it within two
                minutes (or ``--distributed_timeout``, if shorter): it was called under
                ``if is_master():``.
        """
        return loading.capture_items(self._items, self._ranks_diverged)

    def load_state_dict(self, state: Dict[str, Any], strict: bool = True) -> None:
        """Restore every item from ``state``, in place, and plain values on the context.

        A failed load leaves every item as it was. Every item's saved state is checked
        first and all problems are reported together, before anything changes: modules and
        optimizers by keys, shapes and parameter groups; generators by loading the state
        into a fresh generator of their kind; objects with a ``check_state_dict(state)``
        method by that method; other objects (schedulers, scalers, loaders, recorders) by
        the form of their current ``state_dict()``. Items are then loaded one by one, each
        after a snapshot of its state (tensors copied to host memory); if one still raises,
        every item is put back from its snapshot. Tensors in ``state`` may live on any
        device: a CPU checkpoint loads into a CUDA context and the other way round.

        Last, each rank's global random number generators are put back into the states
        this rank saved (see :doc:`resume`), so the run continues drawing exactly where the
        saved one was; :meth:`ddp` then keeps these streams instead of re-seeding them.

        Args:
            state: A dict from :meth:`state_dict`, possibly read back from disk.
            strict: Refuse entries that are missing or unexpected, at the top level and
                inside modules and dicts. Shape and type mismatches are refused either way.

        Raises:
            StateDictError: listing every missing or unexpected entry and every mismatch by
                its full path, e.g. ``model.fc.weight: checkpoint has [10, 4], model has
                [10, 5]``; or naming the item whose own loader raised, once every item has
                been put back.
        """
        skipped, ranks_diverged = loading.load_items(self._items, state, strict)
        if ranks_diverged is not None:
            self._ranks_diverged = ranks_diverged
        guards.note_loaded()
        self._not_loaded.update(skipped)

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
        experiment they are the only source (defaults: no checkpoint, CUDA on, distributed
        when a process group exists). In that order:

        1. ``checkpoint`` (a file, or a run directory whose newest checkpoint is used) is
           loaded with :meth:`load_state_dict`;
        2. with ``cuda`` the context moves to this process's GPU; without CUDA on the
           machine it stays on the CPU and logs one warning;
        3. with ``distributed`` the context is prepared with :meth:`ddp`.

        Args:
            checkpoint: A checkpoint file or run directory to resume from.
            cuda: Move to this process's GPU when CUDA is available.
            distributed: Wrap for distributed data-parallel training. ``False`` in a
                distributed run says that you wrap the models yourself; otherwise the
                context refuses to train a registered model that is not wrapped.

        Returns:
            The context.

        Raises:
            CheckpointError: the checkpoint cannot be found or read.
            StateDictError: the checkpoint does not fit the context.
            DistributedError: ``distributed`` is set but no process group exists.
        """
        automatic.autotransform(self, checkpoint, cuda, distributed)
        return self
