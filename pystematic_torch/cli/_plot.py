"""``pystematic-torch plot``: line plots of recorded scalars, one line per run."""
import pathlib
from typing import List, Sequence

import click

from ._discover import Run, differing_parameters, label, runs_of
from ._scalars import read_scalars

_DPI = 100


@click.command("plot", short_help="Plot scalars of runs, one line per run.")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=pathlib.Path))
@click.option("--tag", "tags", multiple=True, required=True, metavar="TAG",
              help="A scalar to plot, e.g. train/loss; repeat for one panel per tag.")
@click.option("--smooth", default=1, show_default=True, type=click.IntRange(min=1),
              help="Average each point with the K-1 before it.", metavar="K")
@click.option("-o", "--output", required=True, type=click.Path(path_type=pathlib.Path),
              help="Image to write; the format follows the suffix (.png, .pdf, .svg).")
@click.option("--width", default=800, show_default=True, type=click.IntRange(min=100),
              help="Image width in pixels.")
@click.option("--height", default=None, type=click.IntRange(min=100),
              help="Image height in pixels  [default: 400 per tag].")
def plot_command(run_dirs: Sequence[pathlib.Path], tags: Sequence[str], smooth: int,
                 output: pathlib.Path, width: int, height: int) -> None:  # fmt: skip
    """Plot scalars of the runs in RUN_DIRS (run directories, or folders holding runs).

    One panel per --tag, one line per run, labelled by the parameters that differ between
    the runs. Values come from each run's scalars.csv, or its TensorBoard files.
    """
    if not output.parent.is_dir():
        raise click.ClickException(f"Cannot write {output}: {output.parent} is not a directory.")
    runs = runs_of(run_dirs)
    scalars = [read_scalars(run.path) for run in runs]
    _check_tags(tags, runs, scalars)
    names = differing_parameters(runs)
    labels = _unique([label(run, names) for run in runs], runs)
    height = height or 400 * len(tags)

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width / _DPI, height / _DPI), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(tags), 1, squeeze=False)[:, 0]
    for axis, tag in zip(axes, tags):
        for series, name in zip(scalars, labels):
            if tag in series:
                steps, values = zip(*series[tag])
                axis.plot(steps, _smoothed(values, smooth), label=name)
        axis.set_title(tag if smooth == 1 else f"{tag} (smoothed over {smooth})")
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
        axis.legend(fontsize="small")
    try:
        figure.savefig(output, dpi=_DPI)
    except (ValueError, OSError) as error:
        raise click.ClickException(f"Cannot write {output}: {error}") from None
    click.echo(f"Wrote {output} ({width}x{height} pixels, {len(runs)} runs).")


def _check_tags(tags: Sequence[str], runs: List[Run], scalars: List[dict]) -> None:
    present = sorted({tag for series in scalars for tag in series})
    if not present:
        where = ", ".join(str(run.path) for run in runs)
        raise click.ClickException(
            f"No scalars recorded in {where} (no scalars.csv or TensorBoard event files)."
        )
    missing = [tag for tag in tags if tag not in present]
    if missing:
        raise click.ClickException(
            f"Unknown tag {', '.join(map(repr, missing))}; the runs recorded: "
            f"{', '.join(present)}."
        )


def _unique(labels: List[str], runs: List[Run]) -> List[str]:
    """Keep labels apart when runs share all their differing parameters (repeated runs)."""
    return [
        f"{text} ({run.path.name})" if labels.count(text) > 1 else text
        for text, run in zip(labels, runs)
    ]


def _smoothed(values: Sequence[float], window: int) -> List[float]:
    result, total = [], 0.0
    for index, value in enumerate(values):
        total += value
        if index >= window:
            total -= values[index - window]
        result.append(total / min(index + 1, window))
    return result
