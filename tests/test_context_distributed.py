"""Context.ddp() on two real gloo ranks, and a save/load round trip across processes."""
import logging
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


class LossNet(nn.Module):
    """A model trained through its own methods, as research code often is."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.fc = nn.Linear(8, 1)
        self.dim = 8  # DistributedDataParallel has a `dim` of its own

    def forward(self, x):
        return self.fc(torch.relu(self.fc1(x)))

    def compute_loss(self, x, *, scale=1.0):
        return scale * self(x).pow(2).mean()

    def loss_through_a_helper(self, x):
        return self.compute_loss(x, scale=0.5) + self.fc1(x).abs().mean()

    def losses(self, batches):
        for x in batches:
            yield self.compute_loss(x)

    def broken(self, x):
        raise ValueError(f"broken on a batch of {len(x)}")

    @property
    def width(self):
        return self.fc1.out_features


def test_the_methods_that_run_as_forward_are_the_models_own_public_methods():
    from pystematic_torch.distributed._ddp import forward_methods

    class Stack(nn.Sequential):
        def score(self, x):
            return self(x).sum()

        def _private(self):
            pass

        @staticmethod
        def build():
            return Stack()

        @classmethod
        def named(cls):
            return cls()

    class Deeper(Stack):
        score = property(lambda self: 1.0)  # no longer a method

        def predict(self, x):
            return self(x)

    assert forward_methods(LossNet()) == {"compute_loss", "loss_through_a_helper", "losses",
                                          "broken"}  # fmt: skip
    assert forward_methods(Stack()) == {"score"}  # not append(), extend(), parameters(), ...
    assert forward_methods(Deeper()) == {"predict"}
    assert forward_methods(nn.Linear(2, 2)) == frozenset()


class Messages(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def _methods_body(rank):
    messages = Messages()
    logging.getLogger("pystematic.torch").addHandler(messages)
    torch.manual_seed(0)
    ctx = Context()
    ctx.model = LossNet()
    ctx.bypassed = LossNet()  # trained through .module: the unsynchronised control
    ctx.optimizer = torch.optim.SGD(
        [*ctx.model.parameters(), *ctx.bypassed.parameters()], lr=0.1, momentum=0.9
    )
    shared = torch.rand(4).tolist()  # before ddp(): every rank draws the same
    ctx.ddp()
    out = {"shared": shared, "diverged": torch.rand(4).tolist(), "warnings": messages.lines}
    generator = torch.Generator().manual_seed(100 + rank)  # each rank sees other data
    for step in range(4):
        x = torch.randn(8, 4, generator=generator)
        if step % 2:
            loss = ctx.model.loss_through_a_helper(x)
        else:
            loss = ctx.model.compute_loss(x, scale=2.0)
        loss = loss + ctx.bypassed.module.compute_loss(x)
        ctx.optimizer.zero_grad()
        loss.backward()
        ctx.optimizer.step()
    out["model"] = {k: v.clone() for k, v in ctx.model.state_dict().items()}
    out["bypassed"] = {k: v.clone() for k, v in ctx.bypassed.state_dict().items()}
    out["names"] = (ctx.model.compute_loss.__name__, ctx.model.width, ctx.model.module.dim)
    try:
        ctx.model.losses([x])
    except pt.DistributedError as error:
        out["generator_refused"] = str(error)
    try:
        ctx.model.broken(x)
    except ValueError as error:
        out["broken"] = str(error)
    out["forward_restored"] = "forward" not in vars(ctx.model.module)
    out["still_trains"] = bool(torch.isfinite(ctx.model(x).sum()))

    ctx.late = nn.Linear(4, 1)  # registered after ddp(): never wrapped
    with torch.no_grad():
        ctx.late(x)  # evaluation is fine
    try:
        ctx.late(x).sum().backward()
    except pt.DistributedError as error:
        out["late_refused"] = str(error)
    DistributedDataParallel(ctx.late)(x).sum().backward()  # wrapped by the user: fine
    own = Context()
    own.model = nn.Linear(4, 1)
    own.autotransform(cuda=False, distributed=False)  # "I wrap it myself": trusted
    own.model(x).sum().backward()
    out["own_wrapping_trusted"] = not isinstance(own.model, DistributedDataParallel)
    from torch.distributed.fsdp import fully_shard

    sharded = Context()
    sharded.model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1))
    fully_shard(sharded.model)  # sharded by the user with FSDP2: recognised
    sharded.model(x).sum().backward()
    return out


@pytest.mark.timeout(120)
def test_every_public_method_of_the_model_trains_in_sync_across_ranks():
    first, second = run_on_ranks(_methods_body, timeout=90)
    assert set(first["model"]) == {"fc1.weight", "fc1.bias", "fc.weight", "fc.bias"}
    for key, value in first["model"].items():
        assert torch.equal(value, second["model"][key]), key
    # The same training through .module is not averaged, so there the ranks drift apart.
    assert not all(torch.equal(v, second["bypassed"][k]) for k, v in first["bypassed"].items())

    assert first["names"] == ("compute_loss", 8, 8)
    assert "LossNet.losses() is a generator" in first["generator_refused"]
    assert first["broken"] == "broken on a batch of 8"
    assert first["forward_restored"] and first["still_trains"]
    assert "ctx.late is being trained in a distributed run but is not wrapped" in (
        first["late_refused"]
    )
    assert "call ctx.autotransform()" in first["late_refused"]
    assert first["own_wrapping_trusted"]
    shadow = [line for line in first["warnings"] if "attributes of its own named" in line]
    assert len(shadow) == 2 and "dim" in shadow[0] and ".module.dim" in shadow[0]

    # Identical draws until ddp(), then each rank its own stream.
    assert first["shared"] == second["shared"]
    assert first["diverged"] != second["diverged"]


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
    import datetime

    import torch.distributed as dist

    store = dist.TCPStore("127.0.0.1", 0, 1, True, datetime.timedelta(seconds=60))
    dist.init_process_group("nccl", store=store, rank=0, world_size=1)
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
