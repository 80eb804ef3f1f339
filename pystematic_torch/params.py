"""The parameters every experiment gets once the plugin is installed."""
import pathlib
from typing import Callable, List, Optional

import pystematic.core

from ._precision_names import parse_precision
from .errors import ParameterError

__all__ = ["default_parameters", "validate_parameters", "ENVIRONMENT_VARIABLES"]

#: The only environment variables that feed our parameters (pystematic's own parameters, and
#: the user's, keep pystematic's rule: the parameter's name in capitals).
ENVIRONMENT_VARIABLES = ("NPROC_PER_NODE", "NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT")
#: torch's own default for gloo and NCCL process groups: 30 minutes.
DEFAULT_DISTRIBUTED_TIMEOUT = 1800.0


class _IntInRange:
    """A parameter type that converts to int and refuses values outside [low, high]."""

    def __init__(self, name: str, low: int, high: Optional[int] = None, allowed: str = ""):
        self.name, self.low, self.high = name, low, high
        self.allowed = allowed or (f">= {low}" if high is None else f"in {low}..{high}")

    def __call__(self, value) -> int:
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise ParameterError(f"{self.name} must be an integer, got {value!r}.") from None
        if number < self.low or (self.high is not None and number > self.high):
            raise ParameterError(f"{self.name} must be {self.allowed}, got {number}.")
        return number


class _FloatAbove:
    """A parameter type that converts to float and refuses values <= low."""

    def __init__(self, name: str, low: float):
        self.name, self.low = name, low

    def __call__(self, value) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ParameterError(f"{self.name} must be a number, got {value!r}.") from None
        if not number > self.low:
            raise ParameterError(f"{self.name} must be > {self.low}, got {number}.")
        return number


def _parameter(
    name: str, type: Callable = str, envvar: Optional[str] = None, **kwargs
) -> pystematic.core.Parameter:
    param = pystematic.core.Parameter(name=name, type=type, envvar=envvar, **kwargs)
    if envvar is None:
        # pystematic would read an environment variable named after the parameter: CUDA and
        # CHECKPOINT are common names with other meanings (CUDA=/usr/local/cuda), so only the
        # documented variables feed our parameters.
        param.envvar = False
    # Users type both spellings (torchrun documents --nproc-per-node, older launchers
    # --nproc_per_node), so each multi-word name answers to both.
    underscore_flag = f"--{name}"
    if "_" in name and underscore_flag not in param.flags:
        param.flags.append(underscore_flag)
    return param


def default_parameters() -> List[pystematic.core.Parameter]:
    """Build fresh parameter objects; each experiment gets its own."""
    return [
        _parameter(
            "checkpoint",
            type=pathlib.Path,
            default=None,
            help="What to resume from: a checkpoint file; a run directory (the last Context "
            "checkpoint it wrote); or 'latest', the newest run of this experiment, continued in "
            "its own directory, or a new run when there is none. Context.autotransform() "
            "loads it.",
        ),
        _parameter(
            "cuda",
            type=bool,
            is_flag=True,
            default=True,
            help="Move the Context to CUDA when a GPU is available; on a machine without one "
            "the run stays on the CPU and logs a warning. --no-cuda keeps it on the CPU.",
        ),
        _parameter(
            "distributed",
            type=bool,
            is_flag=True,
            default=False,
            help="Train with DistributedDataParallel: start --nproc_per_node local processes, "
            "or take the ranks from torchrun's or SLURM's environment.",
        ),
        _parameter(
            "nproc_per_node",
            type=_IntInRange("nproc_per_node", 1),
            default=1,
            envvar="NPROC_PER_NODE",
            help="Number of processes to run on this machine with --distributed; usually "
            "one per GPU.",
        ),
        _parameter(
            "nnodes",
            type=_IntInRange("nnodes", 1),
            default=1,
            envvar="NNODES",
            help="Number of machines taking part in a distributed run.",
        ),
        _parameter(
            "node_rank",
            type=_IntInRange("node_rank", 0),
            default=0,
            envvar="NODE_RANK",
            help="Index of this machine among the --nnodes machines, from 0.",
        ),
        _parameter(
            "master_addr",
            type=str,
            default="127.0.0.1",
            envvar="MASTER_ADDR",
            help="Address of the machine running node_rank 0, where every rank meets.",
        ),
        _parameter(
            "master_port",
            type=_IntInRange("master_port", 0, 65535, "in 1..65535, or 0 to pick a free port"),
            default=None,
            default_help="29500; a free port when --nnodes is 1",
            envvar="MASTER_PORT",
            help="TCP port on the master machine for the rendezvous; 0 picks a free one.",
        ),
        _parameter(
            "precision",
            type=parse_precision,
            default="32",
            help="Precision of Context.autocast(), backward() and step_optimizer(): 32 "
            "(float32), bf16-mixed (bfloat16 autocast, on CPUs and GPUs with bfloat16) or "
            "16-mixed (float16 autocast with loss scaling, on CUDA GPUs).",
        ),
        _parameter(
            "distributed_timeout",
            type=_FloatAbove("distributed_timeout", 0.0),
            default=DEFAULT_DISTRIBUTED_TIMEOUT,
            help="Seconds a rank waits for the others, at the start and in any collective, "
            "before giving up. A rank that fails or dies ends the job within seconds whatever "
            "this is; it only bounds waiting on a rank that hangs or whose machine vanished.",
        ),
    ]


def validate_parameters(params: dict) -> None:
    """Check the rules that involve more than one parameter.

    Raises:
        ParameterError: naming each parameter whose value is out of range.
    """
    problems = []
    if params["node_rank"] >= params["nnodes"]:
        problems.append(
            f"node_rank must be in 0..{params['nnodes'] - 1} for nnodes={params['nnodes']}, "
            f"got {params['node_rank']}"
        )
    if params["nnodes"] > 1 and params.get("master_port") == 0:
        problems.append(
            "master_port must be an explicit port in 1..65535 when nnodes > 1, since every "
            "machine has to know it in advance"
        )
    if problems:
        raise ParameterError("Invalid parameters: " + "; ".join(problems) + ".")
