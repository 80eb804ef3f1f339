"""Every rank's global random number generators are part of a Context's state."""
import logging
import random
import time

import numpy as np
import pytest
import torch
from torch import nn

import pystematic_torch as pt
from pystematic_torch import _seeding
from pystematic_torch._context import randomness
from tests.support.ranks import run_on_ranks

pytestmark = pytest.mark.usefixtures("global_generators")


def draws():
    """A dropout mask and a number from each global generator."""
    mask = nn.functional.dropout(torch.ones(16), 0.5).tolist()
    return mask, torch.rand(2).tolist(), np.random.random_sample(2).tolist(), random.random()


def session():
    ctx = pt.Context()
    ctx.model = nn.Linear(3, 3)
    return ctx


def test_a_loaded_state_draws_what_the_saved_run_drew_next(tmp_path):
    _seeding.seed_everything(5)
    ctx = session()
    draws()
    path = pt.save_checkpoint(ctx.state_dict(), id=1, directory=tmp_path)
    expected = draws()

    _seeding.seed_everything(6)  # another run, another seed
    resumed = session()
    resumed.load_state_dict(pt.load_checkpoint(path))
    assert draws() == expected

    saved = torch.load(path, weights_only=True)[randomness.KEY]
    assert saved["world_size"] == 1 and len(saved["ranks"]) == 1
    assert set(saved["ranks"][0]) == {"python", "numpy", "torch", "cuda"}


def test_a_state_without_random_state_leaves_the_generators_alone():
    ctx = session()
    state = {"model": ctx.model.state_dict()}  # an older checkpoint, or one built by hand
    _seeding.seed_everything(1)
    expected = draws()
    _seeding.seed_everything(1)
    ctx.load_state_dict(state)
    assert draws() == expected


def test_a_malformed_random_state_is_refused_before_anything_changes():
    ctx = session()
    good = ctx.state_dict()
    before = ctx.model.weight.detach().clone()
    other = session().state_dict()

    broken = dict(other, _random_state={"ranks": [{"python": 1}]})
    with pytest.raises(pt.StateDictError) as caught:
        ctx.load_state_dict(broken)
    message = str(caught.value)
    assert "_random_state.ranks[0].python" in message and "nothing was loaded" in message
    assert "_random_state.ranks[0].numpy" in message
    assert torch.equal(ctx.model.weight, before)

    for malformed in ("seeds", {"ranks": []}, {"ranks": [3]}):
        with pytest.raises(pt.StateDictError, match="random state|generator states"):
            ctx.load_state_dict(dict(other, _random_state=malformed))
    with pytest.raises(pt.StateDictError, match="no random state for rank 0"):
        ctx.load_state_dict(dict(other, _random_state={**good["_random_state"],
                                                        "ranks": [None]}))  # fmt: skip
    assert torch.equal(ctx.model.weight, before)
    ctx.load_state_dict(good, strict=False)  # the reserved entry is never "unexpected"


def _ranks_body(rank):
    _seeding.seed_everything(11)
    ctx = session()
    ctx.ddp()  # each rank now draws from its own stream
    draws()
    state = ctx.state_dict()
    own = dict(state[randomness.KEY])
    after_save = draws()
    saved = pt.broadcast_from_master(state)  # what rank 0 writes, every rank reads

    _seeding.seed_everything(12)
    resumed = session()
    resumed.load_state_dict(saved)
    resumed.ddp()  # keeps the restored per-rank streams
    return {"own": own, "after_save": after_save, "resumed": draws()}


@pytest.mark.timeout(120)
def test_every_rank_restores_its_own_generators_and_ddp_keeps_them():
    first, second = run_on_ranks(_ranks_body)
    for result in (first, second):
        assert result["resumed"] == result["after_save"]
    assert first["after_save"] != second["after_save"]  # the ranks' streams differ
    assert first["own"]["world_size"] == 2 and first["own"]["ranks_diverged"]
    assert all(entry is not None for entry in first["own"]["ranks"])  # rank 0 holds all
    assert second["own"]["ranks"][0] is None and second["own"]["ranks"][1] is not None


def _checkpoint_before_ddp_body(rank):
    _seeding.seed_everything(4)
    ctx = session()
    saved = pt.broadcast_from_master(ctx.state_dict())
    ctx.ddp()
    expected = draws()

    _seeding.seed_everything(5)
    resumed = session()
    resumed.load_state_dict(saved)
    resumed.ddp()  # diverges exactly as the saved run did after its save
    return draws() == expected


@pytest.mark.timeout(120)
def test_a_state_saved_before_ddp_diverges_on_resume_as_the_saved_run_did():
    assert run_on_ranks(_checkpoint_before_ddp_body) == [True, True]


def _only_rank_zero_body(rank, wait, warn_after):
    randomness.WAIT_SECONDS, randomness.WARN_AFTER_SECONDS = wait, warn_after
    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logging.getLogger("pystematic.torch").addHandler(handler)
    ctx = session()
    if rank != 0:
        return None  # the mistake: `if is_master(): save_checkpoint(ctx.state_dict(), ...)`
    started = time.monotonic()
    with pytest.raises(pt.DistributedError) as caught:
        ctx.state_dict()
    return str(caught.value), time.monotonic() - started, messages


@pytest.mark.timeout(120)
def test_state_dict_on_rank_zero_alone_is_a_clear_error_not_a_hang():
    error, waited, messages = run_on_ranks(_only_rank_zero_body, args=(3.0, 1.0))[0]
    assert "rank(s) 1" in error and "every rank calls ctx.state_dict()" in error
    assert "if is_master():" in error
    assert 3.0 <= waited < 20
    assert any("waiting for rank(s) 1" in message for message in messages), messages


def _two_rank_state_body(rank):
    _seeding.seed_everything(21)
    ctx = session()
    ctx.ddp()
    state = ctx.state_dict()
    return (state, draws()) if rank == 0 else None


@pytest.mark.timeout(120)
def test_another_world_size_continues_from_rank_zero_with_a_warning(caplog):
    saved, rank_zero_next = run_on_ranks(_two_rank_state_body)[0]
    _seeding.seed_everything(3)
    alone = session()
    with caplog.at_level(logging.WARNING, logger="pystematic.torch"):
        alone.load_state_dict(saved)
    assert draws() == rank_zero_next
    (warning,) = [r.getMessage() for r in caplog.records if "random states" in r.getMessage()]
    assert "2 processes and this run has 1" in warning and "Resume with 2 processes" in warning


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_generators_are_saved_once_cuda_is_in_use_and_restored():
    torch.cuda.init()
    _seeding.seed_everything(8)
    ctx = session()
    torch.rand(3, device="cuda")
    state = ctx.state_dict()
    cuda = state[randomness.KEY]["ranks"][0]["cuda"]
    assert len(cuda) == torch.cuda.device_count()
    expected = [torch.rand(3, device=f"cuda:{i}").tolist() for i in range(len(cuda))]
    _seeding.seed_everything(9)
    session().load_state_dict(state)
    assert [torch.rand(3, device=f"cuda:{i}").tolist() for i in range(len(cuda))] == expected


def _more_ranks_body(rank, saved):
    resumed = session()
    resumed.load_state_dict(saved)
    resumed.ddp()  # the streams were just made per rank: not re-seeded
    return draws()


@pytest.mark.timeout(120)
def test_more_ranks_than_saved_each_continue_a_stream_of_their_own_repeatably():
    _seeding.seed_everything(2)
    state = session().state_dict()
    state[randomness.KEY]["ranks_diverged"] = True  # as saved by a process past ctx.ddp()
    first = run_on_ranks(_more_ranks_body, args=(state,))
    assert first[0] != first[1]
    assert run_on_ranks(_more_ranks_body, args=(state,)) == first


def test_cuda_states_load_where_there_are_fewer_devices_or_none(monkeypatch, caplog):
    _seeding.seed_everything(1)
    state = session().state_dict()
    saved = [torch.full((16,), index, dtype=torch.uint8) for index in range(2)]
    state[randomness.KEY]["ranks"][0]["cuda"] = saved
    expected = draws()
    if not torch.cuda.is_available():  # a GPU checkpoint resumed on the CPU
        session().load_state_dict(state)
        assert draws() == expected
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "init", lambda: None)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, i: restored.append((i, s)))
    with caplog.at_level(logging.WARNING, logger="pystematic.torch"):
        session().load_state_dict(state)
    assert len(restored) == 1 and restored[0][0] == 0 and torch.equal(restored[0][1], saved[0])
    assert "2 CUDA devices and this process sees 1" in caplog.text


CUDA_BEFORE_INIT = """
import torch, pystematic_torch as pt
from pystematic_torch import _seeding
_seeding.seed_everything(8)
torch.cuda.init()
ctx = pt.Context()
torch.rand(3, device="cuda")
state = ctx.state_dict()
expected = torch.rand(3, device="cuda").tolist()
torch.save(state, "state.pt")
print("EXPECTED", expected)
"""
RESUMED_BEFORE_INIT = """
import torch, pystematic_torch as pt
from pystematic_torch import _seeding
_seeding.seed_everything(9)  # queues CUDA seeds: CUDA has not started in this process
assert not torch.cuda.is_initialized()
pt.Context().load_state_dict(torch.load("state.pt", weights_only=True))
print("EXPECTED", torch.rand(3, device="cuda").tolist())
"""


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_states_restored_before_cuda_starts_are_not_overridden_by_queued_seeds(tmp_path):
    import subprocess
    import sys

    outputs = [
        subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120, check=True).stdout  # fmt: skip
        for script in (CUDA_BEFORE_INIT, RESUMED_BEFORE_INIT)
    ]
    assert outputs[0].strip().startswith("EXPECTED")
    assert outputs[0] == outputs[1]
