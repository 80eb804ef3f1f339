"""Finding runs on disk and reading what each says about itself."""
import dataclasses
import datetime
import os
import pathlib
from typing import Any, Dict, Iterable, List, Optional, Sequence

import click

from .. import _run_record

PARAMETERS_FILE = "parameters.yaml"
UNKNOWN = "unknown"
# Differ between runs without saying anything about them: a fresh random seed per run,
# pystematic's own bookkeeping.
NOISY_PARAMETERS = frozenset({"random_seed", "subprocess", "local_rank", "params_file"})
_DIR_TIME_FORMAT = "%Y-%m-%d_%H-%M-%S"


@dataclasses.dataclass
class Run:
    """One run directory and what its files say."""

    path: pathlib.Path
    experiment: str
    started: Optional[datetime.datetime]
    status: str
    duration_s: Optional[float]
    exit_code: Optional[int]
    params: Dict[str, Any]


def is_run_dir(path: pathlib.Path) -> bool:
    return (path / _run_record.RECORD_NAME).is_file() or (path / PARAMETERS_FILE).is_file()


def find_runs(root: pathlib.Path) -> List[Run]:
    """Every run at or below ``root``, oldest first.

    Raises:
        click.ClickException: ``root`` is not a directory.
    """
    if not root.is_dir():
        what = "does not exist" if not root.exists() else "is not a directory"
        raise click.ClickException(f"{root} {what}; give a run directory or an output directory.")
    if is_run_dir(root):
        return [load_run(root)]
    found = []
    for directory, subdirectories, _ in os.walk(root):
        subdirectories.sort()
        for name in list(subdirectories):
            path = pathlib.Path(directory) / name
            if name.startswith("."):
                subdirectories.remove(name)
            elif is_run_dir(path):
                subdirectories.remove(name)  # a run holds no further runs
                found.append(load_run(path))
    return sorted(found, key=_start_order)


def runs_of(paths: Iterable[pathlib.Path]) -> List[Run]:
    """The runs at or below each path, each once, in the order found.

    Raises:
        click.ClickException: a path is not a directory or holds no run.
    """
    runs, seen = [], set()
    for path in paths:
        found = find_runs(path)
        if not found:
            raise click.ClickException(f"No runs found in {path} (no {PARAMETERS_FILE} or "
                                       f"{_run_record.RECORD_NAME} at or below it).")  # fmt: skip
        for run in found:
            if run.path.resolve() not in seen:
                seen.add(run.path.resolve())
                runs.append(run)
    return runs


def load_run(path: pathlib.Path) -> Run:
    record = _run_record.read(path) or {}
    started = _parse_time(record.get("started_at")) or _time_from_name(path.name)
    status = _run_record.status(record) if record else UNKNOWN
    ended = _parse_time(record.get("ended_at"))
    if ended is None and status == _run_record.RUNNING:
        ended = datetime.datetime.now().astimezone()
    elif ended is None and status == _run_record.DIED:
        ended = _last_write(path)  # it ran at least until it last wrote something
    duration = (ended - started).total_seconds() if started and ended else None
    return Run(
        path=path,
        experiment=record.get("experiment") or path.parent.name,
        started=started,
        status=status,
        duration_s=duration,
        exit_code=record.get("exit_code"),
        params=read_parameters(path),
    )


def read_parameters(run_dir: pathlib.Path) -> Dict[str, Any]:
    import yaml

    try:
        with open(run_dir / PARAMETERS_FILE, encoding="utf-8") as file:
            params = yaml.safe_load(file)
    except (OSError, yaml.YAMLError):
        return {}
    return params if isinstance(params, dict) else {}


def differing_parameters(runs: Sequence[Run], always: Sequence[str] = ()) -> List[str]:
    """Names of the parameters whose values are not the same in every run, plus ``always``."""
    names: List[str] = []
    for run in runs:
        names.extend(name for name in run.params if name not in names)
    differing = [
        name for name in names
        if name not in NOISY_PARAMETERS
        and len({repr(run.params.get(name)) for run in runs}) > 1
    ]  # fmt: skip
    return differing + [name for name in always if name not in differing]


def label(run: Run, names: Sequence[str]) -> str:
    """How a run is named in a table or a legend: its differing parameters, else its folder."""
    if not names:
        return run.path.name
    return ", ".join(f"{name}={run.params.get(name)}" for name in names)


def format_duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, seconds = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


def _start_order(run: Run):
    started = run.started.timestamp() if run.started else float("inf")
    return started, str(run.path)


def _parse_time(text: Any) -> Optional[datetime.datetime]:
    if not isinstance(text, str):
        return None
    try:
        return datetime.datetime.fromisoformat(text).astimezone()
    except ValueError:
        return None


def _time_from_name(name: str) -> Optional[datetime.datetime]:
    """pystematic names run directories ``<date>_<time>_<suffix>``, in local time."""
    try:
        return datetime.datetime.strptime(name[:19], _DIR_TIME_FORMAT).astimezone()
    except ValueError:
        return None


def _last_write(path: pathlib.Path) -> Optional[datetime.datetime]:
    times = [entry.stat().st_mtime for entry in path.iterdir() if entry.is_file()]
    if not times:
        return None
    return datetime.datetime.fromtimestamp(max(times)).astimezone()
