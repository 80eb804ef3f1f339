"""16-mixed and bf16-mixed on a real GPU: float16 autocast, loss scaling against torch's own
GradScaler loop, and a run resumed from a checkpoint file with the same scale."""
import pytest
import torch
from torch import nn

import pystematic_torch as pt
from pystematic_torch._context import precision
from pystematic_torch.context import Context
from tests.support.training import (
    batches,
    grad_scaler_steps,
    mse,
    our_steps,
    same_parameters,
    twins,
)  # fmt: skip

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

SCALER = precision.SCALER_ENTRY


def on_gpu(data):
    return [(x.cuda(), y.cuda()) for x, y in data]


def gpu_context(name, model):
    ctx = Context(precision=name)
    ctx.model = model
    ctx.optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return ctx.cuda()


def test_16_mixed_runs_the_forward_in_float16_with_a_scaler_made_at_the_move():
    ctx = Context(precision="16-mixed")
    ctx.model = nn.Linear(4, 2)
    assert ctx._steps.scaler._scaler is None
    ctx.cuda()
    scaler = ctx._steps.scaler._scaler
    assert scaler is not None and scaler.is_enabled()
    with ctx.autocast():
        assert ctx.model(torch.randn(3, 4, device="cuda")).dtype == torch.float16
    assert ctx.model.weight.dtype == torch.float32


def test_16_mixed_equals_torchs_grad_scaler_loop_bit_for_bit():
    ours, theirs = twins()
    ctx = gpu_context("16-mixed", ours)
    data = on_gpu(batches(6, 32))
    stepped = our_steps(ctx, data, overflow_at={2}, clip_grad_norm=1.0)

    theirs.cuda()
    optimizer = torch.optim.SGD(theirs.parameters(), lr=0.05, momentum=0.9)
    scaler, theirs_stepped = grad_scaler_steps(
        theirs, optimizer, data, "cuda", overflow_at={2}, clip_norm=1.0
    )
    assert stepped == theirs_stepped and stepped[2] is False
    assert same_parameters(ours, theirs)
    assert ctx.state_dict()[SCALER]["scale"] == scaler.get_scale() < 2.0**16


def test_bf16_mixed_on_the_gpu_equals_torch_autocast_bit_for_bit():
    ours, theirs = twins()
    ctx = gpu_context("bf16-mixed", ours)
    data = on_gpu(batches(4, 32))
    assert our_steps(ctx, data) == [True] * 4
    theirs.cuda()
    optimizer = torch.optim.SGD(theirs.parameters(), lr=0.05, momentum=0.9)
    for batch in data:
        optimizer.zero_grad()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = mse(theirs, batch)
        loss.backward()
        optimizer.step()
    assert same_parameters(ours, theirs)
    assert SCALER not in ctx.state_dict()


def test_an_fp16_run_resumed_from_a_checkpoint_file_continues_with_the_same_scale(tmp_path):
    data = on_gpu(batches(8, 32))
    ctx = gpu_context("16-mixed", twins()[0])
    our_steps(ctx, data[:4], overflow_at={1, 3})
    path = pt.save_checkpoint(ctx.state_dict(), id=1, directory=tmp_path)
    scale_at_save = ctx.state_dict()[SCALER]["scale"]
    our_steps(ctx, data[4:])

    saved = torch.load(path, weights_only=True)
    assert saved[SCALER]["scale"] == scale_at_save <= 2.0**14
    resumed = Context(precision="16-mixed")
    resumed.model = twins(seed=3)[0]
    resumed.optimizer = torch.optim.SGD(resumed.model.parameters(), lr=0.05, momentum=0.9)
    resumed.autotransform(checkpoint=path, cuda=True, distributed=False)
    our_steps(resumed, data[4:])
    assert same_parameters(resumed.model, ctx.model)
    assert resumed.state_dict()[SCALER] == ctx.state_dict()[SCALER]


def test_a_gpu_without_bfloat16_is_refused_naming_it(monkeypatch):
    monkeypatch.setattr(precision, "device_supports_bf16", lambda device: False)
    ctx = Context(precision="bf16-mixed").cuda()
    with pytest.raises(pt.PrecisionError) as raised:
        ctx.autocast()
    name = torch.cuda.get_device_name(ctx.device)
    assert f"which {ctx.device} ({name}) lacks; use '16-mixed'" in str(raised.value)


def test_the_real_capability_query_answers_on_this_gpu():
    supported = precision.device_supports_bf16(torch.device("cuda", 0))
    major, _ = torch.cuda.get_device_capability(0)
    assert supported == (major >= 8)
