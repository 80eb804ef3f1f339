"""The end of a distributed job: the barrier every rank passes before leaving it, watched
for failures, and what a failure found at the end changes (the exit, ``run.json``).

A plain ``dist.barrier()`` there would raise the broken connection's error (gloo) or wait
for the flush limit (NCCL, which does not notice a peer that raised) when another rank
fails while this one, its experiment ended well, waits for the others.
"""
import time
from typing import Any, Dict, Optional

from ._supervise import Supervisor

# A collective broken by a dead peer can fail before the monitor has seen the death: how
# long to look for that cause before reporting the broken collective as the failure.
LOST_PEER_SECONDS = 3.0
_POLL_SECONDS = 0.005


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


def failed_child(children: Dict[int, Any], expected: int) -> Optional[str]:
    """Which ranks this process started ended with another code than it (after the closing
    barrier: a clean-up of their own failed), as the job's failure; None when none did."""
    # A preempted job's ranks all exit with the preemption's code, like this one.
    failed = sorted((rank, child.exitcode) for rank, child in children.items()
                    if child.exitcode not in (0, expected))  # fmt: skip
    if not failed:
        return None
    listed = ", ".join(f"rank {rank} (exit code {code})" for rank, code in failed)
    return f"The job failed: {listed} failed while ending its run; its log says why."
