"""When ranks agree to stop: at the same batch, soon after any rank was signalled."""
import signal

import pytest

from pystematic_torch.distributed import _preemption
from tests.support.ranks import run_on_ranks


class FakeClock:
    """A clock the training loop below moves on by one batch's time per batch."""

    def __init__(self):
        self.now = 0.0

    def monotonic(self):
        return self.now


def _stop_after_signal(rank, signalled_rank, signalled_at, seconds_per_batch):
    clock = _preemption.time = FakeClock()
    _preemption._requested.clear()
    check = _preemption.StopCheck()
    agreements = 0
    for batch in range(1, 10_000):
        # The first batch is checked a microsecond after the iteration started, as in a real
        # loop; it must not be taken as the time a batch takes.
        clock.now = (batch - 1) * seconds_per_batch + 1e-6
        if rank == signalled_rank and batch == signalled_at:
            _preemption._requested.set()
        before = check._next
        if check():
            return batch, agreements
        agreements += check._next != before
    return None, agreements


@pytest.mark.timeout(120)
@pytest.mark.parametrize("signalled_rank", [0, 1])
def test_every_rank_stops_after_the_same_batch_soon_after_any_rank_was_signalled(signalled_rank):
    # 0.1 s a batch: the ranks agree about every 0.5 s, i.e. every 5 batches.
    results = run_on_ranks(_stop_after_signal, args=(signalled_rank, 40, 0.1))
    (stop_0, agreements_0), (stop_1, agreements_1) = results
    assert stop_0 == stop_1  # the same batch on both ranks
    assert 40 <= stop_0 <= 40 + 6
    assert agreements_0 == agreements_1 and 6 <= agreements_0 <= 12  # not at every batch


def test_alone_the_flag_is_read_at_every_batch():
    _preemption._requested.clear()
    check = _preemption.StopCheck()
    assert not check()
    _preemption._requested.set()
    try:
        assert check()
    finally:
        _preemption._requested.clear()


def test_the_exit_code_is_128_plus_the_signal():
    assert _preemption.Preempted(signum=signal.SIGTERM).code == 143
    assert _preemption.Preempted(signum=signal.SIGUSR1).code == 138
    assert _preemption.Preempted(signum=signal.SIGUSR1).signal_name == "SIGUSR1"
