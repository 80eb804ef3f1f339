"""The end of a distributed job: the barrier every rank passes before leaving it, watched
for failures, the launcher's bounded wait for the ranks it started to exit, and what a
failure found at the end changes (the exit, ``run.json``).

A plain ``dist.barrier()`` there would raise the broken connection's error (gloo) or wait
for the flush limit (NCCL, which does not notice a peer that raised) when another rank
fails while this one, its experiment ended well, waits for the others.
"""
import logging
import signal
import threading
import time
from typing import Any, Dict, List, Optional, Sequence

from ._supervise import Supervisor, kill_ranks

# A collective broken by a dead peer can fail before the monitor has seen the death: how
# long to look for that cause before reporting the broken collective as the failure.
LOST_PEER_SECONDS = 3.0
_POLL_SECONDS = 0.005
# Once every rank has passed the closing barriers, the ranks this process started have only
# their own exit left; one still alive after EXIT_SECONDS is stuck (in a thread that does not
# end, or a clean-up that never returns) and is killed, and the launcher says so after
# NOTICE_SECONDS instead of waiting in silence. Read at each use, so tests can shorten them.
EXIT_SECONDS = 60.0
NOTICE_SECONDS = 5.0

logger = logging.getLogger("pystematic.torch.launch")


def all_ranks_arrive(supervisor: Supervisor) -> bool:
    """Wait for every rank; False, with the failure recorded on ``supervisor``, when the
    job fails meanwhile (another rank raised or died, or this one got SIGINT)."""
    import torch.distributed as dist

    try:
        work = dist.barrier(async_op=True)
        next_look = time.monotonic()
        while not work.is_completed():
            if time.monotonic() >= next_look:
                reason, code = supervisor.look()
                # Every rank may have arrived already, the one that left first taking the
                # store with it: the barrier then completes within moments.
                if reason is not None and not _completes(work, within=LOST_PEER_SECONDS):
                    supervisor.learn_of_failure(reason, code)
                    return False
                next_look = time.monotonic() + supervisor.poll_seconds
            time.sleep(_POLL_SECONDS)
        work.wait()
    except KeyboardInterrupt:
        supervisor.learn_of_failure(f"rank {supervisor.rank} was interrupted (SIGINT)", 130)
        return False
    except Exception as broken:  # noqa: BLE001 - a collective broken by a peer's failure
        if not supervisor.find_cause(LOST_PEER_SECONDS):
            first_line = str(broken).splitlines()[0] if str(broken) else type(broken).__name__
            supervisor.learn_of_failure(
                f"the closing barrier of rank {supervisor.rank} failed: {first_line}", 1
            )
        return False
    return True


def _completes(work: Any, within: float) -> bool:
    deadline = time.monotonic() + within
    while not work.is_completed():
        if time.monotonic() > deadline:
            return False
        time.sleep(_POLL_SECONDS)
    return True


def join_children(children: Dict[int, Any]) -> List[int]:
    """Wait for the ranks this process started to exit, for up to ``EXIT_SECONDS``; kill
    the ones still alive then, or at once on Ctrl-C or SIGTERM (which then raise
    ``KeyboardInterrupt``), and return their ranks.

    Only a rank still alive is killed, with its process group: what a rank that exited
    leaves running on purpose (a helper process of its own) is left alone.
    """
    start = time.monotonic()
    # The job's own SIGTERM handling has ended with its run; the default action would end
    # this process and orphan a stuck rank, which no longer watches for its parent.
    terminating = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if terminating else None
    try:
        if NOTICE_SECONDS < EXIT_SECONDS:
            alive = _join_until(children, start + NOTICE_SECONDS)
            if alive:
                logger.warning(
                    "Every rank has ended its run, but %s not exited after %g s; %s killed "
                    "if still there after %g s.", _ranks(alive, "has", "have"),
                    NOTICE_SECONDS, "it is" if len(alive) == 1 else "they are", EXIT_SECONDS,
                )  # fmt: skip
        alive = _join_until(children, start + EXIT_SECONDS)
    finally:
        kill_ranks([child for child in children.values() if child.exitcode is None])
        if terminating:  # None: a handler set outside Python, which cannot be put back
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
    return alive


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _join_until(children: Dict[int, Any], deadline: float) -> List[int]:
    for child in children.values():
        child.join(timeout=max(0.0, deadline - time.monotonic()))
    return sorted(rank for rank, child in children.items() if child.exitcode is None)


def stuck_ranks_message(stuck: Sequence[int]) -> str:
    """What :func:`join_children` did to ``stuck``, and what keeps a process alive."""
    return (
        f"{_ranks(stuck, 'had', 'had')} not exited {EXIT_SECONDS:g} s after every rank ended "
        f"its run and {'was' if len(stuck) == 1 else 'were'} killed: a thread that does not "
        "end (not a daemon) or a clean-up that never returns keeps a process alive"
    )


def how_started_ranks_ended(
    children: Dict[int, Any], stuck: Sequence[int], preempted: Optional[Any]
) -> Optional[str]:
    """The job's failure, from how the ranks this process started ended; None when they
    ended as this one did.

    A preempted job (``preempted``, the Preempted that ended this rank) has its state saved:
    it still ends with the code that asks for a requeue, and the ranks it had to kill are
    only warned of.
    """
    if preempted is None:
        return failed_child(children, 0, stuck)
    if stuck:
        message = stuck_ranks_message(stuck)
        logger.warning("%s%s.", message[0].upper(), message[1:])
    exited = {rank: child for rank, child in children.items() if rank not in stuck}
    return failed_child(exited, preempted.code)


def failed_child(
    children: Dict[int, Any], expected: int, stuck: Sequence[int] = ()
) -> Optional[str]:
    """Which ranks this process started ended with another code than it (after the closing
    barrier: a clean-up of their own failed) or did not exit at all (``stuck``, killed by
    :func:`join_children`), as the job's failure; None when none did."""
    # A preempted job's ranks all exit with the preemption's code, like this one.
    failed = sorted((rank, child.exitcode) for rank, child in children.items()
                    if child.exitcode not in (0, expected) and rank not in stuck)  # fmt: skip
    reasons = []
    if failed:
        listed = ", ".join(f"rank {rank} (exit code {code})" for rank, code in failed)
        reasons.append(f"{listed} failed while ending its run; its log says why")
    if stuck:
        reasons.append(stuck_ranks_message(stuck))
    return f"The job failed: {'; '.join(reasons)}." if reasons else None


def _ranks(ranks: Sequence[int], one: str, several: str) -> str:
    """``ranks`` with a verb that agrees: "rank 1 has", "ranks 1, 2 have"."""
    if len(ranks) == 1:
        return f"rank {ranks[0]} {one}"
    return f"ranks {', '.join(map(str, ranks))} {several}"
