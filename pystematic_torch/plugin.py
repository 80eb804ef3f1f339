"""The pystematic plugin: parameters, experiment hooks and the ``pystematic.torch`` namespace.

pystematic loads this through the ``pystematic.plugins`` entry point and calls
``TorchPlugin(app)`` once per process.
"""
import logging

from . import _session
from .params import default_parameters, validate_parameters

logger = logging.getLogger("pystematic.torch")

# The standard plugin runs at priority 10 and creates the output directory and log file;
# our set-up comes after it so that what it logs lands in the run's log.
_SETUP_PRIORITY = 20
# After-experiment hooks run lowest first: ours flush recorders before the standard plugin
# closes the log file and kills leftover children, and tidy its logging up afterwards.
_TEARDOWN_PRIORITY = 5
_AFTER_STANDARD_TEARDOWN_PRIORITY = 100


class TorchPlugin:
    """Entry point object; ``app`` is pystematic's ``PystematicApp``."""

    def __init__(self, app) -> None:
        app.on_experiment_created(self._add_parameters, priority=20)
        app.on_before_experiment(self._setup, priority=_SETUP_PRIORITY)
        app.on_after_experiment(self._teardown, priority=_TEARDOWN_PRIORITY)
        app.on_after_experiment(
            _detach_closed_log_handlers, priority=_AFTER_STANDARD_TEARDOWN_PRIORITY
        )
        app.on_after_experiment(
            _fail_distributed_job, priority=_AFTER_STANDARD_TEARDOWN_PRIORITY + 1
        )
        app.on_after_experiment(
            _raise_teardown_error, priority=_AFTER_STANDARD_TEARDOWN_PRIORITY + 2
        )

        # The package resolves its public names lazily, so this does not import torch.
        import pystematic_torch

        app.get_api_object().torch = pystematic_torch

    @staticmethod
    def _add_parameters(experiment):
        existing = {param.name for param in experiment.get_parameters()}
        for param in default_parameters():
            if param.name not in existing:
                experiment.add_parameter(param)
        _check_combinations_when_parsed(experiment.param_manager)
        return experiment

    @staticmethod
    def _setup(experiment, params) -> None:
        _session.start(params)
        if params["distributed"]:
            from .distributed import _job

            _job.start(params)
        from ._seeding import seed_everything

        seed_everything(params["random_seed"])

    @staticmethod
    def _teardown(error) -> None:
        global _teardown_error
        _teardown_error = None
        try:
            _session.end(_outcome_of(error))
        except _session.TeardownError as failure:
            # Raised only after pystematic has finished its own teardown (see
            # _raise_teardown_error): raising here would skip the log file's closing.
            logger.error("%s", failure)
            _teardown_error = failure
        if _job_module_loaded():
            from .distributed import _job

            _job.finish(error)


_teardown_error = None


def _outcome_of(error) -> str:
    if error is None:
        return _session.SUCCESS
    if isinstance(error, KeyboardInterrupt):
        return _session.INTERRUPTED
    return _session.FAILURE


def _raise_teardown_error(error) -> None:
    """Make a failed clean-up (a recorder that could not write its files) fail the run.

    The last after-experiment hook: pystematic forgets the running experiment only after
    every hook returned, so it is forgotten here first, or the next run in this process
    would be refused as "already running".
    """
    global _teardown_error
    failure, _teardown_error = _teardown_error, None
    if failure is None:
        return
    import pystematic.core

    pystematic.core.app._active_experiment = None
    raise failure


def _job_module_loaded() -> bool:
    import sys

    return "pystematic_torch.distributed._job" in sys.modules


def _fail_distributed_job(error) -> None:
    if error is not None and _job_module_loaded():
        from .distributed import _job

        _job.fail(error)


def _detach_closed_log_handlers(error) -> None:
    """Remove the run's log handler from the root logger once pystematic has closed its file.

    pystematic closes the handler's file at experiment end but leaves the handler installed,
    and that handler lets write errors escape, so without this every log call after an
    experiment (a second experiment in a notebook, a sweep in one process) would raise
    ``ValueError: I/O operation on closed file``.
    """
    for handler in list(logging.root.handlers):
        file_handle = getattr(handler, "file_handle", None)
        if file_handle is not None and file_handle.closed:
            logging.root.removeHandler(handler)


def _check_combinations_when_parsed(param_manager) -> None:
    """Run our cross-parameter checks where pystematic validates a parsed set of values.

    pystematic calls ``validate_values`` once every value (CLI, dict, params file,
    environment, defaults) is in place, before any hook runs or any file is written, and
    turns its errors into a clean "Error: ..." plus usage on the command line and a
    ``pystematic.core.Error`` from ``experiment.run``.
    """
    validate_own_values = param_manager.validate_values

    def validate_values(result_dict) -> None:
        validate_own_values(result_dict)
        validate_parameters(result_dict)

    param_manager.validate_values = validate_values
