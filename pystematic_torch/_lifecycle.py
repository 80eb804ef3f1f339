"""What happens around every experiment, however it ends.

The hooks, in the order pystematic calls them (``plugin`` registers them):

``prepare``       before the run directory exists: launch checks, meeting rank 0
``setup``         the experiment starts: session, stop signals, the distributed job
``teardown``      the experiment ended (returned, raised, was preempted, interrupted):
                  tell the other ranks, save a preempted Context, flush and close what was
                  recorded, leave the job
``end_failed_job`` after pystematic has logged the error: end a failed rank's process
``finish``        last: restore what the run changed, raise what clean-up could not do
"""
import logging
import os
import pathlib
import signal
import threading
from typing import Optional

from . import _run_lock, _run_record, _rundir, _session
from .errors import LaunchError

logger = logging.getLogger("pystematic.torch")

__all__ = ["LaunchError"]

_teardown_error: Optional[BaseException] = None
_launch_warnings: list = []
_sigchld_handler = None


def prepare(experiment, params) -> None:
    """Before pystematic creates the run directory.

    Raises:
        LaunchError: the run cannot start as configured; nothing was created.
    """
    try:
        if params["distributed"]:
            from .distributed import _job

            _job.prepare(params)
            first_rank = _job.rank() == 0
        else:
            from .distributed._launch import check_not_distributed

            _launch_warnings[:] = check_not_distributed(params, os.environ)
            first_rank = True
        if first_rank and _wants_latest(params):
            _resolve_latest(experiment, params)
        elif first_rank and _rundir.pending() is not None:  # a torchrun restart
            _run_lock.hold(_rundir.pending(), f"The restarted run of {experiment.name!r}")
    except BaseException as error:
        _abandon_launch(error, params)
        raise


def setup(experiment, params) -> None:
    """Once the run directory exists: start the session, the stop signals and the job.

    Raises:
        LaunchError: a rank failed or did not arrive before the job formed; the run's
            teardown has run and logged it.
    """
    from .distributed import _preemption

    _session.start(params)
    for warning in _launch_warnings:
        logger.warning(warning)
    _launch_warnings.clear()
    _preemption.install()
    if params["distributed"]:
        from .distributed import _job

        try:
            _job.start(params)
        except BaseException as error:
            _job.abandon()
            import pystematic.core

            # pystematic runs its after-experiment hooks only for errors of the experiment
            # itself; these close the log, stop the session and forget the experiment.
            pystematic.core.app.after_experiment(error)
            if isinstance(error, LaunchError):
                error.logged = True
                error.debug = params["debug"]
            raise
    from ._seeding import seed_everything

    seed_everything(params["random_seed"])
    _hold_new_run(params)
    _run_record.start(experiment, params)


def _hold_new_run(params) -> None:
    """Lock a new run's directory (a continued one was locked before it was chosen)."""
    if params["distributed"]:
        from .distributed import is_master

        if not is_master():
            return
    if _run_lock.held_dir() is None:
        import pystematic

        _run_lock.hold(pathlib.Path(str(pystematic.output_dir)), "The new run")


def teardown(error: Optional[BaseException]) -> None:
    """The experiment ended: save a preempted Context, flush, leave the job."""
    global _teardown_error, _sigchld_handler
    from .distributed import _job, _preemption
    from .distributed._supervise import JobFailed

    try:
        _job.stand_back()
    except JobFailed:
        # The monitor queued its stop (a peer is gone) just before this thread told it the
        # run was ending; raised anywhere later, it would cut the teardown short. The run
        # ends anyway, with the error it had. (Before this function, pystematic's own code
        # is exposed to it still, which only a stop that arrives in that instant reaches.)
        _job.stand_back()
    _teardown_error = None
    if error is not None:
        _drop_torch_frames(error)
    if threading.current_thread() is threading.main_thread():
        # pystematic kills leftover children next, DataLoader workers among them; torch's
        # SIGCHLD handler would report each as a failure of the run.
        _sigchld_handler = signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    _job.notify(error)
    how = _outcome_of(error)
    try:
        if how == _session.PREEMPTED:
            _save_preempted_context(error)
    except Exception as failure:  # noqa: BLE001 - the run must still flush and end
        logger.error("Saving the preempted run failed: %s", failure)
        _teardown_error = failure
    code = _exit_code_of(error)
    if how in (_session.SUCCESS, _session.PREEMPTED):
        failure = _job.arrive_before_closing()
        if failure is not None:
            code = failure[1]
            how = _session.INTERRUPTED if code == 130 else _session.FAILURE
    try:
        _session.end(how, code)
    except _session.TeardownError as failure:
        # Raised in finish(), after pystematic's own teardown: raising here would skip the
        # closing of the log file.
        logger.error("%s", failure)
        _teardown_error = _teardown_error or failure
    except KeyboardInterrupt as interrupt:  # Ctrl-C while closing: the run ends interrupted
        _teardown_error = _teardown_error or interrupt
        _job.interrupted_while_closing()
    _preemption.uninstall()
    try:
        child_failure = _job.finish(error)
    except KeyboardInterrupt as interrupt:  # while waiting for the started ranks to exit
        _teardown_error = _teardown_error or interrupt
        child_failure = None
    if child_failure is not None:
        logger.error("%s", child_failure)
        _teardown_error = _teardown_error or _session.TeardownError(child_failure)


def _drop_torch_frames(error: BaseException) -> None:
    """Leave torch's own frames out of the tracebacks of ``error`` and what it chains to.

    pystematic logs a failed run's traceback with every frame's local variables, and the
    repr of a torch storage lists each element: a disk that fills up during ``torch.save``
    (whose frames hold the storages being written) kept the process printing for many
    minutes instead of ending. The frames of the user's code and of this library stay.
    """
    import types

    import torch

    torch_dir = os.path.dirname(torch.__file__) + os.sep
    pending, seen = [error], set()
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        kept = []
        entry = current.__traceback__
        while entry is not None:
            if not entry.tb_frame.f_code.co_filename.startswith(torch_dir):
                kept.append(entry)
            entry = entry.tb_next
        rebuilt = None
        for entry in reversed(kept):
            rebuilt = types.TracebackType(rebuilt, entry.tb_frame, entry.tb_lasti, entry.tb_lineno)
        current.__traceback__ = rebuilt
        pending += [current.__cause__, current.__context__]


def end_failed_job(error: Optional[BaseException]) -> None:
    from .distributed import _job

    _job.fail(error)


def finish(error: Optional[BaseException]) -> None:
    """Make a failed clean-up (a recorder that could not write its files) fail the run.

    The last after-experiment hook: pystematic forgets the running experiment only after
    every hook returned, so it is forgotten here first, or the next run in this process
    would be refused as "already running".
    """
    global _teardown_error, _sigchld_handler
    _run_lock.release()
    if _sigchld_handler is not None:
        signal.signal(signal.SIGCHLD, _sigchld_handler)
        _sigchld_handler = None
    failure, _teardown_error = _teardown_error, None
    if failure is None:
        return
    # run.json was written as the experiment ended; the process ends with this failure.
    _run_record.correct_the_ending(130 if isinstance(failure, KeyboardInterrupt) else 1)
    _forget_running_experiment()
    raise failure


def describe_endings_plainly() -> None:
    """Have pystematic's "Experiment ended ... with an error" line say what really happened.

    A preempted run did not fail; a rank stopped because another failed should name that
    failure, not the broken connection it saw (its traceback stays in the log file).
    """
    logging.getLogger("pystematic.standard").addFilter(_PlainEnding())


class _PlainEnding(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        from .distributed import _job
        from .distributed._preemption import Preempted

        error = record.exc_info[1] if record.exc_info else None
        if error is None:
            return True
        ended = str(record.msg).split(" with an error")[0]
        if isinstance(error, Preempted):
            record.msg = f"{ended} (preempted by {error.signal_name}, exit code {error.code})."
            record.args, record.exc_info = (), None
            record.levelno, record.levelname = logging.INFO, "INFO"
        elif _job.echo_of(error) is not None:
            record.msg = f"{ended}: stopped because {_job.echo_of(error)}."
            record.args = ()
        return True


#: ``--checkpoint latest``: resume the newest run of this experiment, in its own directory.
LATEST = "latest"


def _wants_latest(params) -> bool:
    return params.get("checkpoint") is not None and str(params["checkpoint"]) == LATEST


def _resolve_latest(experiment, params) -> None:
    """Turn ``--checkpoint latest`` into the run to continue, or into a fresh start.

    The same command then serves a job's first start and every requeue (SLURM
    ``--requeue``, a spot instance coming back): the newest run of this experiment under
    ``--output-dir`` that holds a Context checkpoint is continued in its own directory, so
    its logs, recordings and checkpoints stay one run; with none, a new run starts.
    """
    from .checkpoint import find_latest_run, list_checkpoints

    continued = _rundir.pending()
    if continued is not None:  # a torchrun restart continues its first attempt's run
        _run_lock.hold(continued, f"The restarted run of {experiment.name!r}")
        has_state = any(info.kind == "context" for info in list_checkpoints(continued))
        params["checkpoint"] = continued if has_state else None
        return
    run = find_latest_run(params["output_dir"], experiment.name)
    if run is not None:
        # Before anything of the run is read for continuing it: its files may still change.
        _run_lock.hold(run, f"--checkpoint latest: the newest run of {experiment.name!r}")
    if run is None:
        params["checkpoint"] = None
        _launch_warnings.append(
            f"--checkpoint latest: no earlier run of {experiment.name!r} with a checkpoint "
            f"under {params['output_dir']}; starting a new run."
        )
        return
    _rundir.continue_in(run)
    params["checkpoint"] = run
    recorded = _recorded_seed(pathlib.Path(run))
    if recorded is not None:
        params["random_seed"] = recorded


def _recorded_seed(run) -> Optional[int]:
    from pystematic.standard_plugin import yaml_wrapper

    try:
        with open(run / "parameters.yaml") as handle:
            return int(yaml_wrapper.load(handle)["random_seed"])
    except (OSError, KeyError, TypeError, ValueError):
        return None


def _outcome_of(error: Optional[BaseException]) -> str:
    from .distributed._preemption import Preempted

    if error is None:
        return _session.SUCCESS
    if isinstance(error, Preempted):
        return _session.PREEMPTED
    if isinstance(error, KeyboardInterrupt):
        return _session.INTERRUPTED
    return _session.FAILURE


def _exit_code_of(error: Optional[BaseException]) -> int:
    if error is None:
        return 0
    if isinstance(error, SystemExit):
        return error.code if isinstance(error.code, int) else 1
    return 130 if isinstance(error, KeyboardInterrupt) else 1


def _save_preempted_context(error) -> None:
    from .checkpoint import save_checkpoint

    loader = getattr(error, "loader", None)
    holders = [context for context in _session.contexts() if context._holds(loader)]
    if not holders:
        logger.warning("Preempted, but no Context holds the loader that stopped: nothing saved.")
        return
    path = save_checkpoint(holders[0].state_dict(), id="preempted", overwrite=True)
    if path is None:
        return  # only rank 0 writes, and says so
    logger.warning(
        "Preempted by %s in epoch %d after batch %d: saved %s. Resume with --checkpoint "
        "<this run's directory>; exiting with code %d.",
        error.signal_name, loader.epoch, loader._position, path, error.code,
    )  # fmt: skip


def _abandon_launch(error: BaseException, params) -> None:
    from .distributed import _job

    try:
        _job.abandon(error)
    finally:
        _run_lock.release()
        _forget_running_experiment()
    if isinstance(error, LaunchError):
        error.debug = params["debug"]


def _forget_running_experiment() -> None:
    # pystematic marks an experiment as running before its before-experiment hooks and
    # forgets it only after its after-experiment hooks; a hook that fails in between would
    # leave every later run in this process refused as "already running".
    import pystematic.core

    pystematic.core.app._active_experiment = None

