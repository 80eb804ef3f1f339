"""Every way a run can end keeps what it recorded: real processes, real signals and crashes.

The matrix of issue "stop anywhere, lose nothing": {SIGTERM, SIGINT, SIGKILL of one rank, an
exception in one rank, an exception at teardown} x {1 process, 2 gloo ranks}, with a
Recorder (TensorBoard, CSV, HDF5) and an HDF5Writer active and a backlog of queued values.
Each case asserts what is on disk afterwards (every value recorded before the event, in
files that open), the exit code, the time to exit, that no process survives, and how many
tracebacks were printed.
"""
import csv
import json
import os
import pathlib
import re
import signal
import time

import h5py
import pytest
import torch

from tests.support.jobs import Job, assert_all_gone, family, job_args

JOB = pathlib.Path(__file__).parent / "jobs" / "record.py"
SAVE_FAILS = pathlib.Path(__file__).parent / "jobs" / "save_fails.py"
DISTRIBUTED = ("--distributed", "--nproc_per_node", "2")
SECONDS_TO_EXIT = 45


def start(tmp_path, *args, ranks=1):
    extra = DISTRIBUTED if ranks == 2 else ()
    return Job(job_args(*extra, *args, script=JOB, output=tmp_path), tmp_path)


def printed_steps(job, rank):
    return sorted(int(s) for s in re.findall(rf"STEP rank={rank} step=(\d+)", job.output))


def run_dir(tmp_path):
    (directory,) = (tmp_path / "record-job").iterdir()
    return directory


def csv_steps(directory):
    with open(directory / "scalars.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return sorted(int(row["step"]) for row in rows if row["tag"] == "train/step")


def tensorboard_steps(directory):
    from tensorboard.backend.event_processing import event_accumulator

    accumulator = event_accumulator.EventAccumulator(
        str(directory), size_guidance={event_accumulator.SCALARS: 0}
    )
    accumulator.Reload()
    return sorted(event.step for event in accumulator.Scalars("train/step"))


def hdf5_steps(directory):
    with h5py.File(directory / "recordings.h5", "r") as handle:
        return sorted(handle["train/step.steps"][:].tolist())


def writer_rows(directory, rank, ranks):
    name = "rows.h5" if ranks == 1 else f"rows.rank{rank}.h5"
    with h5py.File(directory / name, "r") as handle:
        return sorted(handle["step"][:].tolist())


def assert_recorded(directory, steps, ranks, job):
    """Every step rank 0 printed is in all three recorder files; each rank's rows too."""
    assert steps, job.output
    for reader in (csv_steps, tensorboard_steps, hdf5_steps):
        on_disk = reader(directory)
        assert set(steps) <= set(on_disk), (reader.__name__, steps, on_disk)
        assert len(on_disk) == len(set(on_disk)), reader.__name__  # no step written twice
    for rank in range(ranks):
        rows = writer_rows(directory, rank, ranks)
        assert set(printed_steps(job, rank)) <= set(rows), (rank, rows)


def end_of(job, processes):
    code, _ = job.finish(timeout=SECONDS_TO_EXIT + 30)
    assert_all_gone(processes, within=20)
    return code


def signalled_at_step_5(tmp_path, ranks, signum):
    """Start a run, signal its main process once rank 0 reached step 5, wait for its end;
    check that it ended in time, with no process left and no traceback."""
    job = start(tmp_path, ranks=ranks)
    job.wait_for(r"STEP rank=0 step=5")
    processes = family(job)
    sent = time.monotonic()
    job.process.send_signal(signum)
    code = end_of(job, processes)
    assert time.monotonic() - sent < SECONDS_TO_EXIT
    assert "Traceback" not in job.output
    return job, code


@pytest.mark.timeout(240)
@pytest.mark.parametrize("ranks", [1, 2])
def test_sigterm_saves_a_resumable_checkpoint_and_exits_143(tmp_path, ranks):
    job, code = signalled_at_step_5(tmp_path, ranks, signal.SIGTERM)
    assert code == 143, job.output
    assert "Preempted by SIGTERM" in job.output
    directory = run_dir(tmp_path)
    assert_recorded(directory, printed_steps(job, 0), ranks, job)
    state = torch.load(directory / "checkpoint-preempted.pt", weights_only=True)
    steps_taken = len(printed_steps(job, 0))
    # The loader stopped after the same batch on every rank: the one the last step used.
    assert state["recorder"]["count"] == steps_taken
    assert state["loader"]["epoch"] * 16 // ranks + state["loader"]["position"] == steps_taken
    if ranks == 2:
        assert printed_steps(job, 0) == printed_steps(job, 1)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("ranks", [1, 2])
def test_sigterm_to_every_process_of_the_job_preempts_too(tmp_path, ranks):
    # What SLURM's scancel --signal=TERM and its time limit do: the DataLoader workers get
    # the signal as well, and a killed worker used to fail the run before the ranks agreed
    # where to stop.
    extra = DISTRIBUTED if ranks == 2 else ()
    job = Job(job_args(*extra, "--dataset", "samples", script=JOB, output=tmp_path), tmp_path,
              own_process_group=True)  # fmt: skip
    job.wait_for(r"STEP rank=0 step=5")
    processes = family(job)
    assert len(processes) >= 2 * ranks  # each rank's worker is there to be signalled
    os.killpg(job.process.pid, signal.SIGTERM)
    code = end_of(job, processes)
    assert code == 143, job.output
    assert "Preempted by SIGTERM" in job.output and "Traceback" not in job.output
    directory = run_dir(tmp_path)
    assert_recorded(directory, printed_steps(job, 0), ranks, job)
    state = torch.load(directory / "checkpoint-preempted.pt", weights_only=True)
    assert state["recorder"]["count"] == len(printed_steps(job, 0))


@pytest.mark.timeout(240)
@pytest.mark.parametrize("ranks", [1, 2])
def test_sigint_flushes_everything_and_exits_130(tmp_path, ranks):
    job, code = signalled_at_step_5(tmp_path, ranks, signal.SIGINT)
    assert code == 130, job.output
    assert_recorded(run_dir(tmp_path), printed_steps(job, 0), ranks, job)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("ranks", [1, 2])
def test_an_exception_in_one_rank_shows_one_traceback_and_loses_nothing(tmp_path, ranks):
    fail_rank = ranks - 1
    job = start(tmp_path, "--event", "raise", "--fail-rank", str(fail_rank), ranks=ranks)
    job.wait_for(r"READY rank=0")
    processes = family(job)
    code = end_of(job, processes)
    assert code == 1, job.output
    assert job.output.count("Traceback") == 1, job.output
    assert f"ValueError: deliberate failure on rank {fail_rank} at step 5" in job.output
    assert_recorded(run_dir(tmp_path), printed_steps(job, 0), ranks, job)
    assert "DataLoader worker" not in job.output


@pytest.mark.timeout(240)
@pytest.mark.parametrize("ranks", [1, 2])
def test_a_failing_close_at_teardown_fails_the_run_and_the_rest_is_written(tmp_path, ranks):
    job = start(tmp_path, "--event", "teardown", "--steps", "8", ranks=ranks)
    job.wait_for(r"READY rank=0")
    processes = family(job)
    code = end_of(job, processes)
    assert code != 0, job.output
    assert "No space left on device" in job.output
    assert "broken-disk" in job.output
    assert printed_steps(job, 0) == list(range(8))
    assert_recorded(run_dir(tmp_path), list(range(8)), ranks, job)
    # run.json was written as the experiment returned; it must say how the process ended.
    record = json.loads((run_dir(tmp_path) / "run.json").read_text())
    assert (record["status"], record["exit_code"]) == ("failed", 1)


@pytest.mark.timeout(240)
def test_sigkill_of_one_rank_ends_the_job_and_the_healthy_rank_flushes(tmp_path):
    job = start(tmp_path, ranks=2)
    job.wait_for(r"STEP rank=1 step=5")
    processes = family(job)
    (pid,) = re.findall(r"READY rank=1 pid=(\d+)", job.output)
    sent = time.monotonic()
    __import__("os").kill(int(pid), signal.SIGKILL)
    code = end_of(job, processes)
    assert code != 0, job.output
    assert time.monotonic() - sent < SECONDS_TO_EXIT
    assert "Traceback" not in job.output
    assert "rank 1 exited with code -9" in job.output
    directory = run_dir(tmp_path)
    for reader in (csv_steps, tensorboard_steps, hdf5_steps):
        assert set(printed_steps(job, 0)) <= set(reader(directory)), reader.__name__
    assert set(printed_steps(job, 0)) <= set(writer_rows(directory, 0, 2))


@pytest.mark.timeout(240)
def test_sigusr1_is_a_preemption_too_and_exits_138(tmp_path):
    job = start(tmp_path)
    job.wait_for(r"STEP rank=0 step=3")
    processes = family(job)
    job.process.send_signal(signal.SIGUSR1)
    code = end_of(job, processes)
    assert code == 138, job.output
    assert "Preempted by SIGUSR1" in job.output and "Traceback" not in job.output
    directory = run_dir(tmp_path)
    assert_recorded(directory, printed_steps(job, 0), 1, job)
    assert (directory / "checkpoint-preempted.pt").exists()
    record = json.loads((directory / "run.json").read_text())
    assert (record["status"], record["exit_code"]) == ("preempted", 138)


@pytest.mark.timeout(120)
def test_a_second_sigterm_ends_the_process_at_once(tmp_path):
    # A loop over a plain DataLoader has no batch boundary the run can stop at by itself.
    plain_loop = pathlib.Path(__file__).parents[1] / "distributed" / "jobs" / "ddp_job.py"
    job = Job(job_args("--mode", "hang", script=plain_loop, output=tmp_path), tmp_path)
    job.wait_for(r"READY rank=0")
    processes = family(job)
    job.process.send_signal(signal.SIGTERM)
    job.wait_for(r"SIGTERM received")
    sent = time.monotonic()
    job.process.send_signal(signal.SIGTERM)
    code = end_of(job, processes)
    assert code == -signal.SIGTERM, job.output
    assert time.monotonic() - sent < 10


@pytest.mark.timeout(240)
def test_sigkill_right_after_a_checkpoint_loses_nothing_recorded_before_it(tmp_path):
    job = start(tmp_path, "--checkpoint-every", "5")
    job.wait_for(r"SAVED step=9")
    processes = family(job)
    job.process.send_signal(signal.SIGKILL)
    assert end_of(job, processes) == -signal.SIGKILL
    directory = run_dir(tmp_path)
    saved = list(range(10))  # everything recorded before the second checkpoint returned
    for reader in (csv_steps, tensorboard_steps, hdf5_steps):
        assert set(saved) <= set(reader(directory)), reader.__name__  # and the files open
    assert set(saved) <= set(writer_rows(directory, 0, 1))
    assert torch.load(directory / "checkpoint-10.pt", weights_only=True)["step"] == 10


@pytest.mark.timeout(240)
@pytest.mark.parametrize("ranks", [1, 2])
def test_a_save_that_fails_half_way_ends_the_run_in_seconds(tmp_path, ranks):
    # pystematic logs a failed run's traceback with each frame's locals; with torch.save's
    # frames in it, listing an 80 MB storage element by element took many minutes.
    args = DISTRIBUTED if ranks == 2 else ()
    job = Job(job_args(*args, script=SAVE_FAILS, output=tmp_path), tmp_path)
    processes = family(job)
    code, seconds = job.finish(timeout=SECONDS_TO_EXIT + 30)
    assert code == 1, job.output
    assert seconds < SECONDS_TO_EXIT, job.output
    assert "OSError: No space left on device (simulated)" in job.output
    assert_all_gone(processes)
    (directory,) = (tmp_path / "save-fails").iterdir()
    assert json.loads((directory / "run.json").read_text())["status"] == "failed"
    assert "No space left on device (simulated)" in (directory / "log.txt").read_text()
