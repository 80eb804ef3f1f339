"""``ranks.json``: who took part in a distributed run, where, and started by what."""
import json
import os
import pathlib
import socket

from . import get_rank
from ._launch import RankInfo

RANKS_FILE = "ranks.json"
_LAUNCHERS = {"local": "pystematic-torch", "torchrun": "torchrun", "slurm": "srun"}


def write(output_dir, info: RankInfo, port: int) -> None:
    """Write ``ranks.json`` (a collective: every rank calls it; rank 0 writes).

    It records who took part, where, and started by what.
    """
    from . import gather_to_master

    here = {"rank": get_rank(), "host": socket.gethostname(), "pid": os.getpid(),
            "local_rank": info.local_rank}  # fmt: skip
    ranks = gather_to_master(here)
    if ranks is None:
        return
    record = {
        "world_size": len(ranks),
        "launcher": _LAUNCHERS[info.source],
        "master": f"{info.master_addr}:{port}",
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "torchrun_restart": info.restart if info.source == "torchrun" else None,
        "ranks": ranks,
    }
    path = pathlib.Path(str(output_dir)) / RANKS_FILE
    temporary = path.with_name(f".{RANKS_FILE}.tmp")
    temporary.write_text(json.dumps(record, indent=1))
    os.replace(temporary, path)
