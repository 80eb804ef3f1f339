"""The environment a sweep member starts with: the sweep's own, minus any launcher's job."""
import os
from typing import Dict, Mapping, Optional, Sequence

#: Variables through which launchers (torchrun, our own, MPI) and pystematic describe a job.
LAUNCHER_VARIABLES = frozenset({
    "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
    "ROLE_RANK", "ROLE_WORLD_SIZE", "ROLE_NAME", "MASTER_ADDR", "MASTER_PORT", "NODE_RANK",
    "NNODES", "NPROC_PER_NODE", "SUBPROCESS",
})  # fmt: skip
LAUNCHER_PREFIXES = ("SLURM_", "TORCHELASTIC_", "PMI_", "PMIX_", "OMPI_COMM_WORLD_")


def member_environment(
    base: Mapping[str, str], gpus: Optional[Sequence[str]], threads: Optional[int]
) -> Dict[str, str]:
    """``base`` without launcher variables, with the member's GPUs and thread count.

    Args:
        base: The sweep's own environment.
        gpus: Tokens for ``CUDA_VISIBLE_DEVICES`` (empty hides every GPU); None leaves it.
        threads: ``OMP_NUM_THREADS`` for the member, unless ``base`` sets it already.
    """
    environment = {
        name: value for name, value in base.items()
        if name not in LAUNCHER_VARIABLES and not name.startswith(LAUNCHER_PREFIXES)
    }  # fmt: skip
    if gpus is not None:
        environment["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    if threads is not None and "OMP_NUM_THREADS" not in base:
        environment["OMP_NUM_THREADS"] = str(threads)
    return environment


def threads_per_process(concurrent_processes: int) -> Optional[int]:
    """Share this process's CPUs among the processes a sweep runs at once, as torchrun does
    for its ranks: without it every process starts one thread per core and they thrash."""
    if concurrent_processes <= 1:
        return None
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    return max(1, cpus // concurrent_processes)
