"""Distributed runs on a real one-node SLURM cluster: srun, sbatch and scancel, for real."""
import json
import os
import pathlib
import re
import subprocess
import sys
import time

import pytest
import torch
import yaml

from pystematic_torch import _run_lock
from tests.support import slurm

JOB = pathlib.Path(__file__).parent / "jobs" / "ddp_job.py"
EXAMPLES = pathlib.Path(__file__).parents[2] / "examples"
RECORD_JOB = pathlib.Path(__file__).parents[1] / "lifecycle" / "jobs" / "record.py"
DONE = r"DONE rank=(\d) world=2 checksum=(-?\d+\.\d{10})"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = slurm.missing()
    if reason is not None:
        pytest.skip(reason)
    started = slurm.Cluster(tmp_path_factory.mktemp("slurm")).start()
    yield started
    started.stop()


def batch_script(tmp_path, command):
    """An sbatch script asking for two tasks, its output in ``slurm-<job id>.out``."""
    script = tmp_path / "job.sh"
    script.write_text(f"#!/bin/bash\n#SBATCH -n 2\n#SBATCH -o {tmp_path}/slurm-%j.out\n{command}\n")
    return script


def the_run_directory(output: pathlib.Path, experiment: str) -> pathlib.Path:
    runs = list((output / experiment).iterdir())
    assert len(runs) == 1, runs  # one run, one directory, whichever process started it
    return runs[0]


def check_one_run_of_two_ranks(run_dir: pathlib.Path):
    ranks = json.loads((run_dir / "ranks.json").read_text())
    assert [entry["rank"] for entry in ranks["ranks"]] == [0, 1]
    assert (run_dir / "log.txt").exists() and (run_dir / "log.rank-1.txt").exists()
    assert yaml.safe_load((run_dir / "parameters.yaml").read_text())["random_seed"] is not None
    return ranks


@pytest.mark.timeout(300)
def test_srun_starts_a_world_of_two_that_writes_one_run_directory(cluster, tmp_path):
    result = cluster.run(["srun", "-n", "2", sys.executable, str(JOB), "--output-dir",
                          str(tmp_path), "--no-cuda", "--distributed"], cwd=tmp_path)  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    done = dict(re.findall(DONE, output))
    assert set(done) == {"0", "1"} and done["0"] == done["1"], output  # trained together
    assert "[RANK 1]" in output  # console lines carry the global rank
    ranks = check_one_run_of_two_ranks(the_run_directory(tmp_path, "ddp-job"))
    assert ranks["launcher"] == "srun"
    job_id = int(ranks["slurm_job_id"])
    assert ranks["master"].endswith(f":{10000 + job_id % 20000}")  # the port follows the job


@pytest.mark.timeout(300)
def test_an_sbatch_script_running_the_built_in_launcher_starts_its_own_ranks(cluster, tmp_path):
    script = batch_script(tmp_path, f"{sys.executable} {JOB} --output-dir {tmp_path} "
                                    "--no-cuda --distributed --nproc_per_node 2")
    result = cluster.run(["sbatch", "--wait", str(script)], cwd=tmp_path)
    (log,) = tmp_path.glob("slurm-*.out")
    output = log.read_text()
    assert result.returncode == 0, result.stdout + result.stderr + output
    done = dict(re.findall(DONE, output))
    assert set(done) == {"0", "1"} and done["0"] == done["1"], output
    ranks = check_one_run_of_two_ranks(the_run_directory(tmp_path, "ddp-job"))
    assert ranks["launcher"] == "pystematic-torch"  # not mistaken for two srun tasks


@pytest.mark.timeout(300)
def test_scancel_with_sigterm_saves_the_preemption_checkpoint(cluster, tmp_path):
    script = batch_script(tmp_path, f"srun {sys.executable} -u {EXAMPLES / 'ddp.py'} "
                                    f"--output-dir {tmp_path} --no-cuda --distributed "
                                    "--epochs 1000 --step-delay 0.02")
    submitted = cluster.run(["sbatch", "--parsable", str(script)], cwd=tmp_path)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip().split(";")[0]
    log = tmp_path / f"slurm-{job_id}.out"
    deadline = time.monotonic() + 120
    while "epoch 1: loss" not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline, log.read_text() if log.exists() else "no output"
        time.sleep(0.2)
    assert cluster.run(["scancel", "--signal=TERM", job_id]).returncode == 0
    run_dir = the_run_directory(tmp_path, "ddp-example")
    while cluster.run(["squeue", "--noheader", "--jobs", job_id]).stdout.strip():
        assert time.monotonic() < deadline + 120, log.read_text()
        time.sleep(0.2)
    output = log.read_text()
    assert "Preempted by SIGTERM" in output and "Traceback" not in output, output
    state = torch.load(run_dir / "checkpoint-preempted.pt", weights_only=True)
    assert state["epoch"] >= 1
    assert json.loads((run_dir / "run.json").read_text())["status"] == "preempted"
    # This job's processes only: another copy of the suite may be running the example too.
    assert subprocess.run(["pgrep", "-f", "--", f"--output-dir {tmp_path} "]).returncode != 0


@pytest.mark.timeout(300)
def test_srun_continuing_a_run_that_is_still_written_ends_every_rank_with_the_reason(
    cluster, tmp_path
):
    record = ["--output-dir", str(tmp_path), "--no-cuda", "--checkpoint-every", "5",
              "--backlog", "1"]  # fmt: skip
    first = subprocess.run([sys.executable, str(RECORD_JOB), *record, "--steps", "6"],
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert first.returncode == 0, first.stdout + first.stderr
    run_dir = the_run_directory(tmp_path, "record-job")
    _run_lock.hold(run_dir, "the test")  # this process stands for the run, still writing
    try:
        started = time.monotonic()
        result = cluster.run(["srun", "-n", "2", sys.executable, str(RECORD_JOB), *record,
                              "--steps", "12", "--distributed", "--checkpoint", "latest",
                              "--distributed_timeout", "90"], cwd=tmp_path)  # fmt: skip
        seconds = time.monotonic() - started
    finally:
        _run_lock.release()
    output = " ".join((result.stdout + result.stderr).split())
    assert result.returncode != 0, output
    # Rank 1, started by srun beside rank 0, hears why from rank 0 instead of waiting for
    # its store until --distributed_timeout.
    assert seconds < 60, output
    busy = f"is still being written by another process (process {os.getpid()} on "
    assert output.count(busy) == 2, output
    assert ("Error: The job failed while rank 1 waited to publish its run directory: rank 0 "
            "could not start: --checkpoint latest: the newest run of 'record-job'") in output
    assert "Traceback" not in output and "STEP" not in output
