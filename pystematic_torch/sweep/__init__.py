"""Parameter sweeps: one experiment run per parameter set, each in a process of its own.

Importing this package is cheap (no torch): the command line's ``--help`` passes through it.
"""
import collections
import dataclasses
import logging
import os
import pathlib
import signal
import sys
import threading
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .. import _run_record
from ..errors import DeviceError, Error, ParameterError
from . import _gpus, _processes

__all__ = ["run_parameter_sweep", "SweepResult", "SweepError"]

logger = logging.getLogger("pystematic.torch.sweep")

#: The status of a member the sweep never started, because it was stopped first.
NOT_STARTED = "not started"
_RESERVED = ("subprocess", "local_rank")  # set by pystematic for the processes it starts


class SweepError(Error, RuntimeError):
    """Some runs of a sweep did not finish; the others ran to their end.

    Attributes:
        results: One :class:`SweepResult` per parameter set, in the order given.
    """

    def __init__(self, message: str, results: Sequence["SweepResult"]) -> None:
        super().__init__(message)
        self.results = list(results)


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped the sweep; ``results`` says what each run had done by then."""

    def __init__(self, results: Sequence["SweepResult"]) -> None:
        super().__init__()
        self.results = list(results)


@dataclasses.dataclass(frozen=True)
class SweepResult:
    """How one run of a sweep ended.

    Attributes:
        params: The parameters given for this run, converted to their parameter types.
        status: ``"finished"``, ``"failed"`` (raised, exited non-zero or was killed),
            ``"preempted"``, ``"interrupted"`` or ``"not started"``.
        exit_code: The process's exit code, negative for a signal (-9: SIGKILL); None when
            it never started.
        run_dir: The run's output directory, None if the run died before creating it.
        duration_s: Seconds from the process's start to its end.
        gpus: The GPUs it was given (nvidia-smi indexes, or entries of the sweep's own
            ``CUDA_VISIBLE_DEVICES``); empty on the CPU.
        error: The exception's one-line message when the run raised.
    """

    params: Dict[str, Any]
    status: str
    exit_code: Optional[int]
    run_dir: Optional[pathlib.Path]
    duration_s: float
    gpus: Tuple[str, ...] = ()
    error: Optional[str] = None

    @property
    def finished(self) -> bool:
        return self.status == _run_record.FINISHED


def run_parameter_sweep(
    experiment: Any,
    list_of_params: Sequence[Mapping[str, Any]],
    max_num_processes: int = 1,
    num_gpus_per_process: Optional[int] = None,
    *,
    raise_on_failure: bool = True,
    stop_timeout: float = 30.0,
) -> List[SweepResult]:
    """Run ``experiment`` once per parameter dict, each in its own process, and wait for all.

    Every run starts in a fresh Python process with a clean environment: the variables
    through which launchers and schedulers describe a job (RANK, WORLD_SIZE, LOCAL_RANK,
    MASTER_*, NODE_RANK, NNODES, NPROC_PER_NODE, SLURM_*, TORCHELASTIC_*, PMI_*, ...) are
    removed, so a sweep started inside a cluster allocation or a distributed job does not
    mistake its runs for ranks, and each run gets its own ``CUDA_VISIBLE_DEVICES``: the
    least-used GPUs of those this process may use (fewest runs of this sweep on them, then
    least memory used by others), one per run, or ``nproc_per_node`` for a distributed run.
    A distributed run picks its own free port unless its parameters name one.

    A run that raises, exits non-zero or is killed does not stop the others. Ctrl-C
    interrupts every run (each ends as if Ctrl-C had been pressed in its terminal, so it
    flushes what it recorded), kills whatever is left after ``stop_timeout`` seconds and
    raises ``KeyboardInterrupt``. SIGTERM is passed on to every run's main process (so each
    saves its preemption checkpoint), except under SLURM, which signals every process of the
    job itself; the sweep then ends the way SIGTERM would have ended it.

    Args:
        experiment: A pystematic experiment defined at the top level of a module or script.
        list_of_params: One dict per run; :func:`pystematic.param_matrix` builds grids.
        max_num_processes: How many runs may be alive at once.
        num_gpus_per_process: GPUs for each run. None: one per rank when this process may
            use GPUs (none for runs with ``cuda=False``), and ``CUDA_VISIBLE_DEVICES`` left
            as it is otherwise; 0: hide every GPU.
        raise_on_failure: Raise :class:`SweepError` when a run did not finish, after all
            have ended; False returns the results instead.
        stop_timeout: Seconds runs get to end after Ctrl-C or SIGTERM before they are killed.

    Returns:
        One :class:`SweepResult` per parameter dict, in the order given.

    Raises:
        ParameterError: before anything starts: an unknown parameter name, an invalid
            value, ``max_num_processes < 1``, a multi-machine run, or two runs that may
            run at once on the same explicit ``master_port``; every problem is listed.
        DeviceError: before anything starts: more GPUs per run than this process may use.
        SweepError: a run did not finish (``raise_on_failure``), or the experiment cannot
            be found again by a new process; ``results`` holds every run's result.
        KeyboardInterrupt: Ctrl-C; every run has ended when it is raised, and its
            ``results`` attribute says how.

    Example:
        >>> results = pystematic.torch.run_parameter_sweep(
        ...     train, pystematic.param_matrix(lr=[0.1, 0.01], batch_size=[32, 64]),
        ...     max_num_processes=2)
    """
    members = _plan(experiment, list_of_params, max_num_processes, num_gpus_per_process)
    location = _locate(experiment)
    gpus = _assignable_gpus(members, num_gpus_per_process)
    from ._scheduler import Scheduler

    scheduler = Scheduler(experiment.name, members, location, gpus,
                          hand_out_gpus=bool(gpus) or num_gpus_per_process == 0,
                          max_processes=max_num_processes, stop_timeout=stop_timeout)  # fmt: skip
    with _SigtermStops() as terminated:
        try:
            scheduler.run()
        except _Terminated:
            terminated.append(signal.SIGTERM)
            scheduler.stop(signal.SIGTERM, forward="SLURM_JOB_ID" not in os.environ)
            return scheduler.results()
        except KeyboardInterrupt:
            scheduler.stop(signal.SIGINT, forward=True)
            raise SweepInterrupted(scheduler.results()) from None
        except BaseException:
            scheduler.stop(signal.SIGINT, forward=True)  # leave no process behind
            raise
    results = scheduler.results()
    failures = [(index, result) for index, result in enumerate(results) if not result.finished]
    if failures and raise_on_failure:
        raise SweepError(_summary(failures, len(results)), results)
    return results


class _Terminated(KeyboardInterrupt):
    """SIGTERM arrived. A KeyboardInterrupt, so that a second one while the runs are being
    stopped ends the wait at once, as a second Ctrl-C does."""


class _SigtermStops:
    """While the sweep runs, SIGTERM stops it. Afterwards SIGTERM gets its old meaning back
    and, if it arrived, is delivered again, so the process ends as it would have."""

    def __init__(self) -> None:
        self.signals: List[int] = []
        self.installed = False
        self.previous: Any = None

    def __enter__(self) -> List[int]:
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.getsignal(signal.SIGTERM)
            if self.previous is not signal.SIG_IGN:
                signal.signal(signal.SIGTERM, _raise_terminated)
                self.installed = True
        return self.signals

    def __exit__(self, *exc_info) -> None:
        if not self.installed:
            return
        # None: a handler installed outside Python; the default is the closest we can do.
        signal.signal(signal.SIGTERM, self.previous or signal.SIG_DFL)
        if self.signals:
            signal.raise_signal(signal.SIGTERM)


def _raise_terminated(signum, frame) -> None:
    raise _Terminated()


def _plan(experiment, list_of_params, max_num_processes, num_gpus_per_process) -> list:
    manager = getattr(experiment, "param_manager", None)
    if manager is None or not hasattr(experiment, "main_function"):
        raise TypeError(
            f"run_parameter_sweep needs a pystematic experiment, got {experiment!r}; decorate "
            "the main function with @pystematic.experiment."
        )
    if isinstance(list_of_params, Mapping) or not all(
        isinstance(params, Mapping) for params in list_of_params
    ):
        raise TypeError(
            "run_parameter_sweep needs a list of parameter dicts, one per run, such as "
            "pystematic.param_matrix(lr=[0.1, 0.01]) returns."
        )
    problems = []
    if not isinstance(max_num_processes, int) or max_num_processes < 1:
        problems.append(f"max_num_processes must be an int >= 1, got {max_num_processes!r}")
    if num_gpus_per_process is not None and (
        not isinstance(num_gpus_per_process, int) or num_gpus_per_process < 0
    ):
        problems.append(
            f"num_gpus_per_process must be None or an int >= 0, got {num_gpus_per_process!r}"
        )
    members, explicit_ports = [], collections.defaultdict(list)
    for index, given in enumerate(list_of_params):
        label = f"run #{index + 1} ({_processes.describe(given)})"
        reserved = [name for name in _RESERVED if name in given]
        if reserved:
            problems.append(f"{label}: {', '.join(reserved)} is set by pystematic itself")
            continue
        try:
            resolved = manager.from_dict(dict(given), env=False, fail_on_unknown_values=True)
        except Exception as error:  # noqa: BLE001 - pystematic's own validation, collected
            problems.append(f"{label}: {str(error).rstrip('.')}")
            continue
        if resolved.get("nnodes", 1) > 1:
            problems.append(f"{label}: nnodes={resolved['nnodes']}; a sweep runs on one machine")
        ranks = resolved.get("nproc_per_node", 1) if resolved.get("distributed") else 1
        if resolved.get("distributed") and given.get("master_port"):
            explicit_ports[resolved["master_port"]].append(index + 1)
        uses_cuda = resolved.get("cuda", True)
        wanted = num_gpus_per_process
        if wanted is None:
            wanted = ranks if uses_cuda else 0
        elif uses_cuda and 0 < wanted < ranks:
            problems.append(
                f"{label}: a distributed run with nproc_per_node={ranks} needs {ranks} GPUs, "
                f"but num_gpus_per_process={wanted}"
            )
        params = {name: resolved[name] for name in given}
        members.append(_processes.Member(index, params, gpu_count=wanted, distributed_ranks=ranks))
    if max_num_processes != 1:
        for port, runs in explicit_ports.items():
            if len(runs) > 1:
                problems.append(
                    f"runs {', '.join(f'#{run}' for run in runs)} set master_port={port} and "
                    "may run at the same time; leave master_port out so each picks a free one"
                )
    if problems:
        raise ParameterError("Invalid sweep, nothing was started: " + "; ".join(problems) + ".")
    return members


def _assignable_gpus(members, num_gpus_per_process) -> list:
    """The GPUs to hand out; empty when no run wants one or there are none to hand out.

    Raises:
        DeviceError: a run wants more GPUs than this process may use.
    """
    wanted = max((member.gpu_count for member in members), default=0)
    if wanted == 0:
        return []
    available = _gpus.inventory()
    if num_gpus_per_process is None and not available:
        for member in members:  # a CPU machine: CUDA_VISIBLE_DEVICES stays as it is
            member.gpu_count = 0
        return []
    if wanted > len(available):
        names = ", ".join(gpu.label for gpu in available) or "none"
        raise DeviceError(
            f"A sweep run needs {wanted} GPU(s) but this process may use {len(available)} "
            f"(GPUs: {names}); lower num_gpus_per_process or nproc_per_node, or run on a "
            "machine with more GPUs. Nothing was started."
        )
    return available


def _locate(experiment) -> Dict[str, Any]:
    """How a new process finds the experiment again: a module to import, or a file to run."""
    function = experiment.main_function
    module_name, name = function.__module__, function.__name__
    module = sys.modules.get(module_name)
    importable = module_name not in ("__main__", "__mp_main__") and getattr(
        getattr(module, "__spec__", None), "name", None
    ) == module_name
    if module is not None and getattr(module, name, None) is not experiment:
        raise SweepError(
            f"Experiment {experiment.name!r} is not reachable as {module_name}.{name}; define "
            "it at the top level of a module under its function's name, so that the runs' "
            "processes can find it.",
            [],
        )
    if importable:
        return {"module": module_name, "path": None, "name": name}
    path = getattr(module, "__file__", None) or function.__code__.co_filename
    if not path or not os.path.isfile(path):
        raise SweepError(
            f"Experiment {experiment.name!r} was defined interactively (no file); a sweep "
            "runs it in new processes, which must import it: move it into a .py file.",
            [],
        )
    return {"module": None, "path": os.path.abspath(path), "name": name}


def _summary(failures, total: int) -> str:
    lines = []
    for index, result in failures:
        where = f"; log: {result.run_dir / 'log.txt'}" if result.run_dir else ""
        code = "" if result.exit_code is None else f", exit code {result.exit_code}"
        why = f" ({result.error})" if result.error else ""
        run = f"#{index + 1} {_processes.describe(result.params)}"
        lines.append(f"{run}: {result.status}{code}{why}{where}")
    return f"{len(failures)} of {total} sweep runs did not finish:\n  " + "\n  ".join(lines)
