"""The launcher's wait for the ranks it started to exit, and how their ending is judged.

End to end (a real job whose rank 1 never exits) in test_launch.py; here the same with real
processes but no job, for what is hard to arrange there: a rank that exited leaving a helper
process of its own, several stuck ranks, a preempted job.
"""
import logging
import multiprocessing
import os
import signal
import subprocess
import time

import psutil
import pytest

from pystematic_torch.distributed import _closing
from pystematic_torch.distributed._preemption import Preempted

FORK = multiprocessing.get_context("fork")


def leave_a_helper_and_exit(pid_file):
    os.setpgid(0, 0)  # as a started rank does: its workers share its process group
    helper = subprocess.Popen(["sleep", "60"])
    with open(pid_file, "w") as file:
        file.write(str(helper.pid))
    os._exit(0)


def never_exit():
    os.setpgid(0, 0)
    while True:
        time.sleep(1)


@pytest.fixture
def short_limits(monkeypatch):
    monkeypatch.setattr(_closing, "EXIT_SECONDS", 2.0)
    monkeypatch.setattr(_closing, "NOTICE_SECONDS", 0.5)


@pytest.mark.timeout(60)
def test_only_a_stuck_rank_is_killed_and_what_an_exited_rank_left_running_is_kept(
    tmp_path, short_limits, caplog
):
    pid_file = tmp_path / "helper.pid"
    children = {1: FORK.Process(target=leave_a_helper_and_exit, args=(str(pid_file),)),
                2: FORK.Process(target=never_exit)}  # fmt: skip
    for child in children.values():
        child.start()
    with caplog.at_level(logging.WARNING, logger="pystematic.torch.launch"):
        started = time.monotonic()
        stuck = _closing.join_children(children)
    assert stuck == [2]
    assert 2.0 <= time.monotonic() - started < 10
    assert children[1].exitcode == 0 and children[2].exitcode == -signal.SIGKILL
    assert "rank 2 has not exited after 0.5 s; it is killed if still there after 2 s" in (
        caplog.text
    )
    helper = psutil.Process(int(pid_file.read_text()))
    try:
        assert helper.is_running() and helper.status() != psutil.STATUS_ZOMBIE
    finally:
        helper.kill()


def interrupt_once_waiting(marker, parent, signum):
    while not os.path.exists(marker):
        time.sleep(0.01)
    os.kill(parent, signum)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_while_waiting_kills_the_ranks_still_there(
    tmp_path, short_limits, monkeypatch, signum
):
    monkeypatch.setattr(_closing, "EXIT_SECONDS", 30.0)
    marker = tmp_path / "waiting"
    join_until = _closing._join_until

    def marked_join_until(children, deadline):
        marker.touch()
        return join_until(children, deadline)

    monkeypatch.setattr(_closing, "_join_until", marked_join_until)
    child = FORK.Process(target=never_exit)
    child.start()
    sender = FORK.Process(target=interrupt_once_waiting, args=(str(marker), os.getpid(), signum))
    sender.start()
    handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        _closing.join_children({1: child})
    sender.join()
    assert child.exitcode == -signal.SIGKILL
    assert signal.getsignal(signal.SIGTERM) is handler


class Ended:
    def __init__(self, exitcode):
        self.exitcode = exitcode


def test_stuck_ranks_fail_the_job_and_are_named_in_agreement():
    children = {1: Ended(-9), 2: Ended(-9), 3: Ended(1)}
    assert _closing.how_started_ranks_ended(children, [1, 2], None) == (
        "The job failed: rank 3 (exit code 1) failed while ending its run; its log says why; "
        "ranks 1, 2 had not exited 60 s after every rank ended its run and were killed: a "
        "thread that does not end (not a daemon) or a clean-up that never returns keeps a "
        "process alive."
    )
    assert _closing.how_started_ranks_ended({1: Ended(0)}, [], None) is None


def test_a_preempted_job_still_ends_preempted_and_warns_of_the_rank_it_killed(caplog):
    preempted = Preempted(signum=signal.SIGTERM)
    children = {1: Ended(-9), 2: Ended(143)}
    with caplog.at_level(logging.WARNING, logger="pystematic.torch.launch"):
        assert _closing.how_started_ranks_ended(children, [1], preempted) is None
    assert "Rank 1 had not exited 60 s after every rank ended its run and was killed" in (
        caplog.text
    )
    # A rank that ended otherwise than preempted still fails it.
    failure = _closing.how_started_ranks_ended({1: Ended(1)}, [], preempted)
    assert failure.startswith("The job failed: rank 1 (exit code 1) failed while ending")
