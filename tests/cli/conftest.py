import os
import pathlib
import subprocess
import sys

import pytest
from click.testing import CliRunner

from pystematic_torch import _run_record
from pystematic_torch.cli import main
from tests.sweep.jobs.sweep_job import sweep_job

SCRIPT = pathlib.Path(sys.executable).parent / "pystematic-torch"


@pytest.fixture(scope="session")
def recorded(tmp_path_factory):
    """An output folder with runs of sweep-job: value 1, 2, 3 finished (5 steps of
    train/loss = value * step, val/score = value), value 4 failed, value 5 died."""
    output = tmp_path_factory.mktemp("recorded") / "output"
    for value in (1, 2, 3):
        sweep_job.run({"output_dir": str(output), "value": value, "random_seed": value})
    try:
        sweep_job.run({"output_dir": str(output), "value": 4, "mode": "raise"})
    except ValueError:
        pass
    sweep_job.run({"output_dir": str(output), "value": 5, "steps": 2})
    died = newest_run(output)
    record = _run_record.read(died)
    _run_record.write(died, {**record, "status": "running", "exit_code": None,
                             "ended_at": None, "pid": 2**22 + 7})  # fmt: skip
    return output


@pytest.fixture(scope="session")
def tensorboard_only(tmp_path_factory):
    output = tmp_path_factory.mktemp("tensorboard") / "output"
    sweep_job.run({"output_dir": str(output), "value": 2, "tensorboard_only": True})
    return newest_run(output)


def newest_run(output):
    return max((output / "sweep-job").iterdir(), key=lambda path: path.stat().st_mtime_ns)


def invoke(*args):
    """Run the command through click's runner; return (exit code, output)."""
    result = CliRunner().invoke(main, [str(arg) for arg in args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def refused(*args):
    """Run the command through click's runner, expecting it to refuse: its one error line."""
    code, output = invoke(*args)
    assert code == 1, output
    return one_error_line(output)


def run_command(*args, timeout=120, **kwargs):
    """Run the installed `pystematic-torch` console script for real."""
    return subprocess.run([str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "COLUMNS": "200"},
                          **kwargs)  # fmt: skip


def one_error_line(text):
    """The output of a refused command: exactly one line, starting with "Error: "."""
    lines = text.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), text
    return lines[0]


def write(path, text):
    """Write ``text`` to ``path`` and return the path (for parametrized inputs)."""
    path.write_text(text)
    return path
