"""Rank resolution and launch checks that need no processes."""
import pytest
import torch

from pystematic_torch import DistributedError
from pystematic_torch.distributed import _launch as launch

PARAMS = {"nproc_per_node": 4, "nnodes": 2, "node_rank": 1, "master_addr": "node0.example",
          "master_port": None, "local_rank": 0}  # fmt: skip


def test_our_own_launch_numbers_ranks_by_node():
    info = launch.resolve_ranks(PARAMS, {}, is_subprocess=False)
    assert (info.rank, info.local_rank, info.world_size) == (4, 0, 8)
    assert (info.master_addr, info.master_port, info.source) == ("node0.example", 29500, "local")
    child = launch.resolve_ranks({**PARAMS, "local_rank": 3}, {}, is_subprocess=True)
    assert (child.rank, child.local_rank) == (7, 3)
    single = launch.resolve_ranks({**PARAMS, "nnodes": 1, "node_rank": 0}, {}, False)
    assert single.master_port == 0  # a free port is picked when nobody chose one


def test_torchrun_environment_wins_and_is_checked():
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "h",
           "MASTER_PORT": "1234"}  # fmt: skip
    info = launch.resolve_ranks(PARAMS, env, is_subprocess=False)
    assert (info.rank, info.local_rank, info.world_size, info.source) == (3, 1, 4, "torchrun")
    assert (info.master_addr, info.master_port) == ("h", 1234)
    with pytest.raises(DistributedError, match="RANK=4 must be in 0..3 for WORLD_SIZE=4"):
        launch.resolve_ranks(PARAMS, {**env, "RANK": "4"}, False)
    with pytest.raises(DistributedError, match="LOCAL_RANK=5 must be in 0..RANK"):
        launch.resolve_ranks(PARAMS, {**env, "LOCAL_RANK": "5"}, False)
    with pytest.raises(DistributedError, match="RANK='x' is not an integer"):
        launch.resolve_ranks(PARAMS, {**env, "RANK": "x"}, False)
    without_port = {k: v for k, v in env.items() if k != "MASTER_PORT"}
    with pytest.raises(DistributedError, match="MASTER_PORT is not"):
        launch.resolve_ranks(PARAMS, without_port, False)


def test_slurm_job_steps_take_ranks_and_the_first_node():
    env = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1",
           "SLURM_NODELIST": "gpu[003-004,010],cpu7"}  # fmt: skip
    info = launch.resolve_ranks(PARAMS, env, is_subprocess=False)
    assert (info.rank, info.local_rank, info.world_size, info.source) == (5, 1, 8, "slurm")
    assert (info.master_addr, info.master_port) == ("gpu003", 29500)
    assert launch.resolve_ranks(PARAMS, {**env, "MASTER_ADDR": "m"}, False).master_addr == "m"
    with pytest.raises(DistributedError, match="SLURM_PROCID=8 must be in 0..7"):
        launch.resolve_ranks(PARAMS, {**env, "SLURM_PROCID": "8"}, False)
    single_task = {**env, "SLURM_NTASKS": "1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}
    assert launch.resolve_ranks(PARAMS, single_task, False).source == "local"
    assert launch.first_host("node17") == "node17"
    assert launch.first_host("a[1-2],b") == "a1"


def test_more_local_ranks_than_gpus_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(DistributedError, match="nproc_per_node=4 but only 2 GPU"):
        launch.check_gpus(4, 0, use_cuda=True)
    launch.check_gpus(4, 0, use_cuda=False)  # the ranks run on the CPU: nothing to check
    assert launch.choose_backend(use_cuda=False) == "gloo"
