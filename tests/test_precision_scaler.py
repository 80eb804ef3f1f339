"""The 16-mixed loss scale: its logic against torch's own GradScaler loops, and its state.

The logic is the same on every device, so most tests run it on the CPU: a fixture lets a
16-mixed Context work there, with torch's CPU float16 autocast and CPU GradScaler (a real
run refuses 16-mixed on the CPU, see test_precision.py). tests/test_precision_cuda.py runs
it on a GPU.
"""
import io
import logging

import pytest
import torch

import pystematic_torch as pt
from pystematic_torch._context import precision
from pystematic_torch.context import Context
from tests.support.training import (
    batches,
    chunks,
    grad_scaler_steps,
    max_difference,
    mse,
    our_steps,
    regressor,
    same_parameters,
    twins,
)  # fmt: skip

SCALER = precision.SCALER_ENTRY
INF = float("inf")


@pytest.fixture
def scaling_on_cpu(monkeypatch):
    """Let a 16-mixed Context scale its losses on the CPU."""
    real_check = precision.check_device
    monkeypatch.setattr(
        precision, "check_device",
        lambda name, device: None if name == "16-mixed" else real_check(name, device),
    )  # fmt: skip


def scaled_context(model, lr=0.05):
    ctx = Context(precision="16-mixed")
    ctx.model = model
    ctx.optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    return ctx


def scale_of(ctx):
    return ctx.state_dict()[SCALER]["scale"]


def test_scaling_clipping_and_skipping_equal_torchs_grad_scaler_loop(scaling_on_cpu):
    ours, theirs = twins()
    ctx = scaled_context(ours)
    data = batches(6, 16)
    stepped = our_steps(ctx, data, overflow_at={2}, clip_grad_norm=1.0)

    optimizer = torch.optim.SGD(theirs.parameters(), lr=0.05, momentum=0.9)
    scaler, theirs_stepped = grad_scaler_steps(
        theirs, optimizer, data, "cpu", overflow_at={2}, clip_norm=1.0
    )
    # 2**16 overflows float16 at first, as it often does: torch's loop skips that step too.
    assert stepped == theirs_stepped == [True, False, False, True, True, True]
    assert same_parameters(ours, theirs)
    assert scale_of(ctx) == scaler.get_scale() == 2.0**14
    assert all(torch.isfinite(param).all() for param in ours.parameters())


def test_two_optimizers_on_one_loss_unscale_with_the_same_scale(scaling_on_cpu):
    """torch's rule for several optimizers: step them all, then update the scale once."""
    ours, theirs = twins()
    ctx = Context(precision="16-mixed")
    first = torch.optim.SGD(ours.hidden.parameters(), lr=0.05)
    second = torch.optim.Adam(ours.out.parameters(), lr=0.01)
    data = batches(5, 16)
    for index, batch in enumerate(data):
        loss = mse(ours, batch)
        ctx.backward(loss * INF if index == 1 else loss)
        assert ctx.step_optimizer(first) is ctx.step_optimizer(second) is (index != 1)

    plain_first = torch.optim.SGD(theirs.hidden.parameters(), lr=0.05)
    plain_second = torch.optim.Adam(theirs.out.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu")
    for index, batch in enumerate(data):
        plain_first.zero_grad(), plain_second.zero_grad()
        loss = mse(theirs, batch)
        scaler.scale(loss * INF if index == 1 else loss).backward()
        scaler.step(plain_first), scaler.step(plain_second)
        scaler.update()
    assert same_parameters(ours, theirs)
    assert scale_of(ctx) == scaler.get_scale() == 2.0**15


def test_a_scale_change_while_another_optimizer_accumulates_keeps_its_gradients_right(
    scaling_on_cpu,
):
    """A critic overflows and halves the scale in the middle of the generator's cycle: the
    generator's accumulated gradients are rescaled, so its update equals one at 32."""
    scaled_generator, plain_generator = twins(seed=4)
    critic = regressor(seed=5)
    ctx = Context(precision="16-mixed").accumulate(2)
    g_opt = torch.optim.SGD(scaled_generator.parameters(), lr=0.1)
    c_opt = torch.optim.SGD(critic.parameters(), lr=0.1)
    data = batches(4, 8, seed=9)
    for index, batch in enumerate(data):
        critic_loss = mse(critic, batch)
        ctx.backward(critic_loss * INF if index == 1 else critic_loss)
        ctx.step_optimizer(c_opt)
        ctx.backward(mse(scaled_generator, batch))  # the scale halves here, at index 1
        ctx.step_optimizer(g_opt)
    assert scale_of(ctx) == 2.0**15

    plain = Context(precision="32").accumulate(2)
    plain_opt = torch.optim.SGD(plain_generator.parameters(), lr=0.1)
    for batch in data:
        plain.backward(mse(plain_generator, batch))
        plain.step_optimizer(plain_opt)
    assert max_difference(scaled_generator, plain_generator) < 1e-6
    assert not same_parameters(plain_generator, regressor(seed=4))


# -- the scale's state -----------------------------------------------------------------------


def through_disk(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_a_resumed_run_continues_with_the_same_scale_bit_for_bit(scaling_on_cpu):
    data = batches(8, 16)
    ctx = scaled_context(regressor())
    # The overflow right before the checkpoint owes a scale update that no backward has
    # applied yet: the saved state must include it, as torch's loop has it.
    assert our_steps(ctx, data[:4], overflow_at={3})[3] is False
    saved = through_disk(ctx.state_dict())
    plain = regressor()
    scaler, _ = grad_scaler_steps(
        plain, torch.optim.SGD(plain.parameters(), lr=0.05, momentum=0.9), data[:4], "cpu",
        overflow_at={3},
    )  # fmt: skip
    assert saved[SCALER] == scaler.state_dict() and saved[SCALER]["scale"] < 2.0**16
    our_steps(ctx, data[4:])

    resumed = scaled_context(regressor(seed=7))
    resumed.load_state_dict(saved)
    our_steps(resumed, data[4:])
    assert same_parameters(resumed.model, ctx.model)
    assert resumed.state_dict()[SCALER] == ctx.state_dict()[SCALER]
    assert ctx.state_dict()[SCALER]["_growth_tracker"] >= 4


def test_the_state_round_trips_before_any_device_is_known():
    ctx = Context(precision="16-mixed")
    assert list(ctx) == [SCALER]
    initial = ctx.state_dict()[SCALER]
    assert initial == torch.amp.GradScaler("cpu").state_dict()
    custom = {"scale": 1024.0, "growth_factor": 4.0, "backoff_factor": 0.25,
              "growth_interval": 10, "_growth_tracker": 3}  # fmt: skip
    ctx.load_state_dict(through_disk({SCALER: custom}))
    assert ctx.state_dict()[SCALER] == custom
    scaler = ctx._steps.scaler.scaler(torch.device("cpu"))  # what a GPU run does on its move
    assert scaler.get_scale() == 1024.0 and scaler.get_growth_interval() == 10
    assert ctx.state_dict()[SCALER] == custom
    ctx.to("cpu")  # moving to the CPU keeps the state as it is
    assert ctx.state_dict()[SCALER] == custom


def test_a_malformed_scale_is_refused_with_everything_else_and_nothing_changes():
    ctx = Context(precision="16-mixed")
    ctx.model = regressor()
    good = ctx.state_dict()
    before = {name: value.clone() for name, value in ctx.model.state_dict().items()}
    bad = dict(good)
    bad["model"] = {name: value + 1 for name, value in good["model"].items()}
    bad[SCALER] = dict(good[SCALER], scale="big", growth_interval=0)
    with pytest.raises(pt.StateDictError) as raised:
        ctx.load_state_dict(bad)
    assert (
        f"{SCALER}: scale must be a positive number, got 'big'; growth_interval must be an "
        "integer >= 1, got 0"
    ) in str(raised.value)
    assert all(torch.equal(before[name], value) for name, value in ctx.model.state_dict().items())
    for wrong, problem in [({"scale": 1.0}, "missing from the checkpoint: _growth_tracker, "),
                           ([1.0], "a loss scale's state is a dict, got list")]:  # fmt: skip
        with pytest.raises(pt.StateDictError, match=problem):
            ctx.load_state_dict(dict(good, **{SCALER: wrong}))
    assert ctx.state_dict()[SCALER] == good[SCALER]


class FailsToLoadOnce:
    """An item whose first load raises after its check passed; loaded after the scale."""

    def __init__(self, read_scale):
        self.loads, self.read_scale, self.scale_seen = 0, read_scale, None

    def state_dict(self):
        return {"value": 1}

    def check_state_dict(self, state):
        pass

    def load_state_dict(self, state):
        self.loads += 1
        if self.loads == 1:
            self.scale_seen = self.read_scale()
            raise RuntimeError("disk gone")


def test_a_failed_load_puts_the_scale_back():
    ctx = Context(precision="16-mixed")
    ctx.other = FailsToLoadOnce(lambda: scale_of(ctx))
    state = ctx.state_dict()
    state[SCALER] = dict(state[SCALER], scale=8.0)
    with pytest.raises(pt.StateDictError, match="every item was put back"):
        ctx.load_state_dict(state)
    assert ctx.other.loads == 2 and ctx.other.scale_seen == 8.0  # the scale was loaded
    assert ctx.state_dict()[SCALER]["scale"] == 2.0**16


def test_a_run_may_resume_a_checkpoint_of_another_precision(caplog):
    fp16 = Context(precision="16-mixed")
    fp16.model = regressor(seed=2)
    fp16.load_state_dict({"model": fp16.model.state_dict(),
                          SCALER: dict(fp16.state_dict()[SCALER], scale=64.0)})  # fmt: skip
    fp16_state = through_disk(fp16.state_dict())

    bf16 = Context(precision="bf16-mixed")
    bf16.model = regressor(seed=3)
    with caplog.at_level(logging.INFO, logger="pystematic.torch"):
        bf16.load_state_dict(fp16_state)  # strict
    assert same_parameters(bf16.model, fp16.model) and SCALER not in bf16.state_dict()
    assert "holds the loss scale of a '16-mixed' run" in caplog.text

    from_32 = Context(precision="16-mixed")
    from_32.model = regressor(seed=3)
    with caplog.at_level(logging.INFO, logger="pystematic.torch"):
        from_32.load_state_dict(through_disk(bf16.state_dict()))
    assert same_parameters(from_32.model, fp16.model)
    assert from_32.state_dict()[SCALER]["scale"] == 2.0**16
    assert "this '16-mixed' run starts from the initial scale" in caplog.text


def test_the_users_own_grad_scaler_item_lives_beside_ours():
    ctx = Context(precision="16-mixed")
    ctx.scaler = torch.amp.GradScaler("cpu", init_scale=8.0)
    ctx.grad_scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
    state = through_disk(ctx.state_dict())
    assert (state["scaler"]["scale"], state["grad_scaler"]["scale"]) == (8.0, 4.0)
    assert state[SCALER]["scale"] == 2.0**16
    ctx.load_state_dict(state)


def test_fp16_gradients_from_a_plain_backward_are_refused(scaling_on_cpu):
    ctx = scaled_context(regressor())
    before = [param.detach().clone() for param in ctx.model.parameters()]
    mse(ctx.model, batches(1, 8)[0]).backward()
    with pytest.raises(pt.PrecisionError, match=r"Call ctx.backward\(loss\) instead of"):
        ctx.step_optimizer(ctx.optimizer)
    assert all(torch.equal(a, b) for a, b in zip(before, ctx.model.parameters()))
    for chunk in chunks(batches(4, 8), 2):  # ctx.backward() once per step is fine
        our_steps(ctx, chunk)
