"""The automatic path, behind ``ctx.autotransform()``: load, move, wrap, as the run says.

The choices come from the running experiment's ``--checkpoint``, ``--cuda`` and
``--distributed`` parameters, overridden by the arguments; outside an experiment the
arguments are the only source.
"""
import logging
import os
from typing import Any, Optional, Union

import torch

from .. import _session
from ..checkpoint import load_checkpoint
from ..distributed import is_distributed

logger = logging.getLogger("pystematic.torch")


def autotransform(
    ctx: Any,
    checkpoint: Optional[Union[str, "os.PathLike[str]"]],
    cuda: Optional[bool],
    distributed: Optional[bool],
) -> None:
    """Load ``checkpoint`` into ``ctx``, move it to CUDA, wrap it for DDP, in that order.

    Args:
        ctx: The Context; only its public methods and its guard are used.
        checkpoint: A checkpoint file or run directory; ``None`` for ``--checkpoint``.
        cuda: Move to this process's GPU; ``None`` for ``--cuda`` (default on).
        distributed: Wrap for DDP; ``None`` for ``--distributed`` (default: whether a
            process group exists). ``False`` given explicitly means the user wraps.
    """
    params = _session.current_params() or {}
    if checkpoint is None:
        checkpoint = params.get("checkpoint")
    cuda = params.get("cuda", True) if cuda is None else cuda
    if distributed is None:
        distributed = params["distributed"] if "distributed" in params else is_distributed()
    elif not distributed:
        ctx._guard.wrapping_is_users = True

    if checkpoint is not None:
        ctx.load_state_dict(load_checkpoint(checkpoint))
    if cuda:
        if torch.cuda.is_available():
            ctx.cuda()
        else:
            logger.warning(
                "CUDA was requested but is not available on this machine; staying on the "
                "CPU. Pass --no-cuda to run on the CPU without this warning."
            )
    if distributed:
        ctx.ddp()
