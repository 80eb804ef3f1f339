"""SmartDataLoader in one process: order, epochs, resuming, workers, devices, errors."""
import collections
import io
import itertools
import sys

import pytest
import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    IterableDataset,
    SequentialSampler,
    TensorDataset,
)

from pystematic_torch import _session
from pystematic_torch.data import SmartDataLoader
from pystematic_torch.errors import DataError, DeviceError, DistributedError, StateDictError

cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


class Counting(Dataset):
    """Sample i is {"x": [i, i], "y": i}; counts the samples read, in this process."""

    def __init__(self, size):
        self.size = size
        self.reads = 0

    def __len__(self):
        return self.size

    def __getitem__(self, index):
        self.reads += 1
        return {"x": torch.tensor([index, index], dtype=torch.float32), "y": index}


class Stream(IterableDataset):
    def __init__(self, size):
        self.size = size

    def __iter__(self):
        return iter(range(self.size))


def ids(batch):
    if isinstance(batch, dict):
        return batch["y"].tolist()
    if isinstance(batch, (list, tuple)):
        return batch[0].tolist()
    return batch.tolist()


def epochs(loader, count):
    return [[ids(batch) for batch in loader] for _ in range(count)]


def flat(batches):
    return [index for batch in batches for index in batch]


def loader_for(dataset, **kwargs):
    kwargs.setdefault("loading_bar", False)
    return SmartDataLoader(dataset, **kwargs)


def test_is_a_dataloader_and_matches_plain_without_shuffle():
    dataset = Counting(10)
    smart = loader_for(dataset, batch_size=4, drop_last=True)
    plain = DataLoader(dataset, batch_size=4, drop_last=True)
    assert isinstance(smart, DataLoader)
    assert len(smart) == len(plain) == 2
    for mine, theirs in zip(smart, plain):
        assert torch.equal(mine["x"], theirs["x"]) and torch.equal(mine["y"], theirs["y"])
    unbatched = loader_for(Counting(3), batch_size=None)
    assert [batch["y"] for batch in unbatched] == [0, 1, 2]
    collated = loader_for(Counting(5), batch_size=2, collate_fn=lambda samples: len(samples))
    assert list(collated) == [2, 2, 1]


def test_shuffle_is_seeded_and_changes_every_epoch():
    first = epochs(loader_for(Counting(20), batch_size=5, shuffle=True, random_seed=3), 3)
    again = epochs(loader_for(Counting(20), batch_size=5, shuffle=True, random_seed=3), 3)
    other = epochs(loader_for(Counting(20), batch_size=5, shuffle=True, random_seed=4), 1)
    assert first == again
    assert other[0] != first[0]
    assert first[0] != first[1] != first[2]
    for epoch in first:
        assert sorted(flat(epoch)) == list(range(20))


def test_seed_comes_from_the_experiment_then_from_torch_global_rng():
    _session.start({"random_seed": 11})
    try:
        from_experiment = loader_for(Counting(30), batch_size=30, shuffle=True)
    finally:
        _session.end()
    explicit = loader_for(Counting(30), batch_size=30, shuffle=True, random_seed=11)
    assert from_experiment.random_seed == 11
    assert epochs(from_experiment, 2) == epochs(explicit, 2)

    torch.manual_seed(5)
    first = loader_for(Counting(30), batch_size=30, shuffle=True)
    torch.manual_seed(5)
    second = loader_for(Counting(30), batch_size=30, shuffle=True)
    assert first.random_seed == second.random_seed
    assert epochs(first, 1) == epochs(second, 1)


def test_leaving_an_epoch_early_keeps_its_place_like_a_resumed_run():
    settings = dict(batch_size=3, shuffle=True, random_seed=1)
    reference = epochs(loader_for(Counting(12), **settings), 3)  # 4 batches an epoch
    loader = loader_for(Counting(12), **settings)
    for batch in loader:
        assert ids(batch) == reference[0][0]
        break
    state = loader.state_dict()
    assert (state["epoch"], state["position"]) == (0, 1)
    # The loop continued in this process gets the rest of epoch 0, then the next epochs ...
    assert [ids(batch) for batch in loader] == reference[0][1:]
    assert epochs(loader, 2) == reference[1:]
    # ... and a run resumed from the state taken after the break gets the same.
    resumed = loader_for(Counting(12), **settings)
    resumed.load_state_dict(state)
    assert [ids(batch) for batch in resumed] == reference[0][1:]
    # A new iter() while a pass is open stops that pass and continues from its place.
    fresh = loader_for(Counting(12), **settings)
    first = iter(fresh)
    next(first)
    second = iter(fresh)
    assert list(first) == []
    assert [ids(batch) for batch in second] == reference[0][1:]
    assert fresh.epoch == 1


def state_roundtrip(state, tmp_path):
    torch.save(state, tmp_path / "loader.pt")
    return torch.load(tmp_path / "loader.pt", weights_only=True)


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.timeout(60)
def test_resume_mid_epoch_continues_like_an_uninterrupted_run(tmp_path, workers):
    settings = dict(batch_size=3, shuffle=True, random_seed=7, num_workers=workers)
    reference = epochs(loader_for(Counting(14), **settings), 3)

    interrupted = loader_for(Counting(14), **settings)
    seen = epochs(interrupted, 1)
    batches = iter(interrupted)
    seen.append([ids(next(batches)) for _ in range(2)])
    state = state_roundtrip(interrupted.state_dict(), tmp_path)
    del batches
    assert state["epoch"] == 1 and state["position"] == 2
    assert all(type(value) in (int, type(None)) for value in state.values())

    dataset = Counting(14)
    resumed = loader_for(dataset, **settings)
    resumed.load_state_dict(state)
    rest = [ids(batch) for batch in resumed]
    assert seen[1] + rest == reference[1]
    assert epochs(resumed, 1) == [reference[2]]
    if workers == 0:  # the delivered batches were skipped by index, never loaded
        assert dataset.reads == len(flat(rest)) + 14


def test_resume_with_persistent_workers(tmp_path):
    settings = dict(batch_size=2, shuffle=True, random_seed=2, num_workers=1,
                    persistent_workers=True)  # fmt: skip
    reference = epochs(loader_for(Counting(8), **settings), 2)
    loader = loader_for(Counting(8), **settings)
    batches = iter(loader)
    head = [ids(next(batches))]
    state = loader.state_dict()
    del batches
    loader.load_state_dict(state)
    assert head + [ids(batch) for batch in loader] == reference[0]
    assert epochs(loader, 1) == [reference[1]]


def test_resume_with_custom_batch_sampler_and_sampler_set_epoch():
    class Reversed(SequentialSampler):
        epochs = []

        def set_epoch(self, epoch):
            self.epochs.append(epoch)

        def __iter__(self):
            return reversed(range(len(self.data_source)))

    dataset = Counting(7)
    sampler = Reversed(dataset)
    loader = loader_for(dataset, batch_sampler=BatchSampler(sampler, 2, drop_last=False))
    assert epochs(loader, 1) == [[[6, 5], [4, 3], [2, 1], [0]]]
    loader.load_state_dict({**loader.state_dict(), "position": 3})
    assert [ids(batch) for batch in loader] == [[0]]
    assert sampler.epochs == [0, 1]
    plain = loader_for(dataset, sampler=sampler, batch_size=3)
    assert [ids(batch) for batch in plain] == [[6, 5, 4], [3, 2, 1], [0]]


def test_state_dict_rejects_a_wrong_state():
    loader = loader_for(Counting(4), batch_size=2)
    with pytest.raises(StateDictError, match="'epoch' is '1', not an int; missing 'position'"):
        loader.load_state_dict({"epoch": "1", "seed": 0, "num_processes": 1, "batch_size": 2})


def test_resume_with_another_batch_size_rescales_the_position(caplog):
    saved = loader_for(Counting(12), batch_size=2)
    batches = iter(saved)
    for _ in range(3):
        next(batches)
    state = saved.state_dict()
    resumed = loader_for(Counting(12), batch_size=3)
    resumed.load_state_dict(state)
    assert [ids(batch) for batch in resumed] == [[6, 7, 8], [9, 10, 11]]
    assert "approximate" in caplog.text


def test_tensor_dataset_is_gathered_whole_batches(monkeypatch):
    calls = collections.Counter()
    original = TensorDataset.__getitem__

    def counted(self, index):
        calls["getitem"] += 1
        return original(self, index)

    monkeypatch.setattr(TensorDataset, "__getitem__", counted)
    dataset = TensorDataset(torch.randn(11, 3, 2), torch.arange(11), torch.rand(11) > 0.5)
    expected = list(DataLoader(dataset, batch_size=4, sampler=[5, 1, 9, 0, 2, 10, 3, 4, 6, 7, 8]))
    assert calls["getitem"] == 11
    calls.clear()
    loader = loader_for(dataset, batch_size=4, shuffle=True, random_seed=0, num_workers=2)
    order = flat(epochs(loader_for(Counting(11), batch_size=4, shuffle=True, random_seed=0), 1)[0])
    mine = list(loader)
    assert calls["getitem"] == 0
    assert order != sorted(order)
    for batch, start in zip(mine, range(0, 11, 4)):
        assert isinstance(batch, list) and len(batch) == 3
        index = order[start : start + 4]
        for tensor, source in zip(batch, dataset.tensors):
            assert tensor.dtype == source.dtype
            assert torch.equal(tensor, source[index])
    assert type(expected[0]) is type(mine[0])


@pytest.mark.parametrize("stop_after", [1, 5, 6, 7, 11])
def test_tensor_dataset_in_blocks_resumes_inside_any_block(stop_after, monkeypatch):
    from pystematic_torch.data import _gather

    monkeypatch.setattr(_gather, "_BLOCK_BYTES", 3 * 4 * 16)  # blocks of 3 batches of 4 rows
    dataset = TensorDataset(torch.arange(46).repeat_interleave(2).view(46, 2).float(),
                            torch.arange(46))  # fmt: skip
    settings = dict(batch_size=4, shuffle=True, random_seed=3)
    reference = loader_for(dataset, **settings)
    expected = epochs(reference, 2)
    assert [len(batch) for batch in expected[0]] == [4] * 11 + [2]
    interrupted = loader_for(dataset, **settings)
    batches = iter(interrupted)
    head = [ids(next(batches)) for _ in range(stop_after)]
    state = interrupted.state_dict()
    resumed = loader_for(dataset, **settings)
    resumed.load_state_dict(state)
    assert head + epochs(resumed, 1)[0] == expected[0]
    assert epochs(resumed, 1)[0] == expected[1]


@pytest.mark.parametrize("block_bytes", [None, 3 * 4 * 4])
def test_a_change_to_the_tensors_shows_from_the_next_block(block_bytes, monkeypatch):
    # As data.rst says: the rows of a block are read when its first batch is requested.
    from pystematic_torch.data import _gather

    if block_bytes is not None:
        monkeypatch.setattr(_gather, "_BLOCK_BYTES", block_bytes)  # blocks of 3 batches
    values = torch.zeros(24)
    loader = loader_for(TensorDataset(values), batch_size=4, shuffle=True, random_seed=0)
    batches = iter(loader)
    first = next(batches)[0]
    values += 1
    seen = [batch[0] for batch in batches]
    if block_bytes is None:  # the whole epoch is one block
        assert all(torch.equal(batch, torch.zeros(4)) for batch in [first] + seen)
    else:
        assert all(torch.equal(batch, torch.zeros(4)) for batch in [first] + seen[:2])
        assert all(torch.equal(batch, torch.ones(4)) for batch in seen[2:])
    assert all(torch.equal(batch[0], torch.ones(4)) for batch in loader)


def test_batched_getitems_is_used_by_the_default_path():
    class Batched(Counting):
        batches = 0

        def __getitems__(self, indices):
            self.batches += 1
            return [{"x": torch.zeros(2), "y": index} for index in indices]

    dataset = Batched(10)
    batches = list(loader_for(dataset, batch_size=4, shuffle=True, random_seed=1))
    assert dataset.batches == 3 and dataset.reads == 0
    assert sorted(flat(ids(b) for b in batches)) == list(range(10))


def test_device_cache_matches_uncached_batches_and_reads_once(tmp_path):
    settings = dict(batch_size=4, shuffle=True, random_seed=9, drop_last=True)
    reference = loader_for(Counting(18), **settings)
    expected = [[(b["x"].clone(), b["y"].clone()) for b in reference] for _ in range(3)]
    dataset = Counting(18)
    cached = loader_for(dataset, cache="device", **settings).to("cpu")
    for epoch in expected[:2]:
        got = [(b["x"], b["y"]) for b in cached]
        assert len(got) == len(epoch) == 4
        for (x, y), (ex, ey) in zip(got, epoch):
            assert torch.equal(x, ex) and torch.equal(y, ey)
    assert dataset.reads == 18
    batches = iter(cached)
    next(batches)
    state = cached.state_dict()
    del batches
    cached.load_state_dict(state)
    assert [ids(b) for b in cached] == [y.tolist() for _, y in expected[2][1:]]


def test_cache_refuses_what_it_cannot_hold():
    class Named(Counting):
        def __getitem__(self, index):
            return {"name": f"sample {index}", "y": index}

    with pytest.raises(DataError, match=r"batch\['name'\] is list"):
        list(loader_for(Named(3), batch_size=2, cache="device"))
    with pytest.raises(DataError, match="cache='ram' is not allowed"):
        loader_for(Counting(3), cache="ram")
    with pytest.raises(DataError, match="needs a map-style dataset"):
        loader_for(Stream(3), cache="device")


def test_to_moves_nested_batches_and_returns_the_loader():
    loader = loader_for(Counting(5), batch_size=2)
    assert loader.device is None
    assert loader.to("meta") is loader and loader.device == torch.device("meta")
    batch = next(iter(loader))
    assert batch["x"].device.type == "meta" and batch["y"].device.type == "meta"
    loader.move_output = False
    assert next(iter(loader))["x"].device.type == "cpu"
    loader.move_output = True
    assert next(iter(loader.to("cpu")))["x"].device.type == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_to_cuda_without_cuda_is_a_clear_error():
    with pytest.raises(DeviceError, match="CUDA is not available"):
        loader_for(Counting(2)).to("cuda")


def test_iterable_dataset_works_and_resumes_by_discarding():
    loader = loader_for(Stream(7), batch_size=3, num_workers=0)
    assert epochs(loader, 2) == [[[0, 1, 2], [3, 4, 5], [6]]] * 2
    loader.load_state_dict({**loader.state_dict(), "position": 2})
    assert [ids(batch) for batch in loader] == [[6]]


def test_argument_errors_say_what_to_do():
    with pytest.raises(DataError, match="shuffle=True cannot reorder an IterableDataset"):
        SmartDataLoader(Stream(3), shuffle=True)
    with pytest.raises(DataError, match="cannot be combined with a sampler"):
        SmartDataLoader(Counting(3), shuffle=True, sampler=[0, 1, 2])
    with pytest.raises(DataError, match="random_seed='1' is not an int"):
        SmartDataLoader(Counting(3), random_seed="1")
    with pytest.raises(DistributedError, match="without a process group"):
        SmartDataLoader(Counting(3)).setup_distributed()


def test_progress_in_a_log_is_a_line_a_minute_and_nothing_for_a_shorter_epoch(monkeypatch):
    from pystematic_torch.data import _progress

    captured = io.StringIO()
    monkeypatch.setattr(sys, "stderr", captured)
    list(SmartDataLoader(Counting(400), batch_size=1, loading_bar=True))
    assert captured.getvalue() == ""  # not a terminal, and done within a minute
    clock = itertools.count(0.0, 5.0)  # every reading of the clock is 5 s later
    monkeypatch.setattr(_progress.time, "monotonic", lambda: next(clock))
    list(SmartDataLoader(Counting(400), batch_size=1, loading_bar=True))
    lines = captured.getvalue().splitlines()
    # Told every 8 batches: 50 readings 5 s apart, a line each 60 s, then the end line.
    assert len(lines) == 5 and all(line.startswith("epoch 0: ") for line in lines)
    assert lines[0] == "epoch 0: 96/400 batches, 60 s, 1.6 batch/s"
    assert lines[-1] == "epoch 0: 400/400 batches, 260 s, 1.5 batch/s"
    captured.seek(0)
    captured.truncate()
    list(SmartDataLoader(Counting(400), batch_size=1, loading_bar=False))
    assert captured.getvalue() == ""


def test_progress_bar_refreshes_in_a_terminal(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    loader = SmartDataLoader(Counting(6), batch_size=2)
    batches = iter(loader)
    next(batches)
    state = loader.state_dict()
    del batches
    loader.load_state_dict(state)
    list(loader)
    shown = terminal.getvalue()
    assert "epoch 0" in shown and "1/3" in shown and "3/3" in shown


@cuda_only
def test_cuda_delivery_pins_and_prefetches():
    dataset = Counting(33)
    loader = loader_for(dataset, batch_size=4, shuffle=True, random_seed=1).to("cuda")
    assert loader.pin_memory
    reference = epochs(loader_for(Counting(33), batch_size=4, shuffle=True, random_seed=1), 1)
    batches = list(loader)
    assert all(b["x"].is_cuda and b["y"].is_cuda for b in batches)
    assert [ids(b) for b in batches] == reference[0]


@cuda_only
def test_cuda_tensor_dataset_and_device_cache_give_the_cpu_batches():
    tensors = (torch.randn(40, 3, 4), torch.arange(40))
    settings = dict(batch_size=8, shuffle=True, random_seed=3)
    expected = list(loader_for(TensorDataset(*tensors), **settings))
    fast = list(loader_for(TensorDataset(*tensors), **settings).to("cuda"))
    cached = list(loader_for(TensorDataset(*tensors), cache="device", **settings).to("cuda"))
    for batches in (fast, cached):
        for got, want in zip(batches, expected):
            assert got[0].is_cuda and torch.equal(got[0].cpu(), want[0])
            assert torch.equal(got[1].cpu(), want[1])


def test_a_context_checkpoint_taken_mid_epoch_resumes_at_the_next_batch(tmp_path):
    from pystematic_torch import Context

    settings = dict(batch_size=2, shuffle=True, random_seed=4)
    reference = epochs(loader_for(Counting(9), **settings), 2)
    ctx = Context()
    ctx.loader = loader_for(Counting(9), **settings)
    assert ctx.cpu() is ctx and ctx.loader.device == torch.device("cpu")
    seen = []
    for batch in ctx.loader:
        seen.append(ids(batch))
        if len(seen) == 3:
            torch.save(ctx.state_dict(), tmp_path / "checkpoint.pt")
            break
    resumed = Context()
    resumed.loader = loader_for(Counting(9), **settings)
    resumed.load_state_dict(torch.load(tmp_path / "checkpoint.pt", weights_only=True))
    assert seen + epochs(resumed.loader, 1)[0] == reference[0]
    assert epochs(resumed.loader, 1) == [reference[1]]
