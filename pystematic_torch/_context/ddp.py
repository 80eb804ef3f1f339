"""Preparing a Context's items for distributed data-parallel training, behind ``ctx.ddp()``.

Trainable modules are wrapped in ``TransparentDDP``; anything with a ``setup_distributed()``
method (recorders, data loaders) is told about the process group. Re-seeding each rank's
random generators stays with the Context, which knows whether its streams already diverged.
"""
from typing import Any, Dict

import torch
from torch import nn

from ..distributed import is_distributed
from ..distributed._ddp import TransparentDDP
from ..errors import DistributedError
from .guards import Guard
from .moves import leaves, map_leaves


def prepare(
    items: Dict[str, Any],
    device: torch.device,
    guard: Guard,
    sync_batchnorm: bool,
    ddp_options: Dict[str, Any],
) -> None:
    """Wrap the trainable modules in ``items`` (updated in place) and set up the rest.

    Args:
        items: The Context's items (name -> item).
        device: The Context's device; on CUDA it becomes the wrappers' ``device_ids``.
        guard: The Context's guard, which stops watching a module once it is wrapped.
        sync_batchnorm: Convert BatchNorm layers to ``SyncBatchNorm`` before wrapping.
        ddp_options: Passed on to ``DistributedDataParallel``.

    Raises:
        DistributedError: no process group has been initialized, or ``sync_batchnorm`` on
            a device that is not CUDA.
    """
    if not is_distributed():
        raise DistributedError(
            "Context.ddp() needs an initialized process group; run the experiment with "
            "--distributed, or call torch.distributed.init_process_group() first."
        )
    if sync_batchnorm and device.type != "cuda":
        raise DistributedError(
            f"Context.ddp(sync_batchnorm=True) needs the context on CUDA (it is on "
            f"{device}), because torch's SyncBatchNorm only runs on GPUs; call "
            "ctx.cuda() first, or leave sync_batchnorm off on the CPU."
        )
    device_ids = [device.index] if device.type == "cuda" else None

    def wrap(module: nn.Module) -> nn.Module:
        if isinstance(module, TransparentDDP):
            return module
        if not any(param.requires_grad for param in module.parameters()):
            return module
        guard.release(module)
        if sync_batchnorm:
            module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
        return TransparentDDP(module, device_ids=device_ids, **ddp_options)

    for name, value in items.items():
        items[name] = map_leaves(value, nn.Module, wrap)
    for value in items.values():
        for leaf in leaves(value):
            setup = getattr(leaf, "setup_distributed", None)
            if callable(setup) and not isinstance(leaf, type):
                setup()
