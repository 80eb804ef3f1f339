"""SmartDataLoader on two real gloo ranks: sharding, exact evaluation, seeds, resuming, bar."""
import io
import sys

import pytest
import torch
from torch.utils.data import Dataset

from pystematic_torch.data import SmartDataLoader
from tests.support.ranks import run_on_ranks


class Indices(Dataset):
    def __init__(self, size):
        self.size = size

    def __len__(self):
        return self.size

    def __getitem__(self, index):
        return index


def epoch_of(loader):
    return [batch.tolist() for batch in loader]


def _sharding(rank):
    # Different global RNG states per rank: without agreement the permutations would differ.
    torch.manual_seed(100 + rank)
    results = {}
    for name, size, kwargs in [
        ("even", 24, {}),
        ("padded", 23, {}),
        ("dropped", 23, {"drop_last": True}),
        ("exact", 23, {"even_shards": False}),
    ]:
        loader = SmartDataLoader(Indices(size), batch_size=4, shuffle=True, loading_bar=False,
                                 **kwargs)  # fmt: skip
        results[name] = [epoch_of(loader) for _ in range(2)] + [len(loader)]
    explicit = SmartDataLoader(Indices(10), batch_size=5, shuffle=True, loading_bar=False)
    explicit.setup_distributed()
    results["explicit"] = epoch_of(explicit)
    given = SmartDataLoader(Indices(6), sampler=range(6), batch_size=3, loading_bar=False)
    results["given"] = epoch_of(given)
    return results


def flat(batches):
    return [index for batch in batches for index in batch]


@pytest.mark.timeout(90)
def test_ranks_get_disjoint_shards_that_cover_the_dataset():
    rank0, rank1 = run_on_ranks(_sharding, timeout=80)
    for epoch in range(2):
        even = [flat(r["even"][epoch]) for r in (rank0, rank1)]
        assert not set(even[0]) & set(even[1])
        assert sorted(even[0] + even[1]) == list(range(24))

        padded = [flat(r["padded"][epoch]) for r in (rank0, rank1)]
        assert len(padded[0]) == len(padded[1]) == 12
        assert set(padded[0]) | set(padded[1]) == set(range(23))
        assert len(padded[0] + padded[1]) - len(set(padded[0] + padded[1])) == 1

        dropped = [r["dropped"][epoch] for r in (rank0, rank1)]
        # 23 -> 22 samples (11 a rank) -> two full batches of 4, the partial one dropped.
        assert [len(batches) for batches in dropped] == [2, 2]
        assert all(len(batch) == 4 for batches in dropped for batch in batches)
        assert not set(flat(dropped[0])) & set(flat(dropped[1]))

        exact = [flat(r["exact"][epoch]) for r in (rank0, rank1)]
        assert sorted(exact[0] + exact[1]) == list(range(23))
        assert (len(exact[0]), len(exact[1])) == (12, 11)
    assert rank0["even"][0] != rank0["even"][1]
    assert [r["even"][2] for r in (rank0, rank1)] == [3, 3]
    assert [r["exact"][2] for r in (rank0, rank1)] == [3, 3]
    assert sorted(flat(rank0["explicit"]) + flat(rank1["explicit"])) == list(range(10))
    assert rank0["given"] == rank1["given"] == [[0, 1, 2], [3, 4, 5]]


class Terminal(io.StringIO):
    def isatty(self):
        return True


def _resume(rank, workers):
    # Ranks started by spawn default to spawned workers, each importing torch anew (seconds);
    # ranks started by torchrun or our launcher fork them.
    settings = dict(batch_size=3, shuffle=True, random_seed=5, num_workers=workers,
                    multiprocessing_context="fork")  # fmt: skip
    captured = Terminal()  # a terminal shows every epoch's bar; a log file only long ones
    sys.stderr = captured
    reference = SmartDataLoader(Indices(26), **settings)
    expected = [epoch_of(reference) for _ in range(2)]
    interrupted = SmartDataLoader(Indices(26), loading_bar=False, **settings)
    batches = iter(interrupted)
    head = [next(batches).tolist() for _ in range(2)]
    state = interrupted.state_dict()
    del batches
    resumed = SmartDataLoader(Indices(26), loading_bar=False, **settings)
    resumed.load_state_dict(state)
    rest = epoch_of(resumed)
    following = epoch_of(resumed)
    sys.stderr = sys.__stderr__
    return expected, head, rest, following, state, captured.getvalue()


@pytest.mark.timeout(90)
def test_two_ranks_resume_mid_epoch_with_workers():
    results = run_on_ranks(_resume, args=(1,), timeout=80)
    shards = []
    for rank, (expected, head, rest, following, state, bar) in enumerate(results):
        assert head + rest == expected[0]
        assert following == expected[1]
        assert state["num_processes"] == 2 and state["position"] == 2
        shards.append(flat(expected[0]))
        if rank == 0:
            assert "epoch 0" in bar and "epoch 1" in bar
        else:
            assert bar == ""
    assert sorted(shards[0] + shards[1]) == list(range(26))
