"""The run directory's lock: held by the run's process while it runs, released however it ends.

Another process is what the lock keeps out, so every check of it runs in a subprocess.
"""
import errno
import fcntl
import pathlib
import subprocess
import sys

import pystematic
import pytest

from pystematic_torch import _run_lock

TRY_LOCK = """
import fcntl, os, sys
descriptor = os.open(sys.argv[1], os.O_RDWR)
try:
    fcntl.lockf(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
except OSError:
    print("BUSY")
else:
    print("FREE")
"""


def lock_state(run_dir: pathlib.Path) -> str:
    result = subprocess.run([sys.executable, "-c", TRY_LOCK, str(run_dir / _run_lock.LOCK_NAME)],
                            capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    return result.stdout.strip()


def run(tmp_path, body):
    seen = {}

    @pystematic.experiment
    def lock_test(params):
        seen["run_dir"] = pathlib.Path(str(pystematic.output_dir))
        seen["during"] = lock_state(seen["run_dir"])
        body()

    try:
        lock_test.run({"output_dir": str(tmp_path)})
    except ValueError:
        pass
    return seen


def fail():
    raise ValueError("deliberate")


@pytest.mark.parametrize("body", [lambda: None, fail], ids=["returns", "raises"])
def test_a_run_holds_its_directory_while_it_runs_and_releases_it_at_its_end(tmp_path, body):
    seen = run(tmp_path, body)
    assert seen["during"] == "BUSY"
    assert lock_state(seen["run_dir"]) == "FREE"
    assert _run_lock.held_dir() is None


def test_a_file_system_without_locks_is_warned_about_and_the_run_goes_on(
    tmp_path, monkeypatch, capsys
):
    def unsupported(descriptor, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "lockf", unsupported)
    seen = run(tmp_path, lambda: None)  # pystematic logs to the console and log.txt
    assert seen["during"] == "FREE"
    warning = "this file system does not support locks, so another process writing this run"
    assert warning in " ".join(capsys.readouterr().out.split())
    assert warning in " ".join((seen["run_dir"] / "log.txt").read_text().split())
