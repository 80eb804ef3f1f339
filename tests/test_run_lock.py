"""The run directory's lock: held by the run's process while it runs, released however it ends.

Another process is what the lock keeps out, so every check of it runs in a subprocess.
"""
import errno
import fcntl
import json
import os
import pathlib
import shutil
import subprocess
import sys

import pystematic
import pytest

from pystematic_torch import _run_lock

TRY_LOCK = """
import fcntl, os, sys
descriptor = os.open(sys.argv[1], os.O_RDWR)
try:
    fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
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


def test_copying_its_own_run_directory_does_not_release_the_lock(tmp_path):
    # Opening and closing the lock file (copytree, tar, an artifact upload) would release a
    # POSIX record lock: the run would look free while it still writes.
    after_copy = []

    def copy_the_run():
        run_dir = pathlib.Path(str(pystematic.output_dir))
        shutil.copytree(run_dir, tmp_path / "copy")
        after_copy.append(lock_state(run_dir))

    seen = run(tmp_path / "runs", copy_the_run)
    assert seen["during"] == "BUSY" and after_copy == ["BUSY"]
    assert json.loads((tmp_path / "copy" / _run_lock.LOCK_NAME).read_text())["pid"] == os.getpid()


def test_a_forked_child_does_not_keep_the_run_locked_after_its_parent_let_go(tmp_path):
    # A DataLoader worker outliving a killed run must not hold the run: the same command
    # started again right away would be refused.
    read_end, write_end = os.pipe()

    def fork_a_worker():
        child = os.fork()
        if child == 0:
            os.close(write_end)
            os.read(read_end, 1)  # lives on until the test lets it go
            os._exit(0)
        seen["child"] = child

    seen = {}
    run_dir = run(tmp_path, fork_a_worker)["run_dir"]
    try:
        assert lock_state(run_dir) == "FREE"  # the run ended; its child is still alive
    finally:
        os.write(write_end, b"x")
        os.waitpid(seen["child"], 0)


def test_a_file_system_without_locks_is_warned_about_and_the_run_goes_on(
    tmp_path, monkeypatch, capsys
):
    def unsupported(descriptor, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", unsupported)
    seen = run(tmp_path, lambda: None)  # pystematic logs to the console and log.txt
    assert seen["during"] == "FREE"
    warning = "this file system does not support locks, so another process writing this run"
    assert warning in " ".join(capsys.readouterr().out.split())
    assert warning in " ".join((seen["run_dir"] / "log.txt").read_text().split())
