"""``pystematic-torch sweep``: run an experiment file over a grid of parameters."""
import logging
import pathlib
import sys
from typing import Any, Dict, List, Optional, Sequence

import click

from ._discover import load_run

INTERRUPTED_EXIT_CODE = 130


@click.command("sweep", short_help="Run an experiment file over a grid of parameters.")
@click.argument("exp_file", type=click.Path(path_type=pathlib.Path))
@click.option("--grid", "grid", multiple=True, metavar="NAME=V1,V2,...",
              help="Values to try for a parameter; every combination of the --grid options "
                   "is run. One value sets it for every run.")  # fmt: skip
@click.option("-j", "--max-processes", default=1, show_default=True,
              type=click.IntRange(min=1), help="Runs alive at the same time.")
@click.option("--gpus-per-run", default=None, type=click.IntRange(min=0),
              help="GPUs for each run  [default: one per rank when there are GPUs].")
@click.option("--experiment", "experiment_name", default=None, metavar="NAME",
              help="Which experiment, when EXP_FILE defines several.")
@click.option("--output-dir", default=None, type=click.Path(path_type=pathlib.Path),
              help="Where the runs' directories go  [default: the experiment's output_dir].")
@click.option("--metric", "metrics", multiple=True, metavar="TAG",
              help="Show the last value of this scalar in the final table; repeatable.")
@click.option("--stop-timeout", default=30.0, show_default=True, type=click.FloatRange(min=0),
              help="Seconds runs get to end after Ctrl-C before they are killed.")
def sweep_command(exp_file: pathlib.Path, grid: Sequence[str], max_processes: int,
                  gpus_per_run: Optional[int], experiment_name: Optional[str],
                  output_dir: Optional[pathlib.Path], metrics: Sequence[str],
                  stop_timeout: float) -> None:  # fmt: skip
    """Run the experiment defined in EXP_FILE once per combination of the --grid values.

    Each run gets its own process, environment and GPUs (see run_parameter_sweep); a run
    that fails does not stop the others. Ends with the table of the runs, and exits 1 if a
    run did not finish. Ctrl-C stops every run.

    Example: pystematic-torch sweep train.py --grid lr=0.1,0.01 --grid batch_size=32,64 -j 2
    """
    values = _parse_grid(grid)
    experiment = _load_experiment(exp_file, experiment_name)
    import pystematic

    from ..errors import DeviceError, ParameterError
    from ..sweep import NOT_STARTED, SweepError, run_parameter_sweep

    if output_dir is not None:
        values["output_dir"] = [str(output_dir)]
    _show_progress()
    try:
        results = run_parameter_sweep(experiment, pystematic.param_matrix(**values),
                                      max_num_processes=max_processes,
                                      num_gpus_per_process=gpus_per_run,
                                      raise_on_failure=False,
                                      stop_timeout=stop_timeout)  # fmt: skip
    except (ParameterError, DeviceError, SweepError) as error:
        raise click.ClickException(str(error)) from None
    except KeyboardInterrupt as interrupt:
        results = getattr(interrupt, "results", [])
        _show_table(results, metrics)
        never = sum(result.status == NOT_STARTED for result in results)
        if never:
            click.echo(f"{never} run{'s were' if never > 1 else ' was'} not started.", err=True)
        click.echo("Interrupted: every run has been stopped.", err=True)
        sys.exit(INTERRUPTED_EXIT_CODE)
    _show_table(results, metrics)
    failed = [result for result in results if not result.finished]
    if failed:
        click.echo(f"{len(failed)} of {len(results)} runs did not finish.", err=True)
        sys.exit(1)


def _parse_grid(grid: Sequence[str]) -> Dict[str, List[str]]:
    values: Dict[str, List[str]] = {}
    for option in grid:
        name, separator, text = option.partition("=")
        name = name.strip().replace("-", "_")
        if not separator or not name or not text:
            raise click.ClickException(
                f"--grid {option!r} is not NAME=VALUE[,VALUE...]; e.g. --grid lr=0.1,0.01."
            )
        if name in values:
            raise click.ClickException(f"--grid names {name!r} twice; give its values once, "
                                       "separated by commas.")  # fmt: skip
        values[name] = [value.strip() for value in text.split(",")]
    return values


def _load_experiment(path: pathlib.Path, name: Optional[str]) -> Any:
    if not path.is_file():
        what = "does not exist" if not path.exists() else "is not a file"
        raise click.ClickException(f"{path} {what}; give the Python file that defines the "
                                   "experiment.")  # fmt: skip
    import runpy

    import pystematic.core

    path = path.resolve()
    # As `python EXP_FILE` would: its folder first on the path, for its own imports. The
    # file runs under another name than __main__, so its `.cli()` call does not start.
    sys.path.insert(0, str(path.parent))
    try:
        namespace = runpy.run_path(str(path), run_name="__pystematic_torch_sweep__")
    except Exception as error:  # noqa: BLE001 - the user's file failed: say where
        raise click.ClickException(
            f"Running {path} failed: {type(error).__name__}: {error}"
        ) from None
    found = {value.name: value for value in namespace.values()
             if isinstance(value, pystematic.core.Experiment)}  # fmt: skip
    if not found:
        raise click.ClickException(f"{path} defines no experiment (@pystematic.experiment).")
    if name is None and len(found) > 1:
        raise click.ClickException(f"{path} defines several experiments ({', '.join(found)}); "
                                   "choose one with --experiment.")  # fmt: skip
    if name is not None and name not in found:
        raise click.ClickException(f"{path} has no experiment {name!r}; it defines: "
                                   f"{', '.join(found)}.")  # fmt: skip
    return found[name] if name is not None else next(iter(found.values()))


def _show_progress() -> None:
    """Print the sweep's progress lines on stderr (once, however often the command runs)."""
    logger = logging.getLogger("pystematic.torch.sweep")
    logger.setLevel(logging.INFO)
    if not any(isinstance(handler, _Progress) for handler in logger.handlers):
        logger.addHandler(_Progress())


class _Progress(logging.Handler):
    """Writes to whatever stderr is when a line comes (click's test runner swaps it)."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(record.getMessage(), err=True)


def _show_table(results: Sequence[Any], metrics: Sequence[str]) -> None:
    from ._runs import show_runs

    runs = [load_run(result.run_dir) for result in results if result.run_dir is not None]
    if not runs:
        click.echo("No run created a run directory.", err=True)
        return
    root = _common_root([run.path for run in runs])
    click.echo("")
    show_runs(runs, root, metrics)


def _common_root(paths: Sequence[pathlib.Path]) -> pathlib.Path:
    import os

    return pathlib.Path(os.path.commonpath([str(path.parent) for path in paths]))

