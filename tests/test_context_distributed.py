"""Context.ddp() on two real gloo ranks, and a save/load round trip across processes."""
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import pystematic_torch as pt
from pystematic_torch.context import Context
from tests.support.ranks import run_on_ranks


class NormNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 6)
        self.norm = nn.BatchNorm1d(6)
        self.fc = nn.Linear(6, 2)

    def forward(self, x):
        return self.fc(torch.relu(self.norm(self.fc1(x))))

    def describe(self):
        return f"NormNet({self.fc1.in_features})"


class SetupSpy:
    def __init__(self):
        self.calls = 0

    def setup_distributed(self):
        self.calls += 1


def build_session():
    torch.manual_seed(1)
    ctx = Context()
    ctx.epoch = 0
    ctx.model = NormNet()
    ctx.frozen = nn.Linear(2, 2).requires_grad_(False)
    ctx.heads = {"aux": nn.Linear(3, 3)}
    ctx.optimizer = torch.optim.SGD(ctx.model.parameters(), lr=0.1, momentum=0.9)
    ctx.spies = [SetupSpy()]
    return ctx


def _ddp_body(rank, checkpoint_dir):
    ctx = build_session()
    keys_before = list(ctx.model.state_dict())
    try:
        ctx.ddp(sync_batchnorm=True)
        sync_bn_refused = ""
    except pt.DistributedError as error:
        sync_bn_refused = str(error)
    assert ctx.ddp() is ctx
    out = {
        "model_wrapped": isinstance(ctx.model, DistributedDataParallel),
        "head_wrapped": isinstance(ctx.heads["aux"], DistributedDataParallel),
        "frozen_wrapped": isinstance(ctx.frozen, DistributedDataParallel),
        "describe": ctx.model.describe(),
        "fc_out": ctx.model.fc.out_features,
        "same_keys": list(ctx.model.state_dict()) == keys_before,
        "sync_bn_refused": sync_bn_refused,
        "spy_calls": ctx.spies[0].calls,
    }
    ctx.ddp()  # a second call must not wrap twice
    out["not_double_wrapped"] = not isinstance(ctx.model.module, DistributedDataParallel)
    # Each rank sees different data; DDP averages the gradients, so the ranks stay equal.
    generator = torch.Generator().manual_seed(100 + rank)
    for _ in range(3):
        x = torch.randn(8, 4, generator=generator)
        loss = ctx.model(x).pow(2).mean()
        ctx.optimizer.zero_grad()
        loss.backward()
        ctx.optimizer.step()
    ctx.epoch = 3
    out["state"] = {k: v.clone() for k, v in ctx.model.state_dict().items()}
    out["params"] = {k: v.detach().clone() for k, v in ctx.model.module.named_parameters()}
    out["path"] = pt.save_checkpoint(ctx.state_dict(), id="ddp", directory=checkpoint_dir)
    return out


@pytest.mark.timeout(120)
def test_ddp_wraps_trainable_modules_transparently_and_checkpoints_load_anywhere(tmp_path):
    results = run_on_ranks(_ddp_body, args=(str(tmp_path),), timeout=90)
    for out in results:
        assert out["model_wrapped"] and out["head_wrapped"] and not out["frozen_wrapped"]
        assert out["describe"] == "NormNet(4)" and out["fc_out"] == 2
        assert out["same_keys"] and out["not_double_wrapped"]
        assert "needs the context on CUDA" in out["sync_bn_refused"]
        assert out["spy_calls"] == 1
    # Gradients are averaged, so parameters agree; BatchNorm running statistics are only
    # broadcast from rank 0 at the start of each forward, so they may differ afterwards.
    assert len(results[0]["params"]) == 6
    for key, value in results[0]["params"].items():
        assert torch.equal(value, results[1]["params"][key]), key
    assert results[0]["path"] is not None and results[1]["path"] is None  # only rank 0 writes

    single = build_session()
    single.load_state_dict(pt.load_checkpoint(tmp_path))
    assert single.epoch == 3
    for key, value in single.model.state_dict().items():
        assert torch.equal(value, results[0]["state"][key]), key


def _sync_batchnorm_body(rank):
    ctx = build_session()
    ctx.cuda(0)
    ctx.ddp(sync_batchnorm=True)
    converted = any(isinstance(m, nn.SyncBatchNorm) for m in ctx.model.modules())
    loss = ctx.model(torch.randn(8, 4, device=ctx.device)).sum()
    loss.backward()
    return converted


@pytest.mark.skipif(not torch.cuda.is_available(), reason="SyncBatchNorm needs a CUDA GPU")
@pytest.mark.timeout(120)
def test_sync_batchnorm_converts_on_cuda():
    import torch.distributed as dist
    from multiprocess import free_port

    address = f"tcp://127.0.0.1:{free_port()}"
    dist.init_process_group("nccl", init_method=address, rank=0, world_size=1)
    assert _sync_batchnorm_body(0)


LOAD_IN_NEW_PROCESS = """
import sys, torch
sys.path.insert(0, {repo_root!r})
import pystematic_torch as pt
from tests.test_context import make_session
fresh = make_session()
fresh.load_state_dict(pt.load_checkpoint({checkpoint!r}))
torch.save(fresh.state_dict(), {echo!r})
"""


@pytest.mark.timeout(120)
def test_round_trip_through_a_new_process_restores_every_tensor_exactly(tmp_path):
    from tests.test_context import make_session, train_steps

    ctx = make_session()
    train_steps(ctx, steps=4)
    ctx.epoch = 2
    checkpoint = pt.save_checkpoint(ctx.state_dict(), id=2, directory=tmp_path)
    echo = tmp_path / "echo.pt"
    script = LOAD_IN_NEW_PROCESS.format(
        repo_root=str(__import__("pathlib").Path(__file__).parents[1]),
        checkpoint=str(checkpoint),
        echo=str(echo),
    )
    subprocess.run([sys.executable, "-c", textwrap.dedent(script)], check=True, timeout=100)
    reloaded = torch.load(echo, weights_only=True)
    original = ctx.state_dict()

    assert reloaded["epoch"] == 2
    for key, value in original["model"].items():
        assert torch.equal(value, reloaded["model"][key]), key
    saved_opt, loaded_opt = original["optimizer"], reloaded["optimizer"]
    assert saved_opt["param_groups"] == loaded_opt["param_groups"]
    assert saved_opt["state"].keys() == loaded_opt["state"].keys()
    for index, entries in saved_opt["state"].items():
        for key, value in entries.items():
            assert torch.equal(value, loaded_opt["state"][index][key]), (index, key)
    assert original["scheduler"] == reloaded["scheduler"]
    assert original["scaler"] == reloaded["scaler"]
    assert torch.equal(original["extra"]["best"], reloaded["extra"]["best"])
