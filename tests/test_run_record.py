"""run.json: written at start and at every kind of end, atomically, by rank 0 only."""
import datetime
import json
import os
import pathlib
import signal
import socket
import sys

import pytest

import pystematic_torch
from pystematic_torch import _run_record
from tests.support.jobs import Job
from tests.sweep.jobs.sweep_job import sweep_job

ROOT = pathlib.Path(__file__).parents[1]
JOB = ROOT / "tests" / "sweep" / "jobs" / "sweep_job.py"
DDP_JOB = ROOT / "tests" / "distributed" / "jobs" / "ddp_job.py"


def run_in_process(tmp_path, **params):
    try:
        sweep_job.run({"output_dir": str(tmp_path), **params})
    except BaseException as error:  # noqa: BLE001 - the record is what these tests check
        outcome = error
    else:
        outcome = None
    (run_dir,) = (tmp_path / "sweep-job").iterdir()
    return _run_record.read(run_dir), outcome


def test_a_finished_run_records_who_ran_it_and_when(tmp_path):
    record, _ = run_in_process(tmp_path, mode="ok")
    assert record["status"] == "finished" and record["exit_code"] == 0
    assert record["experiment"] == "sweep-job"
    assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
    assert record["world_size"] == 1 and record["version"] == pystematic_torch.__version__
    assert record["resumed_from"] is None
    started = datetime.datetime.fromisoformat(record["started_at"])
    ended = datetime.datetime.fromisoformat(record["ended_at"])
    assert started.tzinfo is not None and started <= ended


@pytest.mark.parametrize(
    "mode, status, exit_code",
    [("raise", "failed", 1), ("keyboard", "interrupted", 130), ("preempt", "preempted", 143)],
)
def test_every_way_of_ending_is_recorded(tmp_path, mode, status, exit_code):
    record, _ = run_in_process(tmp_path, mode=mode)
    assert (record["status"], record["exit_code"]) == (status, exit_code)
    assert record["ended_at"] is not None


def test_the_checkpoint_resumed_from_is_recorded_as_a_file(tmp_path):
    old_run = tmp_path / "old"
    ctx = pystematic_torch.Context()
    ctx.epoch = 1
    pystematic_torch.save_checkpoint(ctx.state_dict(), id=1, directory=old_run)
    record, _ = run_in_process(tmp_path / "new", mode="ok", checkpoint=str(old_run))
    assert record["resumed_from"] == str((old_run / "checkpoint-1.pt").resolve())


def test_a_checkpoint_that_cannot_be_resolved_is_recorded_as_given(tmp_path):
    record, _ = run_in_process(tmp_path, mode="ok", checkpoint="nowhere/latest")
    assert record["resumed_from"] == "nowhere/latest"


def test_a_record_replaces_the_old_one_whole_or_not_at_all(tmp_path, monkeypatch):
    _run_record.write(tmp_path, {"status": "running"})

    def failing_replace(source, target):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError):
        _run_record.write(tmp_path, {"status": "finished"})
    assert _run_record.read(tmp_path) == {"status": "running"}
    assert [path.name for path in tmp_path.iterdir()] == ["run.json"]  # no temporary left


def test_a_record_that_cannot_be_written_does_not_stop_the_run(tmp_path, monkeypatch, capsys):
    def full_disk(run_dir, record):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_run_record, "write", full_disk)
    record, outcome = run_in_process(tmp_path, mode="ok")
    assert outcome is None and record is None
    logged = " ".join(capsys.readouterr().out.split())  # the run's log, as printed
    assert logged.count("Could not write the run's status record") == 2  # start and end
    assert "No space left on device" in logged


def test_unreadable_records_read_as_none(tmp_path):
    assert _run_record.read(tmp_path) is None
    (tmp_path / "run.json").write_text("{half")
    assert _run_record.read(tmp_path) is None
    (tmp_path / "run.json").write_text("[1, 2]")
    assert _run_record.read(tmp_path) is None


def test_running_is_checked_against_the_recorded_process():
    me = {"status": "running", "pid": os.getpid(), "host": socket.gethostname(),
          "process_started": _run_record._process_start_time(os.getpid())}  # fmt: skip
    assert _run_record.status(me) == "running"
    # The same pid, but a process started at another time: the pid was reused.
    assert _run_record.status({**me, "process_started": me["process_started"] - 100}) == "died"
    assert _run_record.status({**me, "pid": 2**22 + 1}) == "died"
    # Another machine's run cannot be checked from here.
    assert _run_record.status({**me, "host": "elsewhere", "pid": 2**22 + 1}) == "running"
    assert _run_record.status({**me, "status": "finished"}) == "finished"


@pytest.mark.timeout(120)
def test_a_killed_run_still_says_running_and_reads_as_died(tmp_path):
    job = Job([sys.executable, str(JOB), "--mode", "hang", "--output-dir", str(tmp_path)],
              tmp_path)  # fmt: skip
    job.wait_for(r"READY value=1 rank=0 pid=\d+")
    (run_dir,) = (tmp_path / "sweep-job").iterdir()
    record = _run_record.read(run_dir)
    assert record["pid"] == job.process.pid and _run_record.status(record) == "running"
    job.process.send_signal(signal.SIGKILL)
    job.finish()
    record = _run_record.read(run_dir)
    assert record["status"] == "running" and _run_record.status(record) == "died"


@pytest.mark.timeout(150)
def test_only_rank_0_writes_the_record_of_a_distributed_run(tmp_path):
    job = Job([sys.executable, str(DDP_JOB), "--distributed", "--nproc_per_node", "2",
               "--no-cuda", "--output-dir", str(tmp_path)], tmp_path)  # fmt: skip
    code, _ = job.finish()
    assert code == 0, job.output
    (run_dir,) = (tmp_path / "ddp-job").iterdir()
    assert not list(run_dir.glob(".run.json*"))  # no temporary left over
    assert (run_dir / "run.json").exists()
    record = _run_record.read(run_dir)
    assert record["pid"] == job.process.pid and record["world_size"] == 2
    assert record["status"] == "finished"
    assert json.loads((run_dir / "run.json").read_text()) == record


def test_exit_codes_map_to_statuses():
    assert [_run_record.status_of_exit_code(code) for code in (0, 1, 130, 143, -9, 3)] == [
        "finished", "failed", "interrupted", "preempted", "failed", "failed",
    ]  # fmt: skip


def test_ctrl_c_during_the_clean_up_still_closes_everything_and_records_the_interrupt(tmp_path):
    # A recorder whose close is slow, Ctrl-C meanwhile: every other clean-up still runs,
    # run.json says interrupted, and the process can run the next experiment.
    import pystematic

    from pystematic_torch import _session

    seen = {}

    def ctrl_c_in_a_clean_up():
        raise KeyboardInterrupt

    @pystematic.experiment
    def interrupted_close(params):
        seen["run_dir"] = pathlib.Path(str(pystematic.output_dir))
        recorder = pystematic_torch.Recorder(tensorboard=False)  # closed after the next one
        recorder.scalar("loss", 1.0)
        _session.call_at_exit(ctrl_c_in_a_clean_up)

    with pytest.raises(KeyboardInterrupt):
        interrupted_close.run({"output_dir": str(tmp_path)})
    record = _run_record.read(seen["run_dir"])
    assert (record["status"], record["exit_code"]) == ("interrupted", 130)
    assert (seen["run_dir"] / "scalars.csv").read_text().splitlines() == ["step,tag,value",
                                                                          "0,loss,1.0"]  # fmt: skip
    record, outcome = run_in_process(tmp_path / "next", mode="ok")
    assert outcome is None and record["status"] == "finished"
