"""Context.load_state_dict is atomic: a state that does not fit, for any kind of item, or an
item whose own loader raises, leaves every item as it was (files on disk included)."""
import random

import numpy as np
import pytest
import torch
from torch import nn

import pystematic_torch as pt
from pystematic_torch.context import Context


class Counter:
    """A user object with state and no check method: checked by the form of its state."""

    def __init__(self, sorted_history=False):
        self.value, self.history, self.sorted_history = 0, [], sorted_history

    def state_dict(self):
        return {"value": self.value, "history": list(self.history)}

    def load_state_dict(self, state):
        self.value = state["value"]
        self.history = list(state["history"])
        if self.sorted_history and self.history != sorted(self.history):
            raise ValueError("history is not sorted")


class Vouching(Counter):
    """A user object that checks a state itself before anyone loads it."""

    def check_state_dict(self, state):
        if state["value"] < 0:
            raise ValueError(f"value must be >= 0, got {state['value']}")


class ExtraState(nn.Linear):
    """A module whose extra state fails to load only at load time, past every check."""

    def __init__(self, fail=False):
        super().__init__(2, 2)
        self.fail, self.tag = fail, "fresh"

    def get_extra_state(self):
        return {"tag": self.tag}

    def set_extra_state(self, state):
        if self.fail and state["tag"] != self.tag:
            raise RuntimeError(f"cannot change the tag from {self.tag!r} to {state['tag']!r}")
        self.tag = state["tag"]


def build(directory, seed, **counter_options):
    torch.manual_seed(seed)
    ctx = Context()
    ctx.epoch = seed
    ctx.recorder = pt.Recorder(output_dir=directory, tensorboard=False, file=True)
    ctx.counter = Counter(**counter_options)
    ctx.vouching = Vouching()
    ctx.model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    ctx.optimizer = torch.optim.Adam(ctx.model.parameters(), lr=0.1)
    ctx.scheduler = torch.optim.lr_scheduler.StepLR(ctx.optimizer, step_size=2)
    ctx.scaler = torch.amp.GradScaler("cpu")
    ctx.loader = pt.SmartDataLoader(
        torch.utils.data.TensorDataset(torch.randn(20, 3)), batch_size=4, shuffle=True,
        loading_bar=False, random_seed=seed,
    )  # fmt: skip
    ctx.torch_rng = torch.Generator().manual_seed(seed)
    ctx.numpy_rng = np.random.default_rng(seed)
    ctx.legacy_rng = np.random.RandomState(seed)
    ctx.python_rng = random.Random(seed)
    ctx.best = torch.tensor([float(seed)])
    ctx.extra = {"scores": [1.0, float(seed)], "name": f"run{seed}"}
    for step, (x,) in zip(range(2 + seed), ctx.loader):
        loss = ctx.model(x).pow(2).mean()
        ctx.optimizer.zero_grad()
        loss.backward()
        ctx.optimizer.step()
        ctx.scheduler.step()
        ctx.recorder.scalar("loss", loss)
        ctx.recorder.step()
        ctx.counter.value += 1
        ctx.counter.history.append(step)
    ctx.recorder.flush()
    return ctx


def fingerprint(ctx):
    """Everything a load could change, compared exactly (generators by their next draws)."""
    state = ctx.state_dict()
    for name in ("torch_rng", "numpy_rng", "legacy_rng", "python_rng"):
        del state[name]
    rngs = ctx.torch_rng.get_state(), ctx.python_rng.getstate()
    numpy_states = ctx.numpy_rng.bit_generator.state, ctx.legacy_rng.get_state()
    state["draws"] = (
        torch.rand(3, generator=ctx.torch_rng).tolist(), list(ctx.numpy_rng.random(3)),
        list(ctx.legacy_rng.random_sample(3)), [ctx.python_rng.random() for _ in range(3)],
    )  # fmt: skip
    ctx.torch_rng.set_state(rngs[0])
    ctx.python_rng.setstate(rngs[1])
    ctx.numpy_rng.bit_generator.state = numpy_states[0]
    ctx.legacy_rng.set_state(numpy_states[1])
    state["csv"] = (ctx.recorder.output_dir / "scalars.csv").read_text()
    return state


def assert_equal(a, b, path="state"):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), path
        for key in a:
            assert_equal(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), path
        for index, (x, y) in enumerate(zip(a, b)):
            assert_equal(x, y, f"{path}[{index}]")
    else:
        assert a == b, (path, a, b)


def corrupt_tensor_shape(state):
    state["model"]["0.weight"] = torch.zeros(5, 3)


CORRUPTIONS = {
    "model": (corrupt_tensor_shape, "model.0.weight: checkpoint has [5, 3], model has [4, 3]"),
    "optimizer": (
        lambda s: s["optimizer"].update(param_groups=s["optimizer"]["param_groups"] * 2),
        "optimizer: checkpoint has 2 parameter groups, optimizer has 1",
    ),
    "scheduler": (
        lambda s: s["scheduler"].update(last_epoch="3"),
        "scheduler.last_epoch: checkpoint has str, StepLR has int",
    ),
    "scaler": (
        lambda s: s["scaler"].pop("scale"),
        "scaler: missing from the checkpoint: scale",
    ),
    "loader": (
        lambda s: s["loader"].update(position="2"),
        "loader: SmartDataLoader.load_state_dict got a state with 'position' is '2', not an int",
    ),
    "recorder": (
        lambda s: s["recorder"].pop("count"),
        "recorder: Recorder.load_state_dict() got",
    ),
    "user object": (
        lambda s: s["counter"].update(value=[1]),
        "counter.value: checkpoint has a list of length 1, Counter has int",
    ),
    "user object with a check": (
        lambda s: s["vouching"].update(value=-1),
        "vouching: value must be >= 0, got -1",
    ),
    "torch generator": (
        lambda s: s["torch_rng"].update(state=s["torch_rng"]["state"][:100]),
        "torch_rng: the checkpoint's torch.Generator state does not load",
    ),
    "numpy generator": (
        lambda s: s["numpy_rng"]["state"].update(bit_generator="MT19937"),
        "numpy_rng: checkpoint has the state of a MT19937 bit generator, context has PCG64",
    ),
    "numpy random state": (
        lambda s: s["legacy_rng"].update(kind="random.Random"),
        "legacy_rng: checkpoint has a random.Random state, context has a numpy.random.RandomState",
    ),
    "python generator": (
        lambda s: s["python_rng"].update(version=99),
        "python_rng: the checkpoint's random.Random state does not load",
    ),
    "tensor": (
        lambda s: s.update(best=torch.zeros(2)), "best: checkpoint has [2], context has [1]"
    ),
    "plain value": (lambda s: s.update(epoch="one"), "epoch: checkpoint has str, context has int"),
    "container": (
        lambda s: s["extra"].update(scores=[1.0]),
        "extra.scores: checkpoint has a list of length 1, context has a list of length 2",
    ),
}


@pytest.mark.parametrize("corrupt,message", CORRUPTIONS.values(), ids=CORRUPTIONS.keys())
def test_a_state_that_does_not_fit_one_item_changes_no_item(tmp_path, corrupt, message):
    saved = build(tmp_path / "saved", seed=1).state_dict()
    corrupt(saved)
    ctx = build(tmp_path / "fresh", seed=0)
    before = fingerprint(ctx)
    with pytest.raises(pt.StateDictError) as info:
        ctx.load_state_dict(saved)
    assert message in str(info.value)
    assert "nothing was loaded" in str(info.value)
    assert_equal(fingerprint(ctx), before)


def test_every_problem_is_listed_in_one_error(tmp_path):
    saved = build(tmp_path / "saved", seed=1).state_dict()
    for corrupt, _ in CORRUPTIONS.values():
        corrupt(saved)
    with pytest.raises(pt.StateDictError) as info:
        build(tmp_path / "fresh", seed=0).load_state_dict(saved)
    for _, message in CORRUPTIONS.values():
        assert message in str(info.value)


@pytest.mark.parametrize("failing", ["user object", "module"])
def test_an_item_whose_own_loader_raises_is_rolled_back_with_every_other(tmp_path, failing):
    source = build(tmp_path / "saved", seed=1)
    source.late = ExtraState()
    source.late.tag = "saved"
    source.counter.history.reverse()
    saved = source.state_dict()
    ctx = build(tmp_path / "fresh", seed=0, sorted_history=failing == "user object")
    ctx.late = ExtraState(fail=failing == "module")
    before = fingerprint(ctx)
    with pytest.raises(pt.StateDictError) as info:
        ctx.load_state_dict(saved)
    name, error = {
        "user object": ("counter", "ValueError: history is not sorted"),
        "module": ("late", "RuntimeError: cannot change the tag from 'fresh' to 'saved'"),
    }[failing]
    assert str(info.value).startswith(f"{name}: its load_state_dict raised {error}")
    assert "every item was put back as it was" in str(info.value)
    assert_equal(fingerprint(ctx), before)
    assert ctx.late.tag == "fresh"

    ctx.counter.sorted_history = ctx.late.fail = False
    ctx.load_state_dict(saved)  # and once the cause is gone, the same state loads
    assert ctx.late.tag == "saved" and ctx.counter.value == source.counter.value
    loaded, expected = fingerprint(ctx), fingerprint(source)
    # A recorder keeps writing where it was created; the rest is the source's.
    expected["recorder"]["output_dir"] = loaded["recorder"]["output_dir"]
    assert_equal(loaded, expected | {"csv": loaded["csv"]})


def test_a_failed_load_into_a_resumed_directory_keeps_every_recorded_row(tmp_path):
    first = build(tmp_path / "run", seed=1)
    saved = first.state_dict()
    first.recorder.close()
    rows = (tmp_path / "run" / "scalars.csv").read_text()
    assert rows.count("\n") == 4  # header and three steps

    resumed = build(tmp_path / "other", seed=1)
    resumed.recorder = pt.Recorder(output_dir=tmp_path / "run", tensorboard=False, file=True)
    saved["model"]["0.weight"] = torch.zeros(5, 3)
    with pytest.raises(pt.StateDictError):
        resumed.load_state_dict(saved)
    resumed.recorder.flush()
    assert (tmp_path / "run" / "scalars.csv").read_text() == rows
    assert resumed.recorder.count == 0


class Logged(Counter):
    def __init__(self, log, name):
        super().__init__()
        self.log, self.name = log, name

    def load_state_dict(self, state):
        self.log.append(self.name)
        super().load_state_dict(state)


class LoggedVouching(Logged):
    def check_state_dict(self, state):
        pass


def test_objects_that_vouch_for_their_state_load_last_and_not_at_all_after_a_failure():
    log = []
    source = Context()
    source.vouching = LoggedVouching([], "vouching")
    source.late = ExtraState()
    source.late.tag = "saved"
    source.counter = Logged([], "counter")
    saved = source.state_dict()

    ctx = Context()
    ctx.vouching = LoggedVouching(log, "vouching")  # registered first, loaded last
    ctx.late = ExtraState(fail=True)
    ctx.counter = Logged(log, "counter")
    with pytest.raises(pt.StateDictError, match="late: its load_state_dict raised"):
        ctx.load_state_dict(saved)
    assert log == ["counter", "counter"]  # loaded, then put back; the vouching one untouched

    log.clear()
    ctx.late.fail = False
    ctx.load_state_dict(saved)
    assert log == ["counter", "vouching"]
