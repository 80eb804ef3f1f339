"""``pystematic-torch runs``: a table of runs, or JSON for scripts."""
import json
import pathlib
from typing import Any, Dict, List, Sequence

import click

from ._discover import Run, differing_parameters, find_runs, format_duration
from ._scalars import last_value, read_scalars


@click.command("runs", short_help="List runs: status, duration, differing parameters.")
@click.argument("output_dir", default="output", type=click.Path(path_type=pathlib.Path))
@click.option("--metric", "metrics", multiple=True, metavar="TAG",
              help="Add a column with the last recorded value of this scalar; repeatable.")
@click.option("--param", "params", multiple=True, metavar="NAME",
              help="Always show this parameter, also when every run has the same value.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON, one object per run.")
def runs_command(output_dir: pathlib.Path, metrics: Sequence[str], params: Sequence[str],
                 as_json: bool) -> None:  # fmt: skip
    """List the runs under OUTPUT_DIR (default: ./output), oldest first.

    Shows each run's experiment, directory, start time, status, duration and the parameters
    that differ between the runs. A status of "died" means the record says running but the
    process is gone (it was killed without a chance to record its end); "unknown" means the
    run has no run.json (written by older versions, or a rank other than 0).
    """
    runs = find_runs(output_dir)
    if not runs:
        raise click.ClickException(f"No runs found under {output_dir}.")
    show_runs(runs, output_dir, metrics, params, as_json)


def show_runs(runs: List[Run], root: pathlib.Path, metrics: Sequence[str] = (),
              params: Sequence[str] = (), as_json: bool = False) -> None:  # fmt: skip
    """Print ``runs`` as the ``runs`` command does (``sweep`` ends with this too)."""
    names = differing_parameters(runs, params)
    values = [_metric_values(run, metrics) for run in runs]
    if as_json:
        click.echo(json.dumps([_as_dict(run, names, found) for run, found in zip(runs, values)],
                              indent=2, default=str))  # fmt: skip
        return
    header = ["experiment", "run", "started", "status", "duration", *names, *metrics]
    rows = [header]
    for run, found in zip(runs, values):
        rows.append([
            run.experiment,
            _relative(run.path, root),
            run.started.strftime("%Y-%m-%d %H:%M:%S") if run.started else "-",
            run.status,
            format_duration(run.duration_s),
            *(str(run.params.get(name, "-")) for name in names),
            *(_metric_text(found[tag]) for tag in metrics),
        ])  # fmt: skip
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def _metric_values(run: Run, metrics: Sequence[str]) -> Dict[str, Any]:
    if not metrics:
        return {}
    series = read_scalars(run.path)
    return {tag: last_value(series.get(tag, [])) for tag in metrics}


def _as_dict(run: Run, names: Sequence[str], metrics: Dict[str, Any]) -> Dict[str, Any]:
    return {
        "experiment": run.experiment,
        "run_dir": str(run.path),
        "started_at": run.started.isoformat() if run.started else None,
        "status": run.status,
        "duration_s": run.duration_s,
        "exit_code": run.exit_code,
        "differing_params": {name: run.params.get(name) for name in names},
        "params": run.params,
        "metrics": metrics,
    }


def _relative(path: pathlib.Path, root: pathlib.Path) -> str:
    try:
        relative = path.resolve().relative_to(root.resolve())
    except ValueError:
        return str(path)
    return str(relative) if str(relative) != "." else path.name


def _metric_text(value: Any) -> str:
    return "-" if value is None else f"{value:.6g}"
