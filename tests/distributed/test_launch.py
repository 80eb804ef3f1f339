"""Distributed launch, end to end: real processes, real gloo groups, real signals."""
import json
import os
import pathlib
import re
import signal
import socket
import sys
import time

import psutil
import pytest
import torch
from tensorboard.plugins.hparams import api_pb2

from tests.support.jobs import Job, assert_all_gone, family, job_args
from tests.support.ranks import free_port
from tests.support.tensorboard import session_status

JOB = pathlib.Path(__file__).parent / "jobs" / "ddp_job.py"
EXAMPLES = pathlib.Path(__file__).parents[2] / "examples"
# Exact digits: two ranks' lines can run together on one line of shared output.
DONE = r"DONE rank=(\d) world=2 checksum=(-?\d+\.\d{10})"


def launch_args(*args, script=JOB, output):
    return job_args(*args, script=script, output=output)


@pytest.mark.timeout(150)
def test_local_launch_trains_on_two_ranks_and_ends_cleanly(tmp_path):
    job = Job(launch_args("--distributed", "--nproc_per_node", "2", output=tmp_path), tmp_path)
    code, _ = job.finish()
    assert code == 0, job.output
    done = dict(re.findall(DONE, job.output))
    assert set(done) == {"0", "1"} and done["0"] == done["1"], job.output  # trained together
    assert "destroy_process_group" not in job.output and "Warning" not in job.output
    (run_dir,) = (tmp_path / "ddp-job").iterdir()
    assert (run_dir / "log.txt").exists() and (run_dir / "log.rank-1.txt").exists()


@pytest.mark.timeout(150)
@pytest.mark.parametrize("failing_rank", [1, 0])
def test_a_rank_that_raises_ends_the_whole_job_with_one_traceback(tmp_path, failing_rank):
    args = launch_args("--distributed", "--nproc_per_node", "2", "--mode", "hang",
                    "--fail-rank", str(failing_rank), output=tmp_path)  # fmt: skip
    job = Job(args, tmp_path)
    job.wait_for(r"READY rank=\d", count=2)
    processes = family(job)
    code, seconds = job.finish(timeout=90)
    assert code != 0
    assert seconds < 60, seconds
    assert job.output.count("Traceback") == 1, job.output
    expected = f"[rank {failing_rank}] ValueError: deliberate failure on rank {failing_rank}"
    assert expected in job.output
    assert_all_gone(processes)


@pytest.mark.timeout(150)
@pytest.mark.parametrize("stopped_rank", [0, 1])
def test_the_failure_reaching_a_rank_inside_a_del_still_stops_it_at_once(tmp_path, stopped_rank):
    # Python drops an exception raised inside __del__ (a DataLoader iterator being freed, say)
    # after printing "Exception ignored": the rank must be stopped again, not run on until the
    # grace period ends, and the dropped one not printed.
    job = Job(launch_args("--distributed", "--nproc_per_node", "2", "--stopped-in-del",
                          str(stopped_rank), output=tmp_path), tmp_path)  # fmt: skip
    job.wait_for(rf"READY rank={stopped_rank}")
    processes = family(job)
    code, seconds = job.finish(timeout=90)
    assert code == 1, job.output
    assert seconds < 20, seconds  # the grace period is 30 s
    assert f"LEFT_DEL rank={stopped_rank}" in job.output  # the failure did land in __del__
    assert "Exception ignored" not in job.output, job.output
    assert "did not stop within" not in job.output, job.output
    assert job.output.count("Traceback") == 1, job.output
    assert f"[rank {stopped_rank}] Stopping this rank: rank {1 - stopped_rank} raised" in job.output
    assert_all_gone(processes)


@pytest.mark.timeout(150)
@pytest.mark.parametrize("victim", ["child", "main"])
def test_a_killed_rank_ends_the_whole_job(tmp_path, victim):
    job = Job(launch_args("--distributed", "--nproc_per_node", "2", "--mode", "hang",
                       output=tmp_path), tmp_path)  # fmt: skip
    job.wait_for(r"READY rank=\d", count=2)
    processes = family(job)
    pids = dict(re.findall(r"READY rank=(\d) world=2 pid=(\d+)", job.output))
    killed_at = time.monotonic()
    os.kill(int(pids["1" if victim == "child" else "0"]), signal.SIGKILL)
    code, _ = job.finish(timeout=90)
    assert code != 0
    assert_all_gone(processes, within=20)
    assert time.monotonic() - killed_at < 60


@pytest.mark.timeout(150)
def test_a_peer_lost_as_the_teardown_begins_does_not_cut_the_teardown_short(tmp_path):
    # Rank 0 is killed; rank 1's main thread fails in its collective and starts its
    # teardown, while its monitor, having found rank 0 gone, stops the main thread: the job
    # script makes that stop land first, as it did at random.
    job = Job(launch_args("--distributed", "--nproc_per_node", "2", "--mode", "hang",
                          "--stop-queued-first", output=tmp_path), tmp_path)  # fmt: skip
    job.wait_for(r"READY rank=\d", count=2)
    processes = family(job)
    pids = dict(re.findall(r"READY rank=(\d) world=2 pid=(\d+)", job.output))
    os.kill(int(pids["0"]), signal.SIGKILL)
    code, _ = job.finish(timeout=90)
    assert code != 0
    assert_all_gone(processes, within=20)
    assert "STOP QUEUED DURING TEARDOWN" in job.output
    assert "JobFailed" not in job.output, job.output
    (run_dir,) = (tmp_path / "ddp-job").iterdir()
    assert "Experiment ended" in (run_dir / "log.rank-1.txt").read_text()


@pytest.mark.timeout(150)
@pytest.mark.parametrize("failing_rank", [0, 1])
def test_a_peer_failing_while_a_rank_waits_in_the_closing_barrier_ends_the_job(
    tmp_path, failing_rank
):
    # The other rank's training succeeded and its recordings are flushed; it waits in the
    # barrier every rank passes before leaving the job. It must learn of the failure there
    # and end with the job's error, not with the broken collective's traceback (gloo) or
    # after the flush limit (NCCL, which does not notice a peer raising).
    job = Job(launch_args("--distributed", "--nproc_per_node", "2", "--fail-at-end",
                          str(failing_rank), output=tmp_path), tmp_path)  # fmt: skip
    job.wait_for(r"DONE rank=\d", count=2)
    processes = family(job)
    code, seconds = job.finish(timeout=90)
    assert code == 1, job.output
    assert seconds < 60, seconds
    assert job.output.count("Traceback") == 1, job.output
    survivor = 1 - failing_rank
    assert (f"[rank {survivor}] Stopping this rank: rank {failing_rank} raised ValueError: "
            f"deliberate failure at the end on rank {failing_rank}") in job.output, job.output
    assert "gloo" not in job.output, job.output
    assert_all_gone(processes)
    (run_dir,) = (tmp_path / "ddp-job").iterdir()
    record = json.loads((run_dir / "run.json").read_text())
    assert (record["status"], record["exit_code"]) == ("failed", 1)
    survivor_log = run_dir / ("log.txt" if survivor == 0 else "log.rank-1.txt")
    assert "Experiment ended" in survivor_log.read_text()
    # Rank 0 writes the run's session for TensorBoard's HParams tab: a failure, even where
    # rank 0's own experiment returned.
    assert session_status(run_dir)[0] == api_pb2.STATUS_FAILURE


@pytest.mark.timeout(150)
@pytest.mark.parametrize("victim", [0, 1])
def test_a_peer_killed_while_a_rank_waits_in_the_closing_barrier_ends_the_job(tmp_path, victim):
    job = Job(launch_args("--distributed", "--nproc_per_node", "2", "--fail-at-end", str(victim),
                          "--end-failure", "hang", output=tmp_path), tmp_path)  # fmt: skip
    job.wait_for(r"HANGING rank=\d pid=\d+")
    processes = family(job)
    (pid,) = re.findall(r"HANGING rank=\d pid=(\d+)", job.output)
    killed_at = time.monotonic()
    os.kill(int(pid), signal.SIGKILL)
    code, _ = job.finish(timeout=90)
    assert code != 0
    assert time.monotonic() - killed_at < 30
    assert "Traceback" not in job.output, job.output
    assert f"[rank {1 - victim}] Stopping this rank: " in job.output, job.output
    assert_all_gone(processes, within=20)


@pytest.mark.timeout(150)
def test_ctrl_c_while_rank_0_flushes_before_the_closing_barrier_ends_the_job(tmp_path):
    # Rank 1 waits in the closing barrier for rank 0, whose last flush is slow; the Ctrl-C
    # landing in that flush must end the job as interrupted, not leave rank 1 waiting.
    job = Job(launch_args("--distributed", "--nproc_per_node", "2", "--ctrl-c-in-final-flush",
                          output=tmp_path), tmp_path)  # fmt: skip
    job.wait_for(r"FINAL_FLUSH")
    processes = family(job)
    code, seconds = job.finish(timeout=90)
    assert code == 130, job.output
    assert seconds < 60, seconds
    assert "Traceback" not in job.output, job.output
    assert "[rank 1] Stopping this rank: rank 0 was interrupted (SIGINT)" in job.output
    assert_all_gone(processes)
    (run_dir,) = (tmp_path / "ddp-job").iterdir()
    record = json.loads((run_dir / "run.json").read_text())
    assert (record["status"], record["exit_code"]) == ("interrupted", 130)
    assert session_status(run_dir)[0] == api_pb2.STATUS_FAILURE


@pytest.mark.timeout(150)
def test_a_clean_up_failing_on_rank_1_at_the_end_fails_the_job(tmp_path):
    job = Job(launch_args("--distributed", "--nproc_per_node", "2", "--fail-close-on", "1",
                          output=tmp_path), tmp_path)  # fmt: skip
    code, _ = job.finish(timeout=90)
    assert code == 1, job.output
    assert "No space left on device (a clean-up at the end of the run)" in job.output
    assert "rank 1 (exit code 1) failed while ending its run" in job.output
    (run_dir,) = (tmp_path / "ddp-job").iterdir()
    record = json.loads((run_dir / "run.json").read_text())
    assert (record["status"], record["exit_code"]) == ("failed", 1)


def job_with_rank_1_stuck_at_exit(tmp_path, exit_seconds, notice_seconds):
    """Rank 1's run ends well, but a thread it left running keeps its process alive."""
    args = launch_args("--distributed", "--nproc_per_node", "2", "--stuck-at-exit", "1",
                       output=tmp_path)  # fmt: skip
    limits = {"DDP_JOB_EXIT_SECONDS": exit_seconds, "DDP_JOB_NOTICE_SECONDS": notice_seconds}
    return Job(args, tmp_path, env=limits)


@pytest.mark.timeout(150)
def test_a_started_rank_that_does_not_exit_after_its_run_is_killed_and_fails_the_job(tmp_path):
    # The launcher says it waits, kills the rank at the limit, and the job fails with why.
    job = job_with_rank_1_stuck_at_exit(tmp_path, exit_seconds="6", notice_seconds="2")
    job.wait_for(r"STUCK_AT_EXIT pid=\d+")
    processes = family(job)
    (stuck,) = re.findall(r"STUCK_AT_EXIT pid=(\d+)", job.output)
    code, seconds = job.finish(timeout=90)
    assert code == 1, job.output
    assert 6 <= seconds < 60, seconds
    assert "rank 1 has not exited after 2 s; it is killed if still there after 6 s" in job.output
    assert ("The job failed: rank 1 had not exited 6 s after every rank ended its run and was "
            "killed") in job.output  # fmt: skip
    assert not psutil.pid_exists(int(stuck)) or psutil.Process(int(stuck)).status() == "zombie"
    assert_all_gone(processes)
    (run_dir,) = (tmp_path / "ddp-job").iterdir()
    record = json.loads((run_dir / "run.json").read_text())
    assert (record["status"], record["exit_code"]) == ("failed", 1)
    assert len(re.findall(DONE, job.output)) == 2  # both runs had ended well


@pytest.mark.timeout(150)
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_while_the_launcher_waits_for_a_stuck_rank_ends_it_at_once(
    tmp_path, signum
):
    job = job_with_rank_1_stuck_at_exit(tmp_path, exit_seconds="120", notice_seconds="1")
    job.wait_for(r"rank 1 has not exited after 1 s")
    processes = family(job)
    interrupted_at = time.monotonic()
    job.process.send_signal(signum)
    code, _ = job.finish(timeout=90)
    assert code == 130, job.output
    assert time.monotonic() - interrupted_at < 30
    assert_all_gone(processes)
    (run_dir,) = (tmp_path / "ddp-job").iterdir()
    record = json.loads((run_dir / "run.json").read_text())
    assert (record["status"], record["exit_code"]) == ("interrupted", 130)


@pytest.mark.timeout(150)
def test_sigint_to_the_main_process_ends_every_rank(tmp_path):
    job = Job(launch_args("--distributed", "--nproc_per_node", "2", "--mode", "hang",
                       output=tmp_path), tmp_path)  # fmt: skip
    job.wait_for(r"READY rank=\d", count=2)
    processes = family(job)
    job.process.send_signal(signal.SIGINT)
    code, _ = job.finish(timeout=90)
    assert code != 0
    assert_all_gone(processes)


@pytest.mark.timeout(150)
def test_two_runs_at_once_on_default_ports_both_start(tmp_path):
    args = ("--distributed", "--nproc_per_node", "2")
    first = Job(launch_args(*args, output=tmp_path / "a"), tmp_path)
    second = Job(launch_args(*args, output=tmp_path / "b"), tmp_path)
    for job in (first, second):
        code, _ = job.finish()
        assert code == 0, job.output
        assert len(re.findall(r"DONE rank=\d world=2", job.output)) == 2


@pytest.mark.timeout(120)
def test_a_taken_master_port_is_a_clear_error(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as blocker:
        blocker.bind(("", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        job = Job(launch_args("--distributed", "--nproc_per_node", "2", "--master_port", str(port),
                           output=tmp_path), tmp_path)  # fmt: skip
        code, _ = job.finish()
    assert code != 0
    assert f"master_port {port} is already in use on this machine; pass --master_port" in job.output


@pytest.mark.timeout(150)
def test_two_nodes_on_one_machine_form_one_world(tmp_path):
    port = str(free_port())
    nodes = [
        Job(launch_args("--distributed", "--nnodes", "2", "--node_rank", str(node),
                     "--nproc_per_node", "1", "--master_port", port,
                     output=tmp_path / f"node{node}"), tmp_path)  # fmt: skip
        for node in (0, 1)
    ]
    checksums = {}
    for node, job in enumerate(nodes):
        code, _ = job.finish()
        assert code == 0, job.output
        ((rank, checksum),) = re.findall(DONE, job.output)
        assert int(rank) == node
        checksums[node] = checksum
    assert checksums[0] == checksums[1]
    # Machine 1 writes into a directory of rank 0's path, not one of its own.
    assert not (tmp_path / "node1").exists()
    (run_dir,) = (tmp_path / "node0" / "ddp-job").iterdir()
    assert {"log.txt", "log.rank-1.txt", "parameters.yaml", "ranks.json"} <= {
        path.name for path in run_dir.iterdir()
    }


@pytest.mark.timeout(150)
def test_torchrun_starts_the_ranks_and_we_spawn_none(tmp_path):
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
            "--standalone", str(JOB), "--output-dir", str(tmp_path),
            "--no-cuda", "--distributed", "--nproc_per_node", "4"]  # fmt: skip
    job = Job(args, tmp_path)
    code, _ = job.finish()
    assert code == 0, job.output
    assert sorted(re.findall(r"DONE rank=(\d) world=2", job.output)) == ["0", "1"], job.output
    (run_dir,) = (tmp_path / "ddp-job").iterdir()  # one run directory for both processes
    ranks = json.loads((run_dir / "ranks.json").read_text())
    assert ranks["launcher"] == "torchrun" and len(ranks["ranks"]) == 2
    assert (run_dir / "log.rank-1.txt").exists()


@pytest.mark.timeout(150)
def test_a_slurm_job_step_takes_its_ranks_from_the_environment(tmp_path):
    port = str(free_port())
    tasks = [
        Job(launch_args("--distributed", output=tmp_path / f"task{task}"), tmp_path, env={
            "SLURM_PROCID": str(task), "SLURM_STEP_NUM_TASKS": "2", "SLURM_LOCALID": str(task),
            "SLURM_NODELIST": "localhost", "MASTER_PORT": port,
        })  # fmt: skip
        for task in (0, 1)
    ]
    for task, job in enumerate(tasks):
        code, _ = job.finish()
        assert code == 0, job.output
        assert re.findall(r"DONE rank=(\d) world=2", job.output) == [str(task)]


@pytest.mark.timeout(240)
def test_the_ddp_example_is_preempted_by_sigterm_and_resumes_from_its_run_directory(tmp_path):
    args = launch_args("--distributed", "--nproc_per_node", "2", "--step-delay", "0.1",
                       "--epochs", "3", script=EXAMPLES / "ddp.py", output=tmp_path)  # fmt: skip
    job = Job(args, tmp_path)
    job.wait_for(r"epoch 1: loss")
    job.process.send_signal(signal.SIGTERM)
    code, _ = job.finish()
    assert code == 143, job.output
    assert "Traceback" not in job.output
    # The ranks agree to stop at the next batch boundary they both reach; on a loaded
    # machine that can be past the end of the epoch the signal arrived in.
    stopped = re.search(r"Preempted by SIGTERM in epoch (\d) after batch (\d+)", job.output)
    assert stopped, job.output
    epoch = int(stopped[1])
    (run_dir,) = (tmp_path / "ddp-example").iterdir()
    state = torch.load(run_dir / "checkpoint-preempted.pt", weights_only=True)
    assert state["epoch"] == epoch and state["loader"]["epoch"] == epoch

    resumed = Job(launch_args("--distributed", "--nproc_per_node", "2", "--epochs", "3",
                              "--checkpoint", str(run_dir), script=EXAMPLES / "ddp.py",
                              output=tmp_path / "resumed"), tmp_path)  # fmt: skip
    code, _ = resumed.finish()
    assert code == 0, resumed.output
    expected = [str(later) for later in range(epoch + 1, 4)]
    assert re.findall(r"epoch (\d): loss", resumed.output) == expected, resumed.output


@pytest.mark.timeout(150)
def test_a_rank_that_dies_while_starting_ends_the_job_within_seconds(tmp_path):
    args = launch_args("--distributed", "--nproc_per_node", "2", "--distributed-timeout", "600",
                       output=tmp_path)  # fmt: skip
    job = Job(args, tmp_path, env={"DDP_JOB_DIE_AT_IMPORT": "1"})
    processes = family(job)
    code, seconds = job.finish(timeout=120)
    assert code == 1, job.output
    assert seconds < 30, seconds  # not the 600 s rendezvous timeout
    assert "Rank 1 exited with code 3 before every rank had joined the job" in job.output
    assert "Traceback" not in job.output
    assert_all_gone(processes)


@pytest.mark.timeout(150)
@pytest.mark.parametrize("debug", [False, True])
def test_a_launch_error_is_one_line_and_leaves_no_run_directory(tmp_path, debug):
    extra = ["--debug"] if debug else []
    job = Job(launch_args("--distributed", *extra, output=tmp_path), tmp_path,
              env={"RANK": "3", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                   "MASTER_PORT": "1"})  # fmt: skip
    code, _ = job.finish()
    assert code == 1
    message = "Inconsistent distributed environment: RANK=3 must be in 0..1 for WORLD_SIZE=2."
    assert message in job.output
    if debug:
        assert "Traceback" in job.output
    else:
        assert job.output.strip() == f"Error: {message}", job.output
    assert not (tmp_path / "ddp-job").exists()


@pytest.mark.timeout(150)
def test_torchrun_without_distributed_is_refused_instead_of_training_twice(tmp_path):
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
            "--standalone", str(JOB), "--output-dir", str(tmp_path),
            "--no-cuda"]  # fmt: skip
    job = Job(args, tmp_path)
    code, _ = job.finish()
    assert code != 0
    assert "torchrun started 2 processes but --distributed is off" in job.output
    assert "DONE" not in job.output and not (tmp_path / "ddp-job").exists()


@pytest.mark.timeout(150)
def test_the_rendezvous_store_listens_on_loopback_only(tmp_path):
    job = Job(launch_args("--distributed", "--nproc_per_node", "2", "--mode", "hang",
                          output=tmp_path), tmp_path)  # fmt: skip
    job.wait_for(r"READY rank=\d", count=2)
    (run_dir,) = (tmp_path / "ddp-job").iterdir()
    port = int(json.loads((run_dir / "ranks.json").read_text())["master"].rsplit(":", 1)[1])
    main = psutil.Process(job.process.pid)
    listening = [c.laddr for c in main.net_connections(kind="tcp")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port == port]  # fmt: skip
    job.process.send_signal(signal.SIGINT)
    job.finish()
    assert [address.ip for address in listening] == ["127.0.0.1"], listening


@pytest.mark.timeout(240)
def test_torchrun_restarts_after_a_failure_and_continues_the_same_run(tmp_path):
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
            "--max-restarts", "1", "--standalone", str(JOB),
            "--output-dir", str(tmp_path), "--no-cuda", "--distributed", "--fail-rank", "1",
            "--fail-once"]  # fmt: skip
    job = Job(args, tmp_path)
    code, _ = job.finish(timeout=200)
    assert code == 0, job.output
    assert "deliberate failure on rank 1" in job.output  # the first attempt did fail
    assert "torchrun restart 1" in job.output
    done = dict(re.findall(DONE, job.output))
    assert set(done) == {"0", "1"} and done["0"] == done["1"], job.output
    (run_dir,) = (tmp_path / "ddp-job").iterdir()  # the restart continued the same run
    assert json.loads((run_dir / "ranks.json").read_text())["torchrun_restart"] == 1
    assert "torchrun restart 1" in (run_dir / "log.txt").read_text()
