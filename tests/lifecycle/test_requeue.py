"""``--checkpoint latest``: one command for a job's first start and every requeue."""
import csv
import json
import os
import pathlib
import re
import signal

import psutil
import pytest

import pystematic_torch as pt
from tests.support.damage import flip_a_bit_in
from tests.support.jobs import Job, assert_all_gone, family, job_args

JOB = pathlib.Path(__file__).parent / "jobs" / "record.py"
COMMAND = ("--checkpoint", "latest", "--steps", "30", "--checkpoint-every", "5",
           "--backlog", "5", "--pause-at", "12")  # fmt: skip


def csv_rows(directory):
    with open(directory / "scalars.csv", newline="") as handle:
        return [(int(row["step"]), row["tag"]) for row in csv.DictReader(handle)]


def processes_of(tmp_path):
    """Every live process whose command line names ``tmp_path`` (the jobs' output dir)."""
    found = []
    for process in psutil.process_iter():
        try:
            if str(tmp_path) in " ".join(process.cmdline()):
                found.append(process)
        except psutil.Error:
            pass
    return found


def tensorboard_steps(directory):
    from tensorboard.backend.event_processing import event_accumulator

    accumulator = event_accumulator.EventAccumulator(
        str(directory), size_guidance={event_accumulator.SCALARS: 0}
    )
    accumulator.Reload()
    return [event.step for event in accumulator.Scalars("train/step")]


def paused_at_step_12(tmp_path, ranks):
    """The requeue command and its first start, waiting at step 12 for a stop signal."""
    extra = ("--distributed", "--nproc_per_node", "2") if ranks == 2 else ()
    args = job_args(*extra, *COMMAND, script=JOB, output=tmp_path)
    first = Job(args, tmp_path)
    first.wait_for(r"STEP rank=0 step=12")  # rank 0 waits there for the signal
    return args, first


@pytest.mark.timeout(300)
@pytest.mark.parametrize("ranks", [1, 2])
def test_the_same_command_starts_then_continues_the_run_in_its_own_directory(tmp_path, ranks):
    args, first = paused_at_step_12(tmp_path, ranks)
    first.process.send_signal(signal.SIGTERM)  # the scheduler preempts the job ...
    code, _ = first.finish()
    assert code == 143, first.output
    # rich wraps log lines at the console's width: compare with the line breaks undone.
    assert "no earlier run of 'record-job' with a checkpoint" in " ".join(first.output.split())

    second = Job(args, tmp_path)  # ... and requeues the very same command
    code, _ = second.finish()
    assert code == 0, second.output
    (run_dir,) = (tmp_path / "record-job").iterdir()  # one run, continued in place
    resumed_at = int(re.search(r"READY rank=0 pid=\d+ step=(\d+)", second.output).group(1))
    assert resumed_at >= 13
    assert "Continuing run" in (run_dir / "log.txt").read_text()

    rows = csv_rows(run_dir)
    steps = [step for step, tag in rows if tag == "train/step"]
    assert steps == list(range(30))  # no step missing, none written twice
    assert len(rows) == len(set(rows))
    assert sorted(tensorboard_steps(run_dir)) == list(range(30))
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "finished"
    assert "checkpoint-preempted.pt" in (record["resumed_from"] or "")


@pytest.mark.timeout(300)
def test_a_requeue_past_a_damaged_checkpoint_continues_from_the_one_saved_before(tmp_path):
    def args(steps):
        return job_args("--checkpoint", "latest", "--checkpoint-every", "5", "--backlog", "5",
                        "--steps", str(steps), script=JOB, output=tmp_path)  # fmt: skip

    code, _ = Job(args(12), tmp_path).finish()  # saves at steps 5 and 10
    assert code == 0
    (run_dir,) = (tmp_path / "record-job").iterdir()
    flip_a_bit_in(run_dir / "checkpoint-10.pt")  # the disk changed a weight of the newest

    second = Job(args(20), tmp_path)
    code, _ = second.finish()
    assert code == 0, second.output
    assert re.search(r"READY rank=0 pid=\d+ step=5\b", second.output), second.output
    output = " ".join(second.output.split())  # rich wraps log lines at the console's width
    assert "Skipped checkpoint-10.pt in" in output and "which is damaged: its record" in output
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "finished"
    assert record["resumed_from"].endswith("checkpoint-5.pt")
    # The recordings continue from the checkpoint actually loaded: every step exactly once.
    rows = csv_rows(run_dir)
    assert [step for step, tag in rows if tag == "train/step"] == list(range(20))
    assert len(rows) == len(set(rows))
    assert sorted(tensorboard_steps(run_dir)) == list(range(20))
    assert pt.load_checkpoint(run_dir / "checkpoint-10.pt")["step"] == 10  # saved anew, whole


@pytest.mark.timeout(300)
@pytest.mark.parametrize("ranks", [1, 2])
def test_the_same_command_started_while_the_run_still_writes_is_refused(tmp_path, ranks):
    args, first = paused_at_step_12(tmp_path, ranks)  # checkpoints 5 and 10 exist
    (run_dir,) = (tmp_path / "record-job").iterdir()
    before = {path.name: path.read_bytes() for path in run_dir.iterdir() if path.is_file()}

    twice = Job(args, tmp_path)  # a requeue racing the job's first instance
    code, seconds = twice.finish(timeout=90)
    assert code == 1, twice.output
    pid = json.loads((run_dir / "run.json").read_text())["pid"]
    message = " ".join(twice.output.split())
    assert (f"Error: --checkpoint latest: the newest run of 'record-job', {run_dir}, is still "
            f"being written by another process (process {pid} on ") in message  # fmt: skip
    assert "Traceback" not in twice.output and "STEP" not in twice.output
    assert_all_gone(set(processes_of(tmp_path)) - set(family(first)))
    after = {path.name: path.read_bytes() for path in run_dir.iterdir() if path.is_file()}
    assert after == before  # the refused command wrote nothing into the run

    first.process.send_signal(signal.SIGTERM)
    code, _ = first.finish()
    assert code == 143, first.output
    again = Job(args, tmp_path)  # once the first instance has ended, the run continues
    code, _ = again.finish()
    assert code == 0, again.output
    steps = [step for step, tag in csv_rows(run_dir) if tag == "train/step"]
    assert steps == list(range(30))
    assert sorted(tensorboard_steps(run_dir)) == list(range(30))


@pytest.mark.timeout(300)
def test_a_requeue_right_after_a_sigkill_is_not_refused_by_the_killed_runs_workers(tmp_path):
    # The killed run's DataLoader workers notice their parent is gone only after a few
    # seconds; meanwhile they must hold neither the run nor its HDF5 files.
    args = job_args(*COMMAND, "--dataset", "samples", script=JOB, output=tmp_path)
    first = Job(args, tmp_path)
    first.wait_for(r"STEP rank=0 step=12")  # checkpoints 5 and 10 exist
    (pid,) = re.findall(r"READY rank=0 pid=(\d+)", first.output)
    os.kill(int(pid), signal.SIGKILL)  # the run only: its worker lives on for a while
    requeued = Job(job_args(*COMMAND[:-2], "--dataset", "samples", script=JOB, output=tmp_path),
                   tmp_path)  # fmt: skip
    code, _ = requeued.finish()
    assert code == 0, requeued.output
    first.finish()
    (run_dir,) = (tmp_path / "record-job").iterdir()
    steps = [step for step, tag in csv_rows(run_dir) if tag == "train/step"]
    assert steps == list(range(30))
    assert json.loads((run_dir / "run.json").read_text())["status"] == "finished"
