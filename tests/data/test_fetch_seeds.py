"""Randomness inside a dataset depends on (seed, epoch, rank, position), not on workers."""
import random
import threading

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset, TensorDataset, get_worker_info

from pystematic_torch import Context, _seeding
from pystematic_torch.data import SmartDataLoader, _sample_seeds
from tests.support.ranks import run_on_ranks

pytestmark = pytest.mark.usefixtures("global_generators")
cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
WORKERS = {
    "0 workers": {"num_workers": 0},
    "2 workers": {"num_workers": 2},
    "persistent": {"num_workers": 2, "persistent_workers": True},
}


class Augmented(Dataset):
    """Sample i is [i, a torch draw, a NumPy draw, a Python draw]."""

    def __init__(self, size=10):
        self.size = size

    def __len__(self):
        return self.size

    def __getitem__(self, index):
        draws = [torch.rand(()).item(), np.random.random_sample(), random.random()]
        return torch.tensor([float(index), *draws], dtype=torch.float64)


class BatchedAugmented(Augmented):
    """Fetches a whole batch in one call, as HDF5Dataset does."""

    def __getitems__(self, indices):
        return [self[index] for index in indices]


def loader(dataset=None, **options):
    options = {"batch_size": 3, "shuffle": True, "random_seed": 4, "loading_bar": False,
               **options}  # fmt: skip
    return SmartDataLoader(dataset if dataset is not None else Augmented(), **options)


def run_epochs(smart, count):
    return [torch.cat(list(smart)) for _ in range(count)]


@pytest.mark.timeout(120)
def test_the_same_samples_with_any_number_of_workers_and_a_new_draw_every_epoch():
    results = {name: run_epochs(loader(**options), 3) for name, options in WORKERS.items()}
    reference = results.pop("0 workers")
    for name, epochs in results.items():
        for number, (mine, theirs) in enumerate(zip(epochs, reference)):
            assert torch.equal(mine, theirs), (name, number)
    by_sample = [epoch[epoch[:, 0].argsort()] for epoch in reference]
    assert not torch.equal(by_sample[0][:, 1:], by_sample[1][:, 1:])  # not frozen
    for column in (1, 2, 3):  # torch, NumPy and Python: every sample draws anew
        assert len(set(reference[0][:, column].tolist())) == 10


@pytest.mark.timeout(120)
@pytest.mark.parametrize("workers, resumed_with", [
    ("0 workers", "0 workers"), ("2 workers", "2 workers"), ("persistent", "persistent"),
    ("persistent", "0 workers"),  # the number of workers may change between runs
])  # fmt: skip
def test_a_resumed_epoch_draws_what_the_uninterrupted_one_drew(workers, resumed_with):
    reference = run_epochs(loader(**WORKERS[workers]), 2)
    interrupted = loader(**WORKERS[workers])
    batches = iter(interrupted)
    head = [next(batches), next(batches)]
    state = interrupted.state_dict()
    del batches

    resumed = loader(**WORKERS[resumed_with])
    resumed.load_state_dict(state)
    assert torch.equal(torch.cat(head + list(resumed)), reference[0])
    assert torch.equal(torch.cat(list(resumed)), reference[1])


@pytest.mark.timeout(120)
def test_persistent_workers_draw_anew_in_every_epoch_like_fresh_workers():
    persistent = run_epochs(loader(**WORKERS["persistent"]), 3)
    for epoch in range(3):
        fresh = loader(num_workers=2)
        fresh.load_state_dict({**fresh.state_dict(), "epoch": epoch})
        assert torch.equal(torch.cat(list(fresh)), persistent[epoch]), epoch


def test_with_no_workers_the_training_stream_is_not_disturbed():
    def next_draws():
        return torch.rand(2).tolist(), np.random.random_sample(), random.random()

    _seeding.seed_everything(0)
    undisturbed = next_draws()
    _seeding.seed_everything(0)
    run_epochs(loader(), 2)
    assert next_draws() == undisturbed


def test_unbatched_and_batched_fetches_are_seeded_too():
    unbatched = [loader(batch_size=None, **options) for options in
                 (WORKERS["0 workers"], WORKERS["2 workers"])]  # fmt: skip
    first, second = (torch.stack(list(smart)) for smart in unbatched)
    assert torch.equal(first, second)
    assert len(set(first[:, 1].tolist())) == 10

    batched = [run_epochs(loader(BatchedAugmented(), **options), 2)
               for options in (WORKERS["0 workers"], WORKERS["2 workers"])]  # fmt: skip
    assert all(torch.equal(a, b) for a, b in zip(*batched))


def test_tensor_datasets_and_the_cache_are_not_seeded(monkeypatch):
    seeded = []
    monkeypatch.setattr(_sample_seeds, "seed_globals", lambda seed: seeded.append(seed))
    tensors = TensorDataset(torch.arange(12.0))
    for smart in (loader(tensors), loader(Augmented(), cache="device")):
        assert len(list(smart)) == 4
    assert seeded == []
    run_epochs(loader(), 1)
    assert len(seeded) == 4  # one seeding per batch of the per-sample dataset


class Opened(Augmented):
    """Needs per-worker set-up, done by a worker_init_fn through get_worker_info()."""

    handle = None

    def __getitem__(self, index):
        assert self.handle == f"opened in worker {get_worker_info().id}"
        return super().__getitem__(index)


def open_in_worker(worker_id):
    get_worker_info().dataset.handle = f"opened in worker {worker_id}"


@pytest.mark.timeout(120)
def test_worker_init_fn_sees_the_dataset_through_get_worker_info():
    smart = loader(Opened(), num_workers=2, worker_init_fn=open_in_worker)
    assert len(torch.cat(list(smart))) == 10


@pytest.mark.timeout(180)
def test_spawned_workers_draw_the_same_as_forked_ones():
    spawned = loader(num_workers=1, multiprocessing_context="spawn")
    assert torch.equal(torch.cat(list(spawned)), run_epochs(loader(), 1)[0])


def _shard_body(rank):
    _seeding.seed_everything(0)  # the same streams on both ranks: only the rank differs
    smart = loader(Augmented(12))
    return torch.cat(list(smart))


@pytest.mark.timeout(120)
def test_each_rank_draws_its_own_augmentations():
    first, second = run_on_ranks(_shard_body)
    assert not set(first[:, 0].tolist()) & set(second[:, 0].tolist())  # disjoint shards
    assert not set(first[:, 1].tolist()) & set(second[:, 1].tolist())


class Where(Augmented):
    """Records the thread each fetch runs on."""

    threads = []

    def __getitem__(self, index):
        self.threads.append(threading.current_thread())
        return super().__getitem__(index)


@cuda_only
def test_on_cuda_without_workers_the_dataset_runs_on_the_loop_thread():
    _seeding.seed_everything(0)
    undisturbed = torch.rand(2).tolist()
    _seeding.seed_everything(0)
    on_gpu = loader(Where()).to("cuda")
    batches = list(on_gpu)
    assert torch.rand(2).tolist() == undisturbed
    assert set(Where.threads) == {threading.main_thread()}
    assert all(batch.device.type == "cuda" for batch in batches)
    assert torch.equal(torch.cat(batches).cpu(), torch.cat(list(loader())))


def random_collate(samples):
    return torch.stack(samples) + torch.rand(()) + np.random.random_sample() + random.random()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("workers", ["0 workers", "2 workers"])
def test_randomness_in_collate_fn_repeats_in_a_resumed_epoch(workers):
    options = dict(collate_fn=random_collate, **WORKERS[workers])
    _seeding.seed_everything(1)
    reference = torch.cat(list(loader(**options)))

    _seeding.seed_everything(1)
    ctx = Context()
    ctx.loader = loader(**options)
    batches = iter(ctx.loader)
    head = [next(batches), next(batches)]
    state = ctx.state_dict()  # the loader's place and, for 0 workers, the loop's streams
    del batches
    _seeding.seed_everything(2)
    resumed = Context()
    resumed.loader = loader(**options)
    resumed.load_state_dict(state)
    assert torch.equal(torch.cat(head + list(resumed.loader)), reference)


class Plain(Dataset):
    """Reads samples; draws no random numbers."""

    def __len__(self):
        return 12

    def __getitem__(self, index):
        return torch.tensor([float(index)])


@pytest.mark.parametrize("dataset, saved_per_pass", [(Plain(), 1), (Augmented(12), 6)])
def test_in_process_the_loops_generators_are_kept_only_around_fetches_that_draw(
    monkeypatch, dataset, saved_per_pass
):
    kept = []
    original = _sample_seeds._MainProcessStreamsKept.__enter__

    def counting(self):
        kept.append(1)
        return original(self)

    monkeypatch.setattr(_sample_seeds._MainProcessStreamsKept, "__enter__", counting)
    loader = SmartDataLoader(dataset, batch_size=2, shuffle=True, random_seed=3,
                             loading_bar=False)  # fmt: skip
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    for _ in range(2):
        assert len([batch for batch in loader]) == 6
    # One pass finds out whether the dataset draws; either way the loop's stream is untouched.
    assert len(kept) == 2 * saved_per_pass
    assert torch.equal(torch.rand(3), expected)
