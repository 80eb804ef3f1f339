"""Reading the scalars a run recorded: ``scalars.csv``, else its TensorBoard event files."""
import csv
import pathlib
from typing import Dict, List, Tuple

import click

Series = List[Tuple[int, float]]


def read_scalars(run_dir: pathlib.Path) -> Dict[str, Series]:
    """Every scalar tag of the run with its (step, value) points in step order.

    ``scalars.csv`` (full precision) is preferred; a run recorded with ``file=False`` is read
    from its TensorBoard event files. A run with neither has no tags.

    Raises:
        click.ClickException: a file exists but cannot be read.
    """
    series: Dict[str, Series] = {}
    csv_path = run_dir / "scalars.csv"
    if csv_path.is_file():
        _read_csv(csv_path, series)
    else:
        for path in sorted(run_dir.glob("*tfevents*")):
            _read_events(path, series)
    for points in series.values():
        points.sort(key=lambda point: point[0])  # stable: a step's last value stays last
    return series


def last_value(series: Series):
    return series[-1][1] if series else None


def _read_csv(path: pathlib.Path, series: Dict[str, Series]) -> None:
    try:
        with open(path, newline="", encoding="utf-8") as file:
            for row in csv.DictReader(file):
                try:
                    point = (int(row["step"]), float(row["value"]))
                except (KeyError, TypeError, ValueError):
                    continue  # a row cut short by a kill
                series.setdefault(row["tag"], []).append(point)
    except OSError as error:
        raise click.ClickException(f"Cannot read {path}: {error.strerror}.") from None


def _read_events(path: pathlib.Path, series: Dict[str, Series]) -> None:
    from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

    try:
        for event in LegacyEventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    series.setdefault(value.tag, []).append((event.step, value.simple_value))
    except Exception as error:  # noqa: BLE001 - whatever the reader hits: one clear line
        raise click.ClickException(f"Cannot read TensorBoard events {path}: {error}.") from None
