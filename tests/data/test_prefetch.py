"""The device-independent parts of batch prefetching: the background feeder and tensor maps."""
import collections
import itertools
import threading
import time

import pytest
import torch

from pystematic_torch.data._prefetch import BackgroundFeeder, iter_tensors, map_tensors


@pytest.mark.timeout(20)
def test_feeder_keeps_order_and_runs_produce_in_its_thread():
    threads = set()

    def produce(item):
        threads.add(threading.current_thread().name)
        return item * 10

    feeder = BackgroundFeeder(iter(range(50)), produce, consume=lambda item: item + 1, depth=2)
    assert list(feeder) == [i * 10 + 1 for i in range(50)]
    assert threads == {"pystematic-torch-prefetch"}
    assert list(feeder) == []


@pytest.mark.timeout(20)
def test_feeder_reraises_the_source_error_in_the_consumer():
    def failing():
        yield 1
        raise KeyError("sample 7 is broken")

    feeder = BackgroundFeeder(failing())
    assert next(feeder) == 1
    with pytest.raises(KeyError, match="sample 7 is broken"):
        next(feeder)
    with pytest.raises(StopIteration):
        next(feeder)


@pytest.mark.timeout(20)
def test_feeder_close_stops_an_endless_source_with_little_read_ahead():
    produced = itertools.count()
    feeder = BackgroundFeeder(produced, depth=2)
    assert [next(feeder) for _ in range(3)] == [0, 1, 2]
    time.sleep(0.2)
    feeder.close()
    assert not feeder._thread.is_alive()
    assert next(produced) <= 3 + 2 + 2  # delivered + queued + one in hand, then stopped


def test_map_tensors_keeps_the_structure():
    Pair = collections.namedtuple("Pair", "a b")
    batch = {"pair": Pair(torch.ones(1), [torch.zeros(2), "label"]), "n": 3}
    doubled = map_tensors(lambda t: t * 2, batch)
    assert isinstance(doubled["pair"], Pair) and doubled["n"] == 3
    assert doubled["pair"].b[1] == "label" and torch.equal(doubled["pair"].a, torch.full((1,), 2.0))
    assert len(list(iter_tensors(batch))) == 2
