"""The pystematic plugin: parameters, experiment hooks and the ``pystematic.torch`` namespace.

pystematic loads this through the ``pystematic.plugins`` entry point and calls
``TorchPlugin(app)`` once per process. What the hooks do is in ``_lifecycle``; this module
only says when they run.
"""
import functools
import logging
import sys

from . import _lifecycle, _rundir
from .params import default_parameters, validate_parameters

logger = logging.getLogger("pystematic.torch")

# Before-experiment hooks run lowest first. The standard plugin runs at 10 and creates the
# run directory and log file: the launch checks and the meeting with rank 0 come before it
# (a bad port leaves no empty run directory, and every rank learns rank 0's directory), the
# rest after it (so that what it logs lands in the run's log).
_PREPARE_PRIORITY = 5
_SETUP_PRIORITY = 20
# After-experiment hooks: ours flush recorders before the standard plugin closes the log file
# and kills leftover children, and end the process or re-raise after it.
_TEARDOWN_PRIORITY = 5
_AFTER_STANDARD_TEARDOWN_PRIORITY = 100
# pystematic's own parameters that no environment variable may set: torchrun exports
# LOCAL_RANK, which pystematic would otherwise read as its subprocess counter.
_INTERNAL_PARAMETERS = ("subprocess", "local_rank")


class TorchPlugin:
    """Entry point object; ``app`` is pystematic's ``PystematicApp``."""

    def __init__(self, app) -> None:
        self._app = app
        app.on_experiment_created(self._add_parameters, priority=20)
        app.on_before_experiment(_lifecycle.prepare, priority=_PREPARE_PRIORITY)
        app.on_before_experiment(_lifecycle.setup, priority=_SETUP_PRIORITY)
        app.on_after_experiment(_lifecycle.teardown, priority=_TEARDOWN_PRIORITY)
        after_standard = (_detach_closed_log_handlers, _lifecycle.end_failed_job,
                          _lifecycle.finish)  # fmt: skip
        for offset, hook in enumerate(after_standard):
            app.on_after_experiment(hook, priority=_AFTER_STANDARD_TEARDOWN_PRIORITY + offset)
        _lifecycle.describe_endings_plainly()

        # The package resolves its public names lazily, so this does not import torch.
        import pystematic_torch

        app.get_api_object().torch = pystematic_torch

    def _add_parameters(self, experiment):
        # pystematic copies its list of before-experiment hooks when an experiment starts,
        # so the run-directory step is put in place now, when every plugin is loaded.
        _rundir.install(self._app)
        existing = {param.name for param in experiment.get_parameters()}
        for param in default_parameters():
            if param.name not in existing:
                experiment.add_parameter(param)
        for param in experiment.get_parameters():
            if param.name in _INTERNAL_PARAMETERS:
                param.envvar = False
        _check_combinations_when_parsed(experiment.param_manager)
        experiment.cli = _one_line_launch_errors(experiment.cli)
        return experiment


def _one_line_launch_errors(cli):
    """Wrap ``experiment.cli``: a launch error or Ctrl-C is one line on stderr, not a traceback.

    A wrong port, too few GPUs or an inconsistent torchrun environment is a mistake in the
    command, like a bad flag, which pystematic reports in one line too; ``--debug`` shows
    the traceback.
    """

    @functools.wraps(cli)
    def run_from_command_line(argv=None, exit_on_error=True):
        try:
            return cli(argv, exit_on_error)
        except _lifecycle.LaunchError as error:
            if not exit_on_error or getattr(error, "debug", False):
                raise
            if not getattr(error, "logged", False):
                sys.stderr.write(f"Error: {error}\n")
            sys.exit(1)
        except KeyboardInterrupt:
            # Ctrl-C is the user's own request: what was recorded is flushed by then, and a
            # traceback of wherever the loop happened to be says nothing.
            sys.stderr.write("Interrupted.\n")
            sys.exit(130)

    return run_from_command_line


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
