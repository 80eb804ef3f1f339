"""A distributed job's life in this process: start ranks, join, supervise, end.

Called from the plugin's experiment hooks; see ``_launch`` for who we are and
``_supervise`` for how failures end the job.
"""
import dataclasses
import logging
import os
from typing import Optional

from .. import _session
from ..errors import DistributedError
from . import _launch, _preemption
from ._supervise import Supervisor, become_group_leader, kill_children

logger = logging.getLogger("pystematic.torch.launch")

_supervisor: Optional[Supervisor] = None
_children: dict = {}


def start(params: dict) -> None:
    """Join (and, for our own launch, first start) the job's process group.

    Raises:
        DistributedError: inconsistent environment, too few GPUs, or a busy master port.
    """
    global _supervisor
    import pystematic

    is_subprocess = pystematic.is_subprocess()
    if is_subprocess:
        become_group_leader()
    info = _launch.resolve_ranks(params, os.environ, is_subprocess)
    use_cuda = params["cuda"]
    _launch.check_gpus(params["nproc_per_node"], info.local_rank, use_cuda)
    starts_children = info.source == "local" and not is_subprocess
    if starts_children:
        port = info.master_port
        if info.rank == 0:
            if port == 0:
                port = _launch.pick_free_port(info.master_addr)
            else:
                _launch.check_port_is_free(info.master_addr, port)
        info = dataclasses.replace(info, master_port=port)
        # The children read the chosen port from their parameters.
        params["master_port"] = port
        for local_rank in range(1, params["nproc_per_node"]):
            _children[info.rank + local_rank] = pystematic.launch_subprocess(master_port=port)
    elif info.source != "local":
        logger.info(
            "Started by %s: rank %d of %d; --nproc_per_node and --nnodes are not used.",
            info.source, info.rank, info.world_size,
        )  # fmt: skip

    backend = _launch.choose_backend(use_cuda)
    try:
        _launch.join_process_group(info, backend, params["distributed_timeout"])
    except Exception as error:
        kill_children(_children.values())
        _children.clear()
        raise DistributedError(
            f"Rank {info.rank} could not join the process group at "
            f"{info.master_addr}:{info.master_port}: {error}"
        ) from error
    logger.debug("Rank %d of %d joined (%s).", info.rank, info.world_size, backend)
    _supervisor = Supervisor(
        rank=info.rank,
        children=dict(_children),
        watch_parent=is_subprocess,
        cleanup=_session.end,
    )
    _supervisor.start()
    _preemption._install()


def finish(error: Optional[BaseException]) -> None:
    """End this rank: on success wait for the others and leave the group cleanly."""
    global _supervisor
    if _supervisor is None:
        return
    if error is not None:
        return  # handled after pystematic has logged it, in fail()
    import torch.distributed as dist

    # Barrier, stop watching, barrier: no rank may leave (rank 0 takes the store with it)
    # while another is still polling the store.
    dist.barrier()
    _supervisor.stop()
    dist.barrier()
    for child in _children.values():
        child.join()
    _children.clear()
    _supervisor = None
    _preemption._uninstall()
    _launch.leave_process_group()


def fail(error: Optional[BaseException]) -> None:
    """After a failed experiment: show the traceback once, stop every rank, exit non-zero."""
    if error is None or _supervisor is None:
        return
    _supervisor.stop()
    _supervisor.fail_with_exception(error)
