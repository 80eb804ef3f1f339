import collections
import dataclasses

import pytest
import torch
from torch import nn

import pystematic_torch as pt
from pystematic_torch.context import Context

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
requires_no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")


class TwoLayer(nn.Module):
    def __init__(self, hidden=5):
        super().__init__()
        self.fc1 = nn.Linear(4, hidden)
        self.fc = nn.Linear(hidden, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.fc1(x)))

    def describe(self):
        return "two layers"


class DeviceAware:
    """Stands in for a loader: remembers where it was told to deliver batches."""

    def __init__(self):
        self.device = torch.device("cpu")

    def to(self, device):
        self.device = device
        return self


def train_steps(ctx, steps=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(8, 4, generator=generator)
        y = torch.randint(0, 3, (8,), generator=generator)
        loss = nn.functional.cross_entropy(ctx.model(x), y)
        ctx.optimizer.zero_grad()
        loss.backward()
        ctx.optimizer.step()
        ctx.scheduler.step()


def make_session(hidden=5):
    torch.manual_seed(0)
    ctx = Context()
    ctx.epoch = 0
    ctx.model = TwoLayer(hidden)
    ctx.optimizer = torch.optim.Adam(ctx.model.parameters(), lr=0.01)
    ctx.scheduler = torch.optim.lr_scheduler.StepLR(ctx.optimizer, step_size=2)
    ctx.scaler = torch.amp.GradScaler("cpu")
    ctx.extra = {"best": torch.tensor(1.5), "history": [1.0, 2.0], "tag": ("a", None)}
    return ctx


def test_anything_can_be_registered_in_order_and_private_names_are_left_alone():
    ctx = Context()
    ctx.zeta = 1
    ctx.alpha = nn.Linear(2, 2)
    ctx.loss_fn = nn.functional.mse_loss
    ctx._scratch = torch.ones(3)
    assert list(ctx) == ["zeta", "alpha", "loss_fn"]
    assert "zeta" in ctx and "_scratch" not in ctx
    assert list(ctx.state_dict()) == ["zeta", "alpha", "_random_state"]
    ctx.to("meta")
    assert ctx._scratch.device.type == "cpu"
    del ctx.zeta
    assert list(ctx) == ["alpha", "loss_fn"]


def test_an_attribute_is_always_the_registered_item_and_a_dropped_context_is_freed_at_once():
    import copy
    import gc
    import weakref

    ctx = Context()
    ctx.tensor = torch.zeros(2)
    ctx.count = 1
    ctx.count = 2
    assert ctx.count == 2 and ctx.state_dict()["count"] == 2
    ctx.load_state_dict({**ctx.state_dict(), "count": 5})  # plain values are replaced
    assert ctx.count == 5
    ctx.to("meta")  # replaces the tensor with a new object
    assert ctx.tensor is ctx._items["tensor"] and ctx.tensor.device.type == "meta"
    del ctx.count
    with pytest.raises(AttributeError, match="no item 'count'"):
        _ = ctx.count
    with pytest.raises(TypeError, match="assigning or deleting its attributes"):
        ctx._items.update(count=3)
    assert "count" not in vars(ctx)

    ctx.model = nn.Linear(2, 2)
    twin = copy.deepcopy(ctx)  # a copy's items follow the copy, and leave the original alone
    assert twin.model is twin._items["model"] and twin.model is not ctx.model
    assert ctx.model is ctx._items["model"]
    twin.epoch = 4
    assert twin.state_dict()["epoch"] == 4 and "epoch" not in ctx
    shallow = copy.copy(ctx)  # shares the items, but each keeps its own names in step
    ctx.rate = 0.01
    assert ctx.rate == 0.01 and "rate" not in shallow
    shallow.rate = 0.5
    assert ctx.rate == 0.01 and shallow.state_dict()["rate"] == 0.5
    del shallow
    del ctx.rate
    assert not hasattr(ctx, "rate")

    gc.disable()  # freed by reference counting alone: no cycle keeps a Context's models alive
    try:
        dropped = weakref.ref(ctx)
        del ctx
        assert dropped() is None
    finally:
        gc.enable()


def test_registry_errors_name_the_problem():
    ctx = Context()
    ctx.model = nn.Linear(2, 2)
    with pytest.raises(AttributeError, match="'to' is a Context method"):
        ctx.to = 3
    with pytest.raises(AttributeError, match="no item 'optimiser'; registered items are: model"):
        _ = ctx.optimiser


def test_move_keeps_modules_and_optimizer_state_together():
    ctx = make_session()
    train_steps(ctx)
    ctx.tensor = torch.zeros(2)
    ctx.nested = {"list": [torch.ones(1), "text"], "tuple": (torch.ones(1), 3)}
    ctx.loader = DeviceAware()
    ctx.frozen = nn.Parameter(torch.ones(2))

    # A CPU-only machine has no second real device; the meta device exercises the same
    # path (torch swaps Parameter objects there, so identity is checked in the CUDA test).
    assert ctx.to("meta") is ctx
    assert ctx.device == torch.device("meta")
    assert all(p.device.type == "meta" for p in ctx.model.parameters())
    for state in ctx.optimizer.state.values():
        assert state["exp_avg"].device.type == "meta"
        assert state["exp_avg_sq"].device.type == "meta"
        assert state["step"].device.type == "cpu"  # torch keeps it there unless capturable
    assert ctx.tensor.device.type == "meta"
    assert ctx.nested["list"][0].device.type == "meta" and ctx.nested["list"][1] == "text"
    assert ctx.nested["tuple"][0].device.type == "meta" and ctx.nested["tuple"][1] == 3
    assert ctx.loader.device == torch.device("meta")
    assert ctx.frozen.device.type == "meta" and isinstance(ctx.frozen, nn.Parameter)
    assert ctx.epoch == 0

    back = Context()
    back.loader = DeviceAware().to("meta")
    assert back.cpu().device == torch.device("cpu") and back.loader.device == torch.device("cpu")


def test_move_to_device_rebuilds_structures_and_leaves_other_values():
    Pair = collections.namedtuple("Pair", "x y")

    @dataclasses.dataclass
    class Batch:
        image: torch.Tensor
        name: str

    batch = {
        "pair": Pair(torch.ones(1), 2),
        "list": [torch.ones(1)],
        "dc": Batch(torch.ones(1), "a"),
    }
    moved = pt.move_to_device("meta", batch)
    assert isinstance(moved["pair"], Pair) and moved["pair"].x.device.type == "meta"
    assert moved["pair"].y == 2
    assert moved["list"][0].device.type == "meta"
    assert isinstance(moved["dc"], Batch) and moved["dc"].image.device.type == "meta"
    assert moved["dc"].name == "a"
    assert batch["pair"].x.device.type == "cpu"  # the caller's batch is untouched
    x, y = pt.move_to_device("meta", torch.ones(1), "label")
    assert x.device.type == "meta" and y == "label"
    with pytest.raises(pt.DeviceError, match="'gpu0' is not a device"):
        pt.move_to_device("gpu0", torch.ones(1))


@requires_no_cuda
def test_cuda_without_a_gpu_is_a_clear_error():
    ctx = make_session()
    with pytest.raises(pt.DeviceError, match="CUDA.*--no-cuda"):
        ctx.cuda()
    with pytest.raises(pt.DeviceError, match="--no-cuda"):
        ctx.to("cuda:0")
    assert ctx.device == torch.device("cpu")


@requires_cuda
def test_cuda_moves_everything_and_training_continues():
    ctx = make_session()
    train_steps(ctx)
    params_before = list(ctx.model.parameters())
    ctx.cuda()
    assert ctx.device.type == "cuda" and ctx.device.index is not None
    assert list(ctx.model.parameters()) == params_before  # same objects, moved in place
    assert ctx.optimizer.param_groups[0]["params"][0] is params_before[0]
    assert all(p.is_cuda for p in ctx.model.parameters())
    assert all(s["exp_avg"].is_cuda for s in ctx.optimizer.state.values())
    x = torch.randn(8, 4, device=ctx.device)
    loss = ctx.model(x).sum()
    loss.backward()
    ctx.optimizer.step()


def test_ddp_needs_a_process_group():
    ctx = make_session()
    with pytest.raises(pt.DistributedError, match="initialized process group.*--distributed"):
        ctx.ddp()


def test_state_dict_round_trip_restores_everything_in_place(tmp_path):
    ctx = make_session()
    train_steps(ctx, steps=5)
    ctx.epoch = 7
    ctx.extra["history"].append(3.0)
    path = pt.save_checkpoint(ctx.state_dict(), id=1, directory=tmp_path)
    saved = torch.load(path, weights_only=True)  # as a user would, metadata entry and all

    fresh = make_session()
    model, optimizer = fresh.model, fresh.optimizer
    fresh.extra["history"].append(0.0)
    fresh.load_state_dict(saved)
    assert fresh.model is model and fresh.optimizer is optimizer
    assert fresh.epoch == 7
    assert fresh.extra["history"] == [1.0, 2.0, 3.0]
    assert fresh.extra["tag"] == ("a", None)
    assert_same_session(ctx, fresh)


def assert_same_session(a, b):
    for (name, p), (_, q) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(p, q), name
    for state_a, state_b in zip(a.optimizer.state.values(), b.optimizer.state.values()):
        for key in state_a:
            assert torch.equal(state_a[key], state_b[key]), key
    assert a.scheduler.state_dict() == b.scheduler.state_dict()
    assert a.scaler.state_dict() == b.scaler.state_dict()
    assert torch.equal(a.extra["best"], b.extra["best"])


def test_strict_load_lists_missing_and_unexpected_entries_and_changes_nothing():
    ctx = make_session()
    state = ctx.state_dict()
    del state["optimizer"]
    state["ema"] = {"decay": 0.9}
    state["model"]["fc.extra"] = torch.zeros(1)
    del state["model"]["fc1.bias"]
    fresh = make_session()
    fresh.epoch = 3
    with pytest.raises(pt.StateDictError) as info:
        fresh.load_state_dict(state)
    message = str(info.value)
    assert "missing from the checkpoint: optimizer" in message
    assert "unexpected in the checkpoint: ema" in message
    assert "model: missing from the checkpoint: fc1.bias" in message
    assert "model: unexpected in the checkpoint: fc.extra" in message
    assert fresh.epoch == 3

    state = ctx.state_dict()
    state["ema"] = 1
    fresh.load_state_dict(state, strict=False)
    assert fresh.epoch == 0


def test_shape_and_type_mismatches_name_the_full_path():
    ctx = make_session(hidden=4)
    ctx.epoch = "three"
    fresh = make_session(hidden=5)
    before = fresh.model.fc.weight.detach().clone()
    with pytest.raises(pt.StateDictError) as info:
        fresh.load_state_dict(ctx.state_dict(), strict=False)
    message = str(info.value)
    assert "model.fc.weight: checkpoint has [3, 4], model has [3, 5]" in message
    assert "model.fc1.weight: checkpoint has [4, 4], model has [5, 4]" in message
    assert "epoch: checkpoint has str, context has int" in message
    assert torch.equal(fresh.model.fc.weight, before)


def test_optimizer_and_tensor_mismatches_are_reported():
    ctx = make_session()
    state = ctx.state_dict()
    state["extra"]["best"] = torch.zeros(2)
    state["optimizer"]["param_groups"] = state["optimizer"]["param_groups"] * 2
    with pytest.raises(pt.StateDictError) as info:
        make_session().load_state_dict(state)
    assert "extra.best: checkpoint has [2], context has []" in str(info.value)
    assert "optimizer: checkpoint has 2 parameter groups, optimizer has 1" in str(info.value)
    with pytest.raises(pt.StateDictError, match="needs a dict"):
        ctx.load_state_dict([1, 2])


def test_autotransform_outside_an_experiment_takes_keyword_arguments(tmp_path, caplog):
    ctx = make_session()
    train_steps(ctx)
    pt.save_checkpoint(ctx.state_dict(), id=2, directory=tmp_path)
    fresh = make_session()
    assert fresh.autotransform(checkpoint=tmp_path, cuda=False) is fresh
    assert_same_session(ctx, fresh)
    assert fresh.device.type == "cpu"
    with pytest.raises(pt.DistributedError):
        fresh.autotransform(cuda=False, distributed=True)


@requires_no_cuda
def test_autotransform_warns_once_when_cuda_is_missing(caplog):
    ctx = make_session()
    with caplog.at_level("WARNING", logger="pystematic.torch"):
        ctx.autotransform()
    warnings = [r for r in caplog.records if "CUDA was requested" in r.getMessage()]
    assert len(warnings) == 1 and "--no-cuda" in warnings[0].getMessage()
    assert ctx.device.type == "cpu"
