"""Random number generators as Context items: saved weights-only, restored bit for bit."""
import random

import numpy as np
import pytest
import torch

import pystematic_torch as pt
from pystematic_torch._context.moves import leaves
from pystematic_torch.context import Context

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def draws(generator, count=7):
    """Draws that use every part of a generator's state (normal caches included)."""
    if isinstance(generator, torch.Generator):
        device = generator.device
        return torch.cat([
            torch.rand(count, generator=generator, device=device),
            torch.randn(count, generator=generator, device=device),  # odd count: a cached normal
            torch.randint(0, 2**31, (count,), generator=generator, device=device).double(),
        ]).tolist()  # fmt: skip
    if isinstance(generator, random.Random):
        return [generator.random() for _ in range(count)] + [
            generator.gauss(0, 1) for _ in range(count)  # gauss keeps a second value
        ]
    if isinstance(generator, np.random.RandomState):
        return list(generator.random_sample(count)) + list(generator.standard_normal(count))
    return (
        list(generator.random(count))
        + list(generator.standard_normal(count))
        + list(generator.integers(0, 2**40, count))
        + [int(generator.integers(0, 2**8, dtype=np.uint8))]  # leaves a buffered uint32
    )


GENERATORS = {
    "torch": lambda seed: torch.Generator().manual_seed(seed),
    "python": lambda seed: random.Random(seed),
    "numpy_pcg64": lambda seed: np.random.default_rng(seed),
    "numpy_philox": lambda seed: np.random.Generator(np.random.Philox(seed)),
    "numpy_sfc64": lambda seed: np.random.Generator(np.random.SFC64(seed)),
    "numpy_mt19937": lambda seed: np.random.Generator(np.random.MT19937(seed)),
    "random_state": lambda seed: np.random.RandomState(seed),
    "random_state_pcg64": lambda seed: np.random.RandomState(np.random.PCG64(seed)),
}


@pytest.mark.parametrize("make", GENERATORS.values(), ids=GENERATORS.keys())
def test_a_generator_saves_weights_only_and_resumes_its_exact_stream(make, tmp_path):
    ctx = Context()
    ctx.rng = make(1)
    draws(ctx.rng)  # mid-stream, with caches filled
    path = pt.save_checkpoint(ctx.state_dict(), id=1, directory=tmp_path)
    expected = draws(ctx.rng)

    fresh = Context()
    fresh.rng = make(2)
    rng = fresh.rng
    fresh.load_state_dict(torch.load(path, weights_only=True))
    assert fresh.rng is rng  # restored in place: code holding the generator sees the state
    assert draws(fresh.rng) == expected


def test_generators_in_containers_and_next_to_other_items_round_trip(tmp_path):
    ctx = Context()
    ctx.rngs = {"torch": torch.Generator().manual_seed(3), "py": [random.Random(4)]}
    ctx.model = torch.nn.Linear(2, 2)
    path = pt.save_checkpoint(ctx.state_dict(), id=1, directory=tmp_path)
    expected = (draws(ctx.rngs["torch"]), draws(ctx.rngs["py"][0]))

    fresh = Context()
    fresh.rngs = {"torch": torch.Generator(), "py": [random.Random()]}
    fresh.model = torch.nn.Linear(2, 2)
    fresh.load_state_dict(torch.load(path, weights_only=True))
    assert (draws(fresh.rngs["torch"]), draws(fresh.rngs["py"][0])) == expected


def test_the_saved_form_is_tensors_ints_floats_and_strings():
    ctx = Context()
    ctx.pcg = np.random.default_rng(0)
    ctx.legacy = np.random.RandomState(0)
    ctx.py = random.Random(0)
    ctx.py.gauss(0, 1)  # fills gauss_next with a float
    state = ctx.state_dict()
    kinds = {type(leaf) for leaf in leaves(state)}
    assert kinds <= {torch.Tensor, int, float, str, bool, type(None)}, kinds
    assert state["pcg"]["kind"] == "numpy.random.Generator"
    assert state["legacy"]["state"]["state"]["key"]["ndarray"] == "<u4"
    assert state["py"]["internal"].shape == (625,)


def test_a_state_that_does_not_fit_a_generator_is_refused_and_nothing_changes():
    saved = Context()
    saved.a = np.random.default_rng(0)  # PCG64
    saved.b = torch.Generator().manual_seed(0)
    saved.c = random.Random(0)
    saved.d = np.random.RandomState(0)
    state = saved.state_dict()
    state["c"]["internal"] = state["c"]["internal"][:10]
    key = state["d"]["state"]["state"]["key"]
    key["data"] = key["data"][:40]

    ctx = Context()
    ctx.a = np.random.Generator(np.random.MT19937(1))
    ctx.b = random.Random(1)
    ctx.c = random.Random(1)
    ctx.d = np.random.RandomState(1)
    ctx.model = torch.nn.Linear(2, 2)
    before = {name: draws(_copy(getattr(ctx, name))) for name in "abcd"}
    weight = ctx.model.weight.detach().clone()
    with pytest.raises(pt.StateDictError) as info:
        ctx.load_state_dict({**state, "model": ctx.model.state_dict()})
    message = str(info.value)
    assert "a: checkpoint has the state of a PCG64 bit generator, context has MT19937" in message
    assert "b: checkpoint has a torch.Generator state, context has a random.Random" in message
    assert "c: the checkpoint's random.Random state does not load" in message
    assert "d: the checkpoint's numpy.random.RandomState state does not load" in message
    assert {name: draws(getattr(ctx, name)) for name in "abcd"} == before
    assert torch.equal(ctx.model.weight, weight)


def _copy(generator):
    import copy

    if isinstance(generator, random.Random):
        clone = random.Random()
        clone.setstate(generator.getstate())
        return clone
    return copy.deepcopy(generator)


def test_system_random_has_no_state_and_is_left_out():
    ctx = Context()
    ctx.os_random = random.SystemRandom()
    assert "os_random" not in ctx.state_dict()


@requires_cuda
def test_a_cuda_generator_round_trips_and_refuses_a_cpu_state():
    ctx = Context()
    ctx.rng = torch.Generator(device="cuda").manual_seed(5)
    draws(ctx.rng)
    state = ctx.state_dict()
    expected = draws(ctx.rng)
    ctx.load_state_dict(state)
    assert draws(ctx.rng) == expected

    cpu = Context()
    cpu.rng = torch.Generator().manual_seed(5)
    with pytest.raises(pt.StateDictError, match="state of a cpu generator, context has a cuda"):
        ctx.load_state_dict(cpu.state_dict())
