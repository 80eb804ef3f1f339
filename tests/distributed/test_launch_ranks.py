"""Rank resolution and launch checks that need no processes."""
import dataclasses
import time

import pytest
import torch

from pystematic_torch import LaunchError
from pystematic_torch.distributed import _launch as launch
from pystematic_torch.distributed._rendezvous import Rendezvous

PARAMS = {"nproc_per_node": 4, "nnodes": 2, "node_rank": 1, "master_addr": "node0.example",
          "master_port": None, "local_rank": 0}  # fmt: skip
SRUN = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_STEP_NUM_TASKS": "8",
        "SLURM_LOCALID": "1", "SLURM_STEP_NODELIST": "gpu[003-004,010],cpu7",
        "SLURM_JOB_ID": "123456"}  # fmt: skip


def test_our_own_launch_numbers_ranks_by_node():
    info = launch.resolve_ranks(PARAMS, {}, started=False)
    assert (info.rank, info.local_rank, info.world_size, info.machines) == (4, 0, 8, 2)
    assert (info.master_addr, info.master_port, info.source) == ("node0.example", 29500, "local")
    assert not info.started_by_launcher
    # A started rank carries its global rank in pystematic's local_rank parameter.
    child = launch.resolve_ranks({**PARAMS, "local_rank": 7}, {}, started=True)
    assert (child.rank, child.local_rank, child.started_by_launcher) == (7, 3, True)
    single = launch.resolve_ranks({**PARAMS, "nnodes": 1, "node_rank": 0}, {}, False)
    assert single.master_port == 0  # rank 0 lets the system choose when nobody chose one


def test_torchrun_environment_wins_and_is_checked():
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "h",
           "MASTER_PORT": "1234", "TORCHELASTIC_RESTART_COUNT": "2"}  # fmt: skip
    info = launch.resolve_ranks(PARAMS, env, started=False)
    assert (info.rank, info.local_rank, info.world_size, info.source) == (3, 1, 4, "torchrun")
    assert (info.master_addr, info.master_port, info.restart) == ("h", 1234, 2)
    with pytest.raises(LaunchError, match="RANK=4 must be in 0..3 for WORLD_SIZE=4"):
        launch.resolve_ranks(PARAMS, {**env, "RANK": "4"}, False)
    with pytest.raises(LaunchError, match="LOCAL_RANK=5 must be in 0..RANK"):
        launch.resolve_ranks(PARAMS, {**env, "LOCAL_RANK": "5"}, False)
    with pytest.raises(LaunchError, match="RANK='x' is not an integer"):
        launch.resolve_ranks(PARAMS, {**env, "RANK": "x"}, False)
    without_port = {k: v for k, v in env.items() if k != "MASTER_PORT"}
    with pytest.raises(LaunchError, match="MASTER_PORT is not"):
        launch.resolve_ranks(PARAMS, without_port, False)


def test_srun_steps_take_ranks_the_first_node_and_a_port_from_the_job_id():
    info = launch.resolve_ranks(PARAMS, SRUN, started=False)
    assert (info.rank, info.local_rank, info.world_size, info.source) == (5, 1, 8, "slurm")
    assert info.master_addr == "gpu003"
    assert info.master_port == 10000 + 123456 % 20000
    other_job = launch.resolve_ranks(PARAMS, {**SRUN, "SLURM_JOB_ID": "123457"}, False)
    assert other_job.master_port != info.master_port  # two jobs sharing a first node
    assert launch.resolve_ranks({**PARAMS, "master_port": 4000}, SRUN, False).master_port == 4000
    assert launch.resolve_ranks(PARAMS, {**SRUN, "MASTER_ADDR": "m"}, False).master_addr == "m"
    with pytest.raises(LaunchError, match="SLURM_PROCID=8 must be in 0..7"):
        launch.resolve_ranks(PARAMS, {**SRUN, "SLURM_PROCID": "8"}, False)
    assert launch.first_host("node17") == "node17"
    assert launch.first_host("a[1-2],b") == "a1"


def test_a_rank_that_reaches_another_slurm_jobs_rendezvous_is_refused_at_once():
    # Two jobs whose ports collide on a shared first node: rank 1 of the second job must
    # not join the first job's store (it would hang in the first job's process group).
    first = launch.resolve_ranks(PARAMS, {**SRUN, "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
                                          "SLURM_STEP_ID": "0", "MASTER_ADDR": "127.0.0.1",
                                          "SLURM_STEP_NUM_TASKS": "2"}, False)  # fmt: skip
    first = dataclasses.replace(first, master_port=0)
    host = Rendezvous.host(first, timeout=30)
    own = dataclasses.replace(first, rank=1, local_rank=1, master_port=host.port)
    Rendezvous.connect(own, timeout=30)  # the same job joins
    other = dataclasses.replace(own, job="SLURM job 123457 step 0")
    started = time.monotonic()
    with pytest.raises(LaunchError) as refused:
        Rendezvous.connect(other, timeout=30)
    assert time.monotonic() - started < 5
    assert str(refused.value) == (
        f"Rank 1 of SLURM job 123457 step 0 reached a rendezvous at 127.0.0.1:{host.port} that "
        "belongs to SLURM job 123456 step 0: two jobs use this port on that machine. Pass "
        "--master_port with a port no other job there uses."
    )


def test_an_sbatch_scripts_own_step_is_not_mistaken_for_srun_tasks():
    # What sbatch -n 2 gives the batch script itself: no SLURM_STEP_NUM_TASKS. The library
    # then starts --nproc_per_node ranks itself.
    batch_step = {"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_LOCALID": "0",
                  "SLURM_JOB_ID": "7", "SLURM_NODELIST": "vm"}  # fmt: skip
    assert launch.launcher_in(batch_step) is None
    assert launch.resolve_ranks(PARAMS, batch_step, False).source == "local"
    one_task = {**SRUN, "SLURM_STEP_NUM_TASKS": "1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}
    assert launch.launcher_in(one_task) is None


def test_a_launchers_ranks_without_distributed_are_refused_and_unused_sizes_named():
    plain = {**PARAMS, "nnodes": 1, "node_rank": 0, "nproc_per_node": 1}
    with pytest.raises(LaunchError, match="torchrun started 2 processes but --distributed"):
        launch.check_not_distributed(plain, {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})
    with pytest.raises(LaunchError, match="srun started 8 tasks but --distributed is off"):
        launch.check_not_distributed(plain, SRUN)
    assert launch.check_not_distributed(plain, {}) == []
    (warning,) = launch.check_not_distributed({**plain, "nproc_per_node": 2}, {})
    assert "nproc_per_node=2 has no effect without --distributed" in warning


def test_gpus_are_bound_by_local_rank_modulo_what_is_visible(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    chosen = []
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    ours = launch.resolve_ranks({**PARAMS, "local_rank": 5}, {}, started=True)
    with pytest.raises(LaunchError, match="nproc_per_node=4 but only 2 GPU"):
        launch.check_gpus(ours, 4, use_cuda=True)
    assert launch.check_gpus(ours, 4, use_cuda=False) is None  # ranks on the CPU: no check
    # srun --gpus-per-task=1: every task sees one GPU and uses it, whatever its local rank.
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    task = launch.resolve_ranks(PARAMS, SRUN, started=False)
    assert launch.check_gpus(task, 4, use_cuda=True) == torch.device("cuda", 0)
    assert chosen == [torch.device("cuda", 0)]
    assert launch.choose_backend(use_cuda=False) == "gloo"
