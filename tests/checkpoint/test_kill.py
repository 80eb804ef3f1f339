"""Real processes, real signals: what a kill or an ending leaves on disk."""
import csv
import signal
import sys
import time

import pytest
import torch

import pystematic_torch as pt
from tests.distributed.test_launch import Job

JOB = __import__("pathlib").Path(__file__).parent / "jobs" / "checkpoint_job.py"


def start(tmp_path, *args):
    command = [sys.executable, str(JOB), "--output-dir", str(tmp_path), "--no-cuda", *args]
    return Job(command, tmp_path)


def run_dir_of(tmp_path):
    (run_dir,) = (tmp_path / "checkpoint-job").iterdir()
    return run_dir


def kill(job):
    job.process.send_signal(signal.SIGKILL)
    code, _ = job.finish(timeout=30)
    assert code == -signal.SIGKILL


@pytest.mark.timeout(120)
def test_a_kill_right_after_a_checkpoint_loses_no_recorded_value(tmp_path):
    job = start(tmp_path, "--mode", "recorder", "--steps", "23")
    job.wait_for(r"WAITING")
    kill(job)
    run_dir = run_dir_of(tmp_path)
    with open(run_dir / "scalars.csv") as file:
        rows = list(csv.reader(file))[1:]
    steps = sorted({int(row[0]) for row in rows})
    assert steps[: 20] == list(range(20))  # every step up to the last checkpoint (step 20)
    assert sum(1 for row in rows if int(row[0]) < 20) == 20 * 50
    assert pt.load_checkpoint(run_dir)["step"] == 20


@pytest.mark.timeout(120)
def test_a_kill_during_a_background_write_leaves_the_earlier_checkpoints_whole(tmp_path):
    job = start(tmp_path, "--mode", "kill-in-fsync")
    job.wait_for(r"IN_FSYNC")
    job.wait_for(r"WAITING")
    kill(job)
    run_dir = run_dir_of(tmp_path)
    unfinished, *names = sorted(p.name for p in run_dir.iterdir() if "checkpoint" in p.name)
    assert names == ["checkpoint-1.pt"] and unfinished.startswith(".checkpoint-2.pt.")
    assert pt.load_checkpoint(run_dir)["step"] == 0  # keep_last deleted nothing
    # The next run writing there removes the killed write's temporary file.
    pt.save_checkpoint(pt.load_checkpoint(run_dir / "checkpoint-1.pt"), id=3, directory=run_dir)
    assert sorted(p.name for p in run_dir.iterdir() if "checkpoint" in p.name) == [
        "checkpoint-1.pt", "checkpoint-3.pt"]  # fmt: skip


@pytest.mark.timeout(180)
def test_a_kill_in_the_middle_of_a_large_background_write(tmp_path):
    job = start(tmp_path, "--mode", "kill-mid-write", "--megabytes", "512")
    job.wait_for(r"RETURNED")
    run_dir = run_dir_of(tmp_path)
    deadline = time.monotonic() + 60
    while not any(p.name.startswith(".checkpoint-2") for p in run_dir.iterdir()):
        assert time.monotonic() < deadline and job.process.poll() is None, job.output
        time.sleep(0.005)
    kill(job)
    assert pt.load_checkpoint(run_dir / "checkpoint-1.pt")["step"] == 0
    if (run_dir / "checkpoint-2.pt").exists():  # the kill came after the rename: whole
        assert pt.load_checkpoint(run_dir)["weights"].numel() == 512 * 2**20 // 4
    else:
        assert pt.load_checkpoint(run_dir)["step"] == 0


@pytest.mark.timeout(120)
@pytest.mark.parametrize("end, expected_code", [("normal", 0), ("raise", 1), ("sigint", None)])
def test_every_ending_waits_for_the_background_write(tmp_path, end, expected_code):
    job = start(tmp_path, "--mode", "end", "--end", end)
    if end == "sigint":
        job.wait_for(r"SAVED")
        job.process.send_signal(signal.SIGINT)
    code, _ = job.finish(timeout=60)
    assert code == expected_code if expected_code is not None else code != 0, job.output
    assert "AT_TEARDOWN complete=True" in job.output, job.output
    state = pt.load_checkpoint(run_dir_of(tmp_path) / "checkpoint-1.pt")
    assert torch.equal(state["weights"], torch.zeros(16))
