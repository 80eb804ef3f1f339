"""Which directory a run writes to: a new one, or one it continues.

pystematic's standard plugin creates a new run directory for every main process. Two cases
need an existing one instead: every rank of a distributed run writes into rank 0's (other
ranks go through pystematic's own subprocess path, which takes the directory of a given
parameters file), and a run that continues an earlier one (a requeued job, a torchrun
restart) writes on in that run's directory, so its logs, recordings and checkpoints stay
one run. For the latter this module stands in for the standard plugin's directory step.
"""
import logging
import pathlib
import random
from typing import Optional

logger = logging.getLogger("pystematic.torch")

_continue_in: Optional[pathlib.Path] = None


def continue_in(directory: pathlib.Path) -> None:
    """Make the experiment about to start write into ``directory``, which already exists."""
    global _continue_in
    _continue_in = pathlib.Path(directory)


def pending() -> Optional[pathlib.Path]:
    """The directory the coming experiment continues in, if one was chosen."""
    return _continue_in


def join_as_rank(params: dict, run_dir: pathlib.Path, rank: int) -> None:
    """Make this process, rank ``rank`` > 0, write its log into ``run_dir`` (rank 0's).

    pystematic treats a process whose ``subprocess`` parameter names a parameters file as
    one it started: it writes ``log.rank-<local_rank>.txt`` beside that file and labels its
    console lines, and neither creates a directory nor writes parameters.
    """
    run_dir.mkdir(parents=True, exist_ok=True)  # on another machine: the same path there
    params["subprocess"] = str(run_dir / "parameters.yaml")
    params["local_rank"] = rank


def install(app) -> None:
    """Put our directory step in front of the standard plugin's (once per process)."""
    callbacks = app._before_experiment_callbacks
    for index, (callback, priority) in enumerate(callbacks):
        owner = getattr(callback, "__self__", None)
        if type(owner).__name__ == "StandardApi" and not getattr(callback, "_ours", False):
            callbacks[index] = (_standard_or_continued(callback), priority)


def _standard_or_continued(standard):
    def before_experiment(experiment, params) -> None:
        global _continue_in
        directory, _continue_in = _continue_in, None
        if directory is None or params["subprocess"]:
            standard(experiment, params)
        else:
            _continue(standard.__self__, experiment, params, directory)

    before_experiment._ours = True
    return before_experiment


def _continue(api, experiment, params: dict, directory: pathlib.Path) -> None:
    # The standard plugin's steps for a main process, with an existing directory: its
    # parameters.yaml stays as the run's first start wrote it; log.txt is appended to.
    from pystematic.standard_plugin import standard_plugin

    api.subprocess_counter.__wrapped__ = 0
    api.current_experiment.__wrapped__ = experiment
    api.params.__wrapped__ = params
    api.random_gen.__wrapped__ = random.Random(params["random_seed"])
    api.output_dir.__wrapped__ = directory
    api.params_file.__wrapped__ = directory / "parameters.yaml"
    api._log_handler = standard_plugin.StandardLogHandler(directory / "log.txt")
    logging.basicConfig(level="DEBUG" if params["debug"] else "INFO",
                        handlers=[api._log_handler], force=True)  # fmt: skip
    logger.info("Continuing run %s in its own directory.", directory)
