"""Who this process is in a distributed run, and the checks made before anything starts.

Three ways to be started, told apart by the environment:

* our own launch: ``--distributed --nproc_per_node N`` makes the main process of each machine
  start N-1 more ranks through pystematic's subprocess mechanism;
* ``torchrun`` (or any launcher that sets RANK, WORLD_SIZE and LOCAL_RANK);
* an ``srun`` job step with more than one task (SLURM_PROCID, SLURM_STEP_NUM_TASKS,
  SLURM_LOCALID). An ``sbatch`` script's own batch step is not such a step: there our own
  launch starts the ranks.

In the last two we spawn nothing and take the ranks from the environment.
"""
import dataclasses
import logging
import re
from typing import List, Mapping, Optional

import torch

from ..errors import LaunchError

logger = logging.getLogger("pystematic.torch.launch")

DEFAULT_MULTI_NODE_PORT = 29500
# SLURM jobs that share a first node must not share a port: the default comes from the job
# id, within a range below Linux's ephemeral ports (32768 and up).
_SLURM_PORT_BASE, _SLURM_PORT_SPAN = 10000, 20000


@dataclasses.dataclass(frozen=True)
class RankInfo:
    """Where this process sits in the job."""

    rank: int
    local_rank: int
    world_size: int
    master_addr: str
    master_port: int  # 0: rank 0 picks a free port
    source: str  # "local", "torchrun" or "slurm"
    started_by_launcher: bool = False  # a rank our own launch started
    restart: int = 0  # torchrun's restart count
    machines: int = 1
    # Names the job where a launcher does (a SLURM job step): a rank that reaches another
    # job's rendezvous, because two jobs share a port, is refused instead of joining it.
    job: Optional[str] = None


def resolve_ranks(params: Mapping, environ: Mapping[str, str], started: bool) -> RankInfo:
    """Work out this process's ranks from the environment or the parameters.

    Args:
        params: The experiment's parameters.
        environ: The process environment.
        started: Whether our own launch started this process (it then carries its global
            rank in ``params["local_rank"]``).

    Raises:
        LaunchError: the environment's values contradict each other.
    """
    if started:
        return _from_our_launch(params, params["local_rank"])
    source = launcher_in(environ)
    if source == "torchrun":
        return _from_torchrun(environ)
    if source == "slurm":
        return _from_slurm(params, environ)
    return _from_our_launch(params, params["node_rank"] * params["nproc_per_node"])


def launcher_in(environ: Mapping[str, str]) -> Optional[str]:
    """``"torchrun"`` or ``"slurm"`` when that launcher started several ranks, else None."""
    if {"RANK", "WORLD_SIZE", "LOCAL_RANK"} <= environ.keys():
        return "torchrun"
    step_tasks = environ.get("SLURM_STEP_NUM_TASKS")
    if step_tasks is not None and {"SLURM_PROCID", "SLURM_LOCALID"} <= environ.keys():
        if _integer(environ, "SLURM_STEP_NUM_TASKS") > 1:
            return "slurm"
    return None


def _from_our_launch(params: Mapping, rank: int) -> RankInfo:
    nproc = params["nproc_per_node"]
    port = params["master_port"]
    if port is None:
        port = DEFAULT_MULTI_NODE_PORT if params["nnodes"] > 1 else 0
    return RankInfo(
        rank=rank,
        local_rank=rank - params["node_rank"] * nproc,
        world_size=params["nnodes"] * nproc,
        master_addr=params["master_addr"],
        master_port=port,
        source="local",
        started_by_launcher=rank != params["node_rank"] * nproc,
        machines=params["nnodes"],
    )


def _from_torchrun(environ: Mapping[str, str]) -> RankInfo:
    rank, world_size = _integer(environ, "RANK"), _integer(environ, "WORLD_SIZE")
    local_rank = _integer(environ, "LOCAL_RANK")
    _check_consistent("RANK", rank, "WORLD_SIZE", world_size, "LOCAL_RANK", local_rank)
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if name not in environ:
            raise LaunchError(
                f"RANK and WORLD_SIZE are set but {name} is not; start the job with torchrun, "
                f"or set {name} for every process."
            )
    restart = int(environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
    machines = int(environ.get("GROUP_WORLD_SIZE", "1") or 1)
    return RankInfo(rank, local_rank, world_size, environ["MASTER_ADDR"],
                    _integer(environ, "MASTER_PORT"), "torchrun", restart=restart,
                    machines=machines)  # fmt: skip


def _from_slurm(params: Mapping, environ: Mapping[str, str]) -> RankInfo:
    rank, world_size = _integer(environ, "SLURM_PROCID"), _integer(environ, "SLURM_STEP_NUM_TASKS")
    local_rank = _integer(environ, "SLURM_LOCALID")
    _check_consistent("SLURM_PROCID", rank, "SLURM_STEP_NUM_TASKS", world_size, "SLURM_LOCALID",
                      local_rank)  # fmt: skip
    address = environ.get("MASTER_ADDR")
    nodelist = environ.get("SLURM_STEP_NODELIST") or environ.get("SLURM_JOB_NODELIST")
    nodelist = nodelist or environ.get("SLURM_NODELIST")
    if address is None:
        if nodelist is None:
            raise LaunchError(
                "A SLURM job step needs MASTER_ADDR or SLURM_STEP_NODELIST to find its first "
                "node; run the script with srun inside the allocation."
            )
        address = first_host(nodelist)
    port = params["master_port"]
    if port is None and "MASTER_PORT" in environ:
        port = _integer(environ, "MASTER_PORT")
    if port is None:
        port = slurm_default_port(environ)
    machines = int(environ.get("SLURM_STEP_NUM_NODES") or environ.get("SLURM_NNODES") or 1)
    job_id = _slurm_job_id(environ)
    job = None if job_id is None else f"SLURM job {job_id} step {environ.get('SLURM_STEP_ID')}"
    return RankInfo(rank, local_rank, world_size, address, port, "slurm", machines=machines,
                    job=job)  # fmt: skip


def slurm_default_port(environ: Mapping[str, str]) -> int:
    """A port for this SLURM job: jobs that share a node get different ones."""
    job_id = _slurm_job_id(environ)
    if job_id is None or not job_id.isdigit():
        return DEFAULT_MULTI_NODE_PORT
    return _SLURM_PORT_BASE + int(job_id) % _SLURM_PORT_SPAN


def _slurm_job_id(environ: Mapping[str, str]) -> Optional[str]:
    return environ.get("SLURM_JOB_ID") or environ.get("SLURM_JOBID")


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list such as ``gpu[003-005,010],cpu01``."""
    match = re.match(r"^([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not match:
        raise LaunchError(f"Cannot read a host name from the SLURM node list {nodelist!r}.")
    prefix, ranges = match.groups()
    if ranges is None:
        return prefix
    first = ranges.split(",")[0].split("-")[0]
    return prefix + first


def _integer(environ: Mapping[str, str], name: str) -> int:
    try:
        return int(environ[name])
    except ValueError:
        raise LaunchError(f"{name}={environ[name]!r} is not an integer.") from None


def _check_consistent(rank_name, rank, size_name, size, local_name, local_rank) -> None:
    problems: List[str] = []
    if size < 1:
        problems.append(f"{size_name}={size} must be at least 1")
    if not 0 <= rank < max(size, 1):
        problems.append(f"{rank_name}={rank} must be in 0..{size - 1} for {size_name}={size}")
    if not 0 <= local_rank <= max(rank, 0):
        problems.append(f"{local_name}={local_rank} must be in 0..{rank_name} ({rank})")
    if problems:
        raise LaunchError("Inconsistent distributed environment: " + "; ".join(problems) + ".")


def check_not_distributed(params: Mapping, environ: Mapping[str, str]) -> List[str]:
    """For a run without ``--distributed``: refuse a launcher's ranks, list what is ignored.

    Returns:
        Warnings about parameters that have no effect without ``--distributed``.

    Raises:
        LaunchError: torchrun or srun started several processes, each of which would train
            alone on the whole data.
    """
    source = launcher_in(environ)
    if source == "torchrun" and environ.get("WORLD_SIZE", "1") != "1":
        raise LaunchError(
            f"torchrun started {environ['WORLD_SIZE']} processes but --distributed is off, so "
            "each would train alone on all the data; add --distributed."
        )
    if source == "slurm":
        raise LaunchError(
            f"srun started {environ['SLURM_STEP_NUM_TASKS']} tasks but --distributed is off, "
            "so each would train alone on all the data; add --distributed (or, for independent "
            "runs, use a job array: sbatch --array)."
        )
    ignored = [f"{name}={params[name]}" for name in ("nproc_per_node", "nnodes")
               if params[name] != 1]  # fmt: skip
    if ignored:
        return [
            f"{' and '.join(ignored)} has no effect without --distributed: this run is one "
            "process. Add --distributed to start the ranks."
        ]
    return []


def choose_backend(use_cuda: bool) -> str:
    return "nccl" if use_cuda and torch.cuda.is_available() else "gloo"


def check_gpus(info: RankInfo, nproc_per_node: int, use_cuda: bool) -> Optional[torch.device]:
    """Bind this rank to its GPU before anything else touches CUDA; None on the CPU.

    The GPU is ``local_rank % device_count()``: with one visible GPU per task (SLURM's
    ``--gpus-per-task=1``) every rank uses the one it sees.

    Raises:
        LaunchError: our own launch asks for more local ranks than there are visible GPUs.
    """
    if not (use_cuda and torch.cuda.is_available()):
        return None
    visible = torch.cuda.device_count()
    if info.source == "local" and nproc_per_node > visible:
        raise LaunchError(
            f"nproc_per_node={nproc_per_node} but only {visible} GPU(s) are visible; use "
            f"--nproc_per_node {visible} or fewer, or --no-cuda to run the ranks on the CPU."
        )
    device = torch.device("cuda", info.local_rank % visible)
    torch.cuda.set_device(device)
    return device


def ranks_started_elsewhere(info: RankInfo) -> List[int]:
    """The ranks a launcher other than this process started, which may be waiting now."""
    if info.source != "local":
        return list(range(1, info.world_size))
    # Our own launcher starts each machine's other ranks only once the job forms.
    per_machine = info.world_size // max(info.machines, 1)
    return [machine * per_machine for machine in range(1, info.machines)]
