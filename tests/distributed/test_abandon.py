"""Rank 0 failing before the run starts: whom it tells, and when it does not wait for them."""
import os

import pytest

from pystematic_torch import LaunchError
from pystematic_torch.distributed import _job
from pystematic_torch.distributed._launch import RankInfo


class RecordingRendezvous:
    """Stands in for the store: records what rank 0 reports and whom it waits for."""

    def __init__(self):
        self.reported, self.waited_for = [], []

    def report_failure(self, reason):
        self.reported.append(reason)
        return True, reason

    def wait_until_seen(self, ranks, seconds):
        self.waited_for.append((ranks, seconds))


def abandoned(error, source="slurm", world_size=2, machines=1):
    info = RankInfo(rank=0, local_rank=0, world_size=world_size, master_addr="127.0.0.1",
                    master_port=0, source=source, machines=machines)  # fmt: skip
    rendezvous = RecordingRendezvous()
    _job._job = _job._Job(info, rendezvous, dict(os.environ), "gloo", None, 300.0, os.getppid())
    _job.abandon(error)
    assert _job._job is None
    return rendezvous


def test_ranks_started_beside_rank_0_are_told_why_and_waited_for():
    rendezvous = abandoned(LaunchError("the run is still being written."), world_size=4)
    assert rendezvous.reported == ["rank 0 could not start: the run is still being written"]
    assert rendezvous.waited_for == [([1, 2, 3], 30.0)]


@pytest.mark.parametrize("error", [KeyboardInterrupt(), SystemExit(1)])
def test_after_ctrl_c_rank_0_leaves_at_once(error):
    # The launcher interrupts every rank: none would read the failure, and waiting for them
    # would hold the Ctrl-C up for 30 s.
    rendezvous = abandoned(error)
    assert rendezvous.reported == [] and rendezvous.waited_for == []


def test_our_own_launcher_waits_only_for_the_first_rank_of_each_other_machine():
    # The other ranks of a machine are started by its first one once the job forms.
    assert abandoned(LaunchError("x"), source="local", world_size=2).waited_for == []
    rendezvous = abandoned(LaunchError("x"), source="local", world_size=6, machines=3)
    assert rendezvous.waited_for == [([2, 4], 30.0)]


def test_ctrl_c_while_rank_0_waits_for_the_others_stops_the_wait():
    class InterruptedStore:
        def check(self, keys):
            raise KeyboardInterrupt

    from pystematic_torch.distributed._rendezvous import Rendezvous

    rendezvous = Rendezvous.__new__(Rendezvous)
    rendezvous.store = InterruptedStore()
    rendezvous.wait_until_seen([1], seconds=30.0)  # returns at once, raising nothing
