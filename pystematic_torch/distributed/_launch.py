"""Who this process is in a distributed run, and joining the process group.

Three ways to be started, told apart by the environment:

* our own launch: ``--distributed --nproc_per_node N`` makes the main process local rank 0
  and starts N-1 more through pystematic's subprocess mechanism;
* ``torchrun`` (or any launcher that sets RANK, WORLD_SIZE and LOCAL_RANK);
* a SLURM job step with more than one task (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID).

In the last two we spawn nothing and take the ranks from the environment.
"""
import dataclasses
import datetime
import logging
import os
import re
import socket
from typing import List, Mapping

import torch
import torch.distributed as dist

from ..errors import DistributedError

logger = logging.getLogger("pystematic.torch.launch")

DEFAULT_MULTI_NODE_PORT = 29500


@dataclasses.dataclass(frozen=True)
class RankInfo:
    """Where this process sits in the job."""

    rank: int
    local_rank: int
    world_size: int
    master_addr: str
    master_port: int
    source: str  # "local", "torchrun" or "slurm"


def resolve_ranks(params: Mapping, environ: Mapping[str, str], is_subprocess: bool) -> RankInfo:
    """Work out this process's ranks from the environment or the parameters.

    Raises:
        DistributedError: the environment's values contradict each other.
    """
    if {"RANK", "WORLD_SIZE", "LOCAL_RANK"} <= environ.keys() and not is_subprocess:
        return _from_torchrun(environ)
    if {"SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"} <= environ.keys():
        if _integer(environ, "SLURM_NTASKS") > 1:
            return _from_slurm(params, environ)
    nproc, node_rank = params["nproc_per_node"], params["node_rank"]
    local_rank = params["local_rank"] if is_subprocess else 0
    port = params["master_port"]
    if port is None:
        port = DEFAULT_MULTI_NODE_PORT if params["nnodes"] > 1 else 0
    return RankInfo(
        rank=node_rank * nproc + local_rank,
        local_rank=local_rank,
        world_size=params["nnodes"] * nproc,
        master_addr=params["master_addr"],
        master_port=port,
        source="local",
    )


def _from_torchrun(environ: Mapping[str, str]) -> RankInfo:
    rank, world_size = _integer(environ, "RANK"), _integer(environ, "WORLD_SIZE")
    local_rank = _integer(environ, "LOCAL_RANK")
    _check_consistent("RANK", rank, "WORLD_SIZE", world_size, "LOCAL_RANK", local_rank)
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if name not in environ:
            raise DistributedError(
                f"RANK and WORLD_SIZE are set but {name} is not; start the job with torchrun, "
                f"or set {name} for every process."
            )
    return RankInfo(rank, local_rank, world_size, environ["MASTER_ADDR"],
                    _integer(environ, "MASTER_PORT"), "torchrun")  # fmt: skip


def _from_slurm(params: Mapping, environ: Mapping[str, str]) -> RankInfo:
    rank, world_size = _integer(environ, "SLURM_PROCID"), _integer(environ, "SLURM_NTASKS")
    local_rank = _integer(environ, "SLURM_LOCALID")
    _check_consistent("SLURM_PROCID", rank, "SLURM_NTASKS", world_size, "SLURM_LOCALID",
                      local_rank)  # fmt: skip
    address = environ.get("MASTER_ADDR")
    if address is None:
        if "SLURM_NODELIST" not in environ and "SLURM_JOB_NODELIST" not in environ:
            raise DistributedError(
                "A SLURM job step needs MASTER_ADDR or SLURM_NODELIST to find the first node."
            )
        address = first_host(environ.get("SLURM_NODELIST") or environ["SLURM_JOB_NODELIST"])
    port = params["master_port"] or DEFAULT_MULTI_NODE_PORT
    return RankInfo(rank, local_rank, world_size, address, port, "slurm")


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list such as ``gpu[003-005,010],cpu01``."""
    match = re.match(r"^([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not match:
        raise DistributedError(f"Cannot read a host name from SLURM_NODELIST={nodelist!r}.")
    prefix, ranges = match.groups()
    if ranges is None:
        return prefix
    first = ranges.split(",")[0].split("-")[0]
    return prefix + first


def _integer(environ: Mapping[str, str], name: str) -> int:
    try:
        return int(environ[name])
    except ValueError:
        raise DistributedError(f"{name}={environ[name]!r} is not an integer.") from None


def _check_consistent(rank_name, rank, size_name, size, local_name, local_rank) -> None:
    problems: List[str] = []
    if size < 1:
        problems.append(f"{size_name}={size} must be at least 1")
    if not 0 <= rank < max(size, 1):
        problems.append(f"{rank_name}={rank} must be in 0..{size - 1} for {size_name}={size}")
    if not 0 <= local_rank <= max(rank, 0):
        problems.append(f"{local_name}={local_rank} must be in 0..{rank_name} ({rank})")
    if problems:
        raise DistributedError(
            "Inconsistent distributed environment: " + "; ".join(problems) + "."
        )


def pick_free_port(address: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((address if address != "localhost" else "127.0.0.1", 0))
        return sock.getsockname()[1]


def check_port_is_free(address: str, port: int) -> None:
    """Refuse a master port that something on this machine already listens on.

    Raises:
        DistributedError: naming the port and the parameter to change.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("", port))
        except OSError:
            raise DistributedError(
                f"master_port {port} is already in use on this machine; pass --master_port "
                "with a free port, or --master_port 0 to pick one."
            ) from None


def choose_backend(use_cuda: bool) -> str:
    return "nccl" if use_cuda and torch.cuda.is_available() else "gloo"


def check_gpus(nproc_per_node: int, local_rank: int, use_cuda: bool) -> None:
    """Bind this rank to its own GPU before anything else touches CUDA.

    Raises:
        DistributedError: more local processes than visible GPUs with CUDA on.
    """
    if not (use_cuda and torch.cuda.is_available()):
        return
    visible = torch.cuda.device_count()
    if nproc_per_node > visible:
        raise DistributedError(
            f"nproc_per_node={nproc_per_node} but only {visible} GPU(s) are visible; use "
            f"--nproc_per_node {visible} or fewer, or --no-cuda to run the ranks on the CPU."
        )
    torch.cuda.set_device(local_rank)


def join_process_group(info: RankInfo, backend: str, timeout_s: float) -> None:
    os.environ.update(
        RANK=str(info.rank),
        LOCAL_RANK=str(info.local_rank),
        WORLD_SIZE=str(info.world_size),
        MASTER_ADDR=info.master_addr,
        MASTER_PORT=str(info.master_port),
    )
    logger.debug("Joining %s process group as %s.", backend, info)
    dist.init_process_group(
        backend,
        init_method=f"tcp://{info.master_addr}:{info.master_port}",
        rank=info.rank,
        world_size=info.world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
    )


def leave_process_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()

