"""ctx.autocast(), backward() and step_optimizer() at 32 and bf16-mixed on the CPU, clipping,
several optimizers, and every way of asking for a precision the device cannot run."""
import pytest
import torch
from torch import nn

import pystematic_torch as pt
from pystematic_torch._context import precision
from pystematic_torch.context import Context
from tests.support.training import batches, mse, regressor, same_parameters, twins


def train_ours(ctx, model, optimizer, data, **clip):
    for batch in data:
        with ctx.autocast():
            loss = mse(model, batch)
        value = loss.item()
        ctx.backward(loss)
        assert loss.item() == value  # the loss to record is left as it is
        assert ctx.step_optimizer(optimizer, **clip) is True


def train_by_hand(model, optimizer, data, dtype=None, clip_norm=None, clip_value=None):
    for batch in data:
        optimizer.zero_grad()
        if dtype is None:
            loss = mse(model, batch)
        else:
            with torch.autocast("cpu", dtype=dtype):
                loss = mse(model, batch)
        loss.backward()
        if clip_norm is not None:
            nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
        if clip_value is not None:
            nn.utils.clip_grad_value_(model.parameters(), clip_value)
        optimizer.step()


# -- choosing the precision --------------------------------------------------------------


def test_precision_is_32_outside_an_experiment_and_explicit_values_are_checked():
    with Context().autocast():
        assert not torch.is_autocast_enabled("cpu")
    with Context(precision=32).autocast():
        assert not torch.is_autocast_enabled("cpu")
    for wrong, hint in [("fp16", "'16-mixed'"), ("bf16", "'bf16-mixed'"), (16, "'16-mixed'"),
                        ("64", None), (True, None), (32.0, None)]:  # fmt: skip
        with pytest.raises(pt.ParameterError) as raised:
            Context(precision=wrong)
        message = str(raised.value)
        assert f"got {wrong!r}" in message and "'32', 'bf16-mixed', '16-mixed'" in message
        assert (hint in message) if hint else "write" not in message


def test_autocast_runs_the_forward_in_bfloat16_on_the_cpu_and_only_inside():
    ctx = Context(precision="bf16-mixed")
    ctx.model = nn.Linear(4, 3)
    x = torch.randn(2, 4)
    with ctx.autocast():
        assert torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
        assert ctx.model(x).dtype == torch.bfloat16
    assert ctx.model(x).dtype == torch.float32
    assert ctx.model.weight.dtype == torch.float32  # the weights stay in float32


@pytest.mark.parametrize("name, dtype", [("32", None), ("bf16-mixed", torch.bfloat16)])
def test_training_equals_the_hand_written_loop_bit_for_bit(name, dtype):
    ours, theirs = twins()
    ctx = Context(precision=name)
    ctx.model = ours
    ctx.optimizer = torch.optim.Adam(ours.parameters(), lr=0.01)
    plain_optimizer = torch.optim.Adam(theirs.parameters(), lr=0.01)
    data = batches(6, 16)
    train_ours(ctx, ours, ctx.optimizer, data)
    train_by_hand(theirs, plain_optimizer, data, dtype=dtype)
    assert same_parameters(ours, theirs)
    assert all(param.grad is None for param in ours.parameters())  # zeroed after the step
    assert all(state["exp_avg"].dtype == torch.float32 for state in ctx.optimizer.state.values())
    untrained = regressor()
    assert not same_parameters(ours, untrained)


def test_bf16_and_32_train_differently_so_the_comparison_above_can_fail():
    at_32, at_bf16 = twins()
    for model, name in [(at_32, "32"), (at_bf16, "bf16-mixed")]:
        ctx = Context(precision=name)
        train_ours(ctx, model, torch.optim.Adam(model.parameters(), lr=0.01), batches(3, 16))
    assert not same_parameters(at_32, at_bf16)


# -- clipping ------------------------------------------------------------------------------


@pytest.mark.parametrize("clip, by_hand", [
    ({"clip_grad_norm": 0.5}, {"clip_norm": 0.5}),
    ({"clip_grad_value": 0.01}, {"clip_value": 0.01}),
])  # fmt: skip
def test_clipping_equals_torch_clipping_after_the_backward(clip, by_hand):
    ours, theirs = twins()
    unclipped = regressor()
    data = batches(4, 16, scale=50.0)  # large targets: gradients far above the thresholds
    ctx = Context(precision="bf16-mixed")
    train_ours(ctx, ours, torch.optim.SGD(ours.parameters(), lr=0.01), data, **clip)
    train_by_hand(theirs, torch.optim.SGD(theirs.parameters(), lr=0.01), data,
                  dtype=torch.bfloat16, **by_hand)  # fmt: skip
    train_by_hand(unclipped, torch.optim.SGD(unclipped.parameters(), lr=0.01), data,
                  dtype=torch.bfloat16)  # fmt: skip
    assert same_parameters(ours, theirs)
    assert not same_parameters(ours, unclipped)


@pytest.mark.parametrize("clip, message", [
    ({"clip_grad_norm": 1.0, "clip_grad_value": 1.0}, "give one of them"),
    ({"clip_grad_norm": 0}, "clip_grad_norm=0; give a positive number"),
    ({"clip_grad_norm": float("nan")}, "clip_grad_norm=nan; give a positive number"),
    ({"clip_grad_value": -1}, "clip_grad_value=-1; give a positive number"),
    ({"clip_grad_value": True}, "clip_grad_value=True; give a positive number"),
    ({"clip_grad_norm": "1"}, "clip_grad_norm='1'; give a positive number"),
])  # fmt: skip
def test_bad_clipping_thresholds_are_refused_before_anything_steps(clip, message):
    model = regressor()
    before = [param.detach().clone() for param in model.parameters()]
    ctx = Context()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ctx.backward(mse(model, batches(1, 8)[0]))
    with pytest.raises(ValueError, match=message):
        ctx.step_optimizer(optimizer, **clip)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(param.grad is not None for param in model.parameters())  # kept for a retry


# -- several optimizers ---------------------------------------------------------------------


class Generator(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 6))

    def forward(self, z):
        return self.net(z)


class Critic(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 1))

    def forward(self, x):
        return self.net(x)


def gan(seed=0):
    torch.manual_seed(seed)
    generator, critic = Generator(), Critic()
    return (generator, critic, torch.optim.Adam(generator.parameters(), lr=0.01),
            torch.optim.SGD(critic.parameters(), lr=0.05, momentum=0.9))  # fmt: skip


def gan_data(steps=5):
    g = torch.Generator().manual_seed(3)
    return [(torch.randn(8, 6, generator=g), torch.randn(8, 3, generator=g)) for _ in range(steps)]


def bce(logits, target):
    return nn.functional.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def test_a_gan_steps_each_optimizer_with_its_own_call_like_the_plain_loop():
    g1, c1, g_opt1, c_opt1 = gan()
    g2, c2, g_opt2, c_opt2 = gan()
    ctx = Context(precision="bf16-mixed")
    ctx.generator, ctx.critic, ctx.g_opt, ctx.c_opt = g1, c1, g_opt1, c_opt1
    for real, z in gan_data():
        with ctx.autocast():
            fake = g1(z)
            critic_loss = bce(c1(real).float(), 1.0) + bce(c1(fake.detach()).float(), 0.0)
        ctx.backward(critic_loss)
        assert ctx.step_optimizer(c_opt1)
        with ctx.autocast():
            generator_loss = bce(c1(fake).float(), 1.0)
        # The generator's loss reaches the critic too; inputs= keeps those gradients out.
        ctx.backward(generator_loss, inputs=list(g1.parameters()))
        assert ctx.step_optimizer(g_opt1, clip_grad_norm=1.0)

        with torch.autocast("cpu", dtype=torch.bfloat16):
            fake = g2(z)
            critic_loss = bce(c2(real).float(), 1.0) + bce(c2(fake.detach()).float(), 0.0)
        c_opt2.zero_grad()
        critic_loss.backward()
        c_opt2.step()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            generator_loss = bce(c2(fake).float(), 1.0)
        g_opt2.zero_grad()
        generator_loss.backward()
        nn.utils.clip_grad_norm_(g2.parameters(), 1.0)
        g_opt2.step()
    assert same_parameters(g1, g2) and same_parameters(c1, c2)
    assert not same_parameters(g1, gan()[0])


# -- items next to the helpers ------------------------------------------------------------------


def test_step_and_epoch_stay_free_item_names_and_the_helpers_keep_theirs():
    ctx = Context(precision="bf16-mixed")
    ctx.step = 0
    ctx.epoch = 0
    ctx.model = regressor()
    ctx.optimizer = torch.optim.SGD(ctx.model.parameters(), lr=0.1)
    for batch in batches(3, 8):
        with ctx.autocast():
            loss = mse(ctx.model, batch)
        ctx.backward(loss)
        ctx.step_optimizer(ctx.optimizer)
        ctx.step += 1
    ctx.epoch += 1
    state = ctx.state_dict()
    assert (state["step"], state["epoch"]) == (3, 1) and list(state) == [*ctx, "_random_state"]
    ctx.step, ctx.epoch = 0, 0
    ctx.load_state_dict(state)
    assert (ctx.step, ctx.epoch) == (3, 1)
    for name in ("autocast", "backward", "step_optimizer", "accumulate"):
        with pytest.raises(AttributeError, match="is a Context method or property"):
            setattr(ctx, name, 1)


def test_step_optimizer_and_backward_refuse_what_they_cannot_use():
    ctx = Context()
    with pytest.raises(TypeError, match="needs a torch.optim.Optimizer, got Linear"):
        ctx.step_optimizer(nn.Linear(2, 2))
    with pytest.raises(TypeError, match="needs the loss tensor, got float"):
        ctx.backward(1.0)


def test_an_optimizer_without_gradients_is_not_stepped():
    model = regressor()
    ctx = Context()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=0.1)
    before = [param.detach().clone() for param in model.parameters()]
    assert ctx.step_optimizer(optimizer) is False
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


# -- precisions the device cannot run ---------------------------------------------------------


def test_16_mixed_on_the_cpu_is_refused_by_every_helper_suggesting_bf16_mixed():
    ctx = Context(precision="16-mixed")
    ctx.model = regressor()
    optimizer = torch.optim.SGD(ctx.model.parameters(), lr=0.1)
    before = [param.detach().clone() for param in ctx.model.parameters()]
    loss = mse(ctx.model, batches(1, 4)[0])
    for call in (ctx.autocast, lambda: ctx.backward(loss), lambda: ctx.step_optimizer(optimizer)):
        with pytest.raises(pt.PrecisionError) as raised:
            call()
        message = str(raised.value)
        assert "'16-mixed' needs a CUDA GPU, but the context is on cpu" in message
        assert "use 'bf16-mixed' there (--precision bf16-mixed" in message
    assert isinstance(raised.value, pt.DeviceError) and isinstance(raised.value, pt.Error)
    assert all(param.grad is None for param in ctx.model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, ctx.model.parameters()))


def test_bf16_mixed_without_bfloat16_support_is_refused(monkeypatch):
    asked = []

    def no_bfloat16(device):
        asked.append(device)
        return False

    monkeypatch.setattr(precision, "device_supports_bf16", no_bfloat16)
    ctx = Context(precision="bf16-mixed")
    with pytest.raises(pt.PrecisionError) as raised:
        ctx.autocast()
    assert asked == [torch.device("cpu")]
    assert str(raised.value) == (
        "precision 'bf16-mixed' needs bfloat16 support, which cpu lacks; use '32' instead "
        "(--precision, or Context(precision=...))."
    )
    with Context(precision="32").autocast():  # 32 asks nothing of the device
        pass
    assert len(asked) == 1


def test_a_gpu_without_bfloat16_is_told_to_use_16_mixed(monkeypatch):
    monkeypatch.setattr(precision, "device_supports_bf16", lambda device: False)
    monkeypatch.setattr(precision, "_describe", lambda device: "cuda:0 (Tesla T4)")
    with pytest.raises(pt.PrecisionError) as raised:
        precision.check_device("bf16-mixed", torch.device("cuda", 0))
    assert "which cuda:0 (Tesla T4) lacks; use '16-mixed' (float16 with loss scaling) or '32'" \
        in str(raised.value)  # fmt: skip


def test_devices_without_autocast_are_refused(monkeypatch):
    monkeypatch.setattr(torch.amp, "is_autocast_available", lambda device_type: False)
    with pytest.raises(pt.PrecisionError, match="torch does not offer for cpu devices"):
        Context(precision="bf16-mixed").autocast()
