"""Stopping a sweep: real signals to a real `pystematic-torch sweep` process, then what is left."""
import pathlib
import re
import signal
import sys
import time

import psutil
import pytest

from pystematic_torch import _run_record
from tests.support.jobs import Job, assert_all_gone

JOB = pathlib.Path(__file__).parent / "jobs" / "sweep_job.py"
STOP_TIMEOUT = 3


def start_sweep(tmp_path, *grid, env=None):
    args = [sys.executable, "-m", "pystematic_torch.cli", "sweep", str(JOB), "-j", "2",
            "--output-dir", str(tmp_path / "output"), "--stop-timeout", str(STOP_TIMEOUT)]
    for option in grid:
        args += ["--grid", option]
    return Job(args, tmp_path, env=env)


def members_ready(job, count):
    job.wait_for(r"READY value=\S+ rank=0 pid=\d+", count=count, timeout=120)
    sweep = psutil.Process(job.process.pid)
    return sweep, sweep.children(recursive=True)


def records(tmp_path):
    """{(mode, value): (record, run_dir)} of every run."""
    run_dirs = sorted((tmp_path / "output" / "sweep-job").iterdir())
    return {_key(run_dir): (_run_record.read(run_dir), run_dir) for run_dir in run_dirs}


def _key(run_dir):
    text = (run_dir / "parameters.yaml").read_text()
    return tuple(re.search(rf"^{name}: (\S+)$", text, re.M)[1] for name in ("mode", "value"))


@pytest.mark.timeout(180)
def test_ctrl_c_stops_every_member_and_leaves_no_process_behind(tmp_path):
    # Four runs, two at a time: two are running when Ctrl-C comes, two never start.
    job = start_sweep(tmp_path, "value=1,2", "mode=hang,ignore_sigint")
    _, members = members_ready(job, 2)
    assert len(members) == 3  # the two runs, and the process one of them started
    interrupted_at = time.monotonic()
    job.process.send_signal(signal.SIGINT)
    code, _ = job.finish(timeout=90)
    waited = time.monotonic() - interrupted_at

    assert code == 130, job.output
    assert_all_gone(members)
    # The member that ignores SIGINT was killed once the stop timeout ran out.
    assert STOP_TIMEOUT <= waited < 60, waited
    ended = {mode: (record["status"], record["exit_code"])
             for (mode, _), (record, _) in records(tmp_path).items()}  # fmt: skip
    assert ended == {"hang": ("interrupted", 130), "ignore_sigint": ("interrupted", -9)}
    table_rows = re.findall(r"^sweep-job\s+\S+\s+\S+ \S+\s+interrupted\s", job.output, re.M)
    assert len(table_rows) == 2, job.output
    assert "2 runs were not started." in job.output
    assert "Interrupted: every run has been stopped." in job.output


@pytest.mark.timeout(180)
def test_members_interrupt_themselves_when_the_sweep_is_killed(tmp_path):
    job = start_sweep(tmp_path, "mode=hang", "value=1,2")
    sweep, members = members_ready(job, 2)
    sweep.kill()
    job.finish(timeout=30)
    assert_all_gone(members, within=60)
    for record, _ in records(tmp_path).values():
        assert (record["status"], record["exit_code"]) == ("interrupted", 130), record


@pytest.mark.timeout(180)
def test_sigterm_is_passed_on_once_so_members_save_and_end_preempted(tmp_path):
    job = start_sweep(tmp_path, "mode=sigterm", "value=1,2")
    _, members = members_ready(job, 2)
    job.process.send_signal(signal.SIGTERM)
    code, _ = job.finish(timeout=90)

    assert code == -signal.SIGTERM, job.output  # the sweep ends as SIGTERM would end it
    assert_all_gone(members)
    for record, run_dir in records(tmp_path).values():
        assert (record["status"], record["exit_code"]) == ("preempted", 143), record
        assert (run_dir / "sigterms").read_text() == "1"


@pytest.mark.timeout(180)
def test_under_slurm_sigterm_is_left_to_the_scheduler(tmp_path):
    # SLURM signals every process of the job itself; a second SIGTERM from the sweep would
    # end a run at once instead of letting it save.
    job = start_sweep(tmp_path, "mode=sigterm", env={"SLURM_JOB_ID": "4242"})
    _, members = members_ready(job, 1)
    job.process.send_signal(signal.SIGTERM)
    code, _ = job.finish(timeout=90)

    assert code == -signal.SIGTERM, job.output
    assert_all_gone(members)
    ((record, run_dir),) = records(tmp_path).values()
    assert not (run_dir / "sigterms").exists()  # it never got one
    assert (record["status"], record["exit_code"]) == ("interrupted", -9), record
