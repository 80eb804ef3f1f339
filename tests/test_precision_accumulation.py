"""ctx.accumulate(n): n micro-batches give the update of one batch n times larger, in one
process and in 2 gloo ranks, where the micro-steps before the last skip DDP's all-reduce."""
import copy

import pytest
import torch
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

import pystematic_torch as pt
from pystematic_torch.context import Context
from tests.support.ranks import run_on_ranks
from tests.support.training import (
    batches,
    chunks,
    max_difference,
    merged,
    mse,
    regressor,
    same_parameters,
    twins,
)  # fmt: skip

TOLERANCE = 1e-6


def accumulate(ctx, model, optimizer, micro_batches, **clip):
    stepped = []
    for batch in micro_batches:
        ctx.backward(mse(model, batch))
        stepped.append(ctx.step_optimizer(optimizer, **clip))
    return stepped


def large_batch_steps(model, optimizer, large_batches, clip_norm=None):
    for batch in large_batches:
        optimizer.zero_grad()
        mse(model, batch).backward()
        if clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
        optimizer.step()


@pytest.mark.parametrize("make_optimizer, clip", [
    (lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9), {}),
    (lambda params: torch.optim.Adam(params, lr=0.01), {}),
    (lambda params: torch.optim.SGD(params, lr=0.1), {"clip_grad_norm": 0.05}),
])  # fmt: skip
def test_four_micro_batches_equal_one_four_times_larger(make_optimizer, clip):
    ours, theirs = twins()
    ctx = Context().accumulate(4)
    micro = batches(12, 8, scale=3.0)
    stepped = accumulate(ctx, ours, make_optimizer(ours.parameters()), micro, **clip)
    large_batch_steps(theirs, make_optimizer(theirs.parameters()),
                      [merged(part) for part in chunks(micro, 4)],
                      clip_norm=clip.get("clip_grad_norm"))  # fmt: skip
    assert stepped == [False, False, False, True] * 3
    assert max_difference(ours, theirs) < TOLERANCE
    assert not same_parameters(ours, regressor())
    if clip:  # the clip acted on the cycle's whole gradient, as on the large batch's
        unclipped = regressor()
        large_batch_steps(unclipped, make_optimizer(unclipped.parameters()),
                          [merged(part) for part in chunks(micro, 4)])  # fmt: skip
        assert max_difference(ours, unclipped) > 1e-3


def test_several_optimizers_count_their_own_calls():
    ours, theirs = twins()
    ctx = Context().accumulate(3)
    first = torch.optim.SGD(ours.hidden.parameters(), lr=0.1)
    second = torch.optim.Adam(ours.out.parameters(), lr=0.01)
    micro = batches(6, 4)
    for batch in micro:
        ctx.backward(mse(ours, batch))
        assert ctx.step_optimizer(first) is ctx.step_optimizer(second)
    plain_first = torch.optim.SGD(theirs.hidden.parameters(), lr=0.1)
    plain_second = torch.optim.Adam(theirs.out.parameters(), lr=0.01)
    for batch in [merged(part) for part in chunks(micro, 3)]:
        plain_first.zero_grad(), plain_second.zero_grad()
        mse(theirs, batch).backward()
        plain_first.step(), plain_second.step()
    assert max_difference(ours, theirs) < TOLERANCE


def test_changing_the_count_and_stopping():
    ctx = Context()
    model = regressor()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for wrong in (0, -2, 2.5, True, "4"):
        with pytest.raises(ValueError, match=f"an int >= 1, got {wrong!r}"):
            ctx.accumulate(wrong)
    ctx.accumulate(3)
    assert accumulate(ctx, model, optimizer, batches(2, 4)) == [False, False]
    with pytest.raises(pt.PrecisionError, match=r"an optimizer has 2 of its 3 micro-steps"):
        ctx.accumulate(2)
    ctx.accumulate(3)  # the same count mid-cycle changes nothing
    assert accumulate(ctx, model, optimizer, batches(1, 4)) == [True]
    ctx.accumulate(1)
    assert accumulate(ctx, model, optimizer, batches(2, 4)) == [True, True]


def test_gradients_from_a_plain_backward_are_refused_while_accumulating():
    model = regressor()
    ctx = Context().accumulate(2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    mse(model, batches(1, 4)[0]).backward()
    with pytest.raises(pt.PrecisionError, match="divides the loss by the 2 accumulated micro"):
        ctx.step_optimizer(optimizer)


# -- two ranks -----------------------------------------------------------------------------------


def counting_all_reduces(calls):
    def hook(process_group, bucket):
        calls.append(bucket.index())
        return default_hooks.allreduce_hook(process_group, bucket)

    return hook


def train_on_two_ranks(rank, micro_steps, cycles=2, world_size=2):
    """Accumulate on this rank's micro-batches; compare with one process on the global batch."""
    model = regressor()
    reference = copy.deepcopy(model)
    ctx = Context()
    ctx.model = model
    ctx.optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ctx.ddp()
    all_reduces = []
    ctx.model.register_comm_hook(None, counting_all_reduces(all_reduces))
    ctx.accumulate(micro_steps)
    # Micro-step m of cycle c on rank r reads batch (c * micro_steps + m) * world_size + r.
    data = batches(cycles * micro_steps * world_size, 8, seed=11)
    mine = data[rank::world_size]
    stepped = accumulate(ctx, ctx.model, ctx.optimizer, mine)

    per_cycle = micro_steps * world_size
    large_batch_steps(reference, torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9),
                      [merged(part) for part in chunks(data, per_cycle)])  # fmt: skip
    return {
        "stepped": stepped,
        "all_reduces": len(all_reduces),
        "difference": max_difference(ctx.model.module, reference),
        "moved": max_difference(ctx.model.module, regressor()),
        "weights": [param.detach().clone() for param in ctx.model.parameters()],
    }


@pytest.mark.timeout(240)
def test_two_ranks_accumulate_to_the_global_batch_and_all_reduce_once_per_cycle():
    results = run_on_ranks(train_on_two_ranks, args=(4,), timeout=180)
    for result in results:
        assert result["stepped"] == [False, False, False, True] * 2
        # 8 backward passes, and an all-reduce (of the one bucket this small model fills) in
        # the last of each cycle only.
        assert result["all_reduces"] == 2
        assert result["difference"] < TOLERANCE and result["moved"] > 1e-3
    first, second = (result["weights"] for result in results)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_a_checkpoint_in_the_middle_of_a_cycle_resumes_with_a_new_cycle():
    model = regressor()
    ctx = Context().accumulate(4)
    ctx.model = model
    ctx.optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    assert accumulate(ctx, model, ctx.optimizer, batches(2, 8, seed=5)) == [False, False]
    state = ctx.state_dict()
    assert all(param.grad is not None for param in model.parameters())
    # the gathered gradients are not in it
    assert set(state) == {"model", "optimizer", "_random_state"}

    resumed = Context().accumulate(4)
    resumed.model, reference = twins(seed=8)
    resumed.optimizer = torch.optim.SGD(resumed.model.parameters(), lr=0.1)
    resumed.load_state_dict(state)
    reference.load_state_dict(state["model"])
    micro = batches(4, 8, seed=6)
    assert accumulate(resumed, resumed.model, resumed.optimizer, micro) == [False] * 3 + [True]
    large_batch_steps(reference, torch.optim.SGD(reference.parameters(), lr=0.1), [merged(micro)])
    assert max_difference(resumed.model, reference) < TOLERANCE
