"""Ending every rank of a job quickly when one of them fails.

Each rank runs a monitor thread. A failure is announced through a key in the process
group's own rendezvous store, which every rank polls, so it reaches other machines too. A
parent also watches the exit codes of the ranks it started, a started rank watches its
parent, and SIGINT is noticed through ``signal.set_wakeup_fd``, which works even while the
main thread is blocked inside a collective, where Python signal handlers cannot run.
"""
import logging
import multiprocessing
import os
import signal
import sys
import threading
import traceback
from typing import Callable, List, Optional

import torch.distributed as dist

logger = logging.getLogger("pystematic.torch.launch")

FAILED_KEY = "pystematic_torch/failed"
_CLEANUP_SECONDS = 10.0


def become_group_leader() -> None:
    """Put this started rank and the workers it will start into a process group of their own."""
    try:
        os.setpgid(0, 0)
    except OSError:  # already a leader, or not allowed here: killing falls back to the rank
        pass


class Supervisor:
    """Watches for failures on behalf of one rank and ends the process when one happens.

    Args:
        rank: This process's global rank, for messages.
        children: Processes this rank started (the other local ranks), keyed by rank.
        watch_parent: End when the process that started this one goes away.
        cleanup: Called (bounded in time) before the process ends, to flush recorders.
        poll_seconds: How often to look.
    """

    def __init__(
        self,
        rank: int,
        children: Optional[dict] = None,
        watch_parent: bool = False,
        cleanup: Callable[[], None] = lambda: None,
        poll_seconds: float = 0.25,
    ) -> None:
        self.rank = rank
        self.children = children or {}
        self.cleanup = cleanup
        self.poll_seconds = poll_seconds
        self._parent_pid = os.getppid() if watch_parent else None
        # Private in torch, but it is the store every rank already reaches: no extra port.
        self._store = dist.distributed_c10d._get_default_store()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="pystematic-torch-monitor",
                                        daemon=True)  # fmt: skip
        self._wakeup_read: Optional[int] = None
        self._previous_wakeup: Optional[int] = None

    def start(self) -> None:
        if threading.current_thread() is threading.main_thread():
            read, write = os.pipe()
            os.set_blocking(read, False)
            os.set_blocking(write, False)
            self._previous_wakeup = signal.set_wakeup_fd(write)
            self._wakeup_read, self._wakeup_write = read, write
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if self._wakeup_read is not None:
            signal.set_wakeup_fd(self._previous_wakeup if self._previous_wakeup >= 0 else -1)
            os.close(self._wakeup_read)
            os.close(self._wakeup_write)
            self._wakeup_read = None

    def report_failure(self, reason: str) -> None:
        """Tell every rank that this job has failed; best effort."""
        try:
            self._store.set(FAILED_KEY, reason)
        except Exception:  # noqa: BLE001 - the store may already be gone with rank 0
            pass

    def fail_with_exception(self, error: BaseException) -> None:
        """Show this rank's traceback once, labelled, tell the others, and end the process.

        When another rank failed first, this rank's error is only the echo of that failure
        (a closed connection inside a collective), so it is not shown again.
        """
        earlier = self._reported_failure()
        if earlier is not None:
            sys.stderr.write(f"[rank {self.rank}] Stopping this rank: {earlier}.\n")
            sys.stderr.flush()
            self._end(1, run_cleanup=False)
        label = f"[rank {self.rank}]"
        text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        sys.stderr.write("".join(f"{label} {line}\n" for line in text.splitlines()))
        sys.stderr.flush()
        self.report_failure(f"rank {self.rank} raised {type(error).__name__}: {error}")
        self._end(130 if isinstance(error, KeyboardInterrupt) else 1, run_cleanup=False)

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            for rank, child in self.children.items():
                if child.exitcode not in (None, 0):
                    self._abort(f"rank {rank} exited with code {child.exitcode}", report=True)
            if self._parent_pid is not None and os.getppid() != self._parent_pid:
                self._abort("the process that started this rank is gone", report=True)
            if self._interrupted():
                self._abort("interrupted (SIGINT)", report=True, code=130)
            reason = self._reported_failure()
            if reason is not None and not self._stop.is_set():
                self._abort(reason)

    def _reported_failure(self) -> Optional[str]:
        try:
            if self._store.check([FAILED_KEY]):
                return self._store.get(FAILED_KEY).decode(errors="replace")
        except Exception:  # noqa: BLE001 - rank 0 and its store are gone: that is the failure
            return "lost contact with rank 0"
        return None

    def _interrupted(self) -> bool:
        if self._wakeup_read is None:
            return False
        try:
            received = os.read(self._wakeup_read, 64)
        except BlockingIOError:
            return False
        return signal.SIGINT.value in received

    def _abort(self, reason: str, report: bool = False, code: int = 1) -> None:
        if self._stop.is_set():
            return
        if report:
            self.report_failure(reason)
        sys.stderr.write(f"[rank {self.rank}] Stopping this rank: {reason}.\n")
        sys.stderr.flush()
        self._end(code, run_cleanup=True)

    def _end(self, code: int, run_cleanup: bool) -> None:
        if run_cleanup:
            worker = threading.Thread(target=self.cleanup, daemon=True)
            worker.start()
            worker.join(timeout=_CLEANUP_SECONDS)
        kill_children(self.children.values())
        logging.shutdown()
        os._exit(code)


def kill_children(ranks: "List[multiprocessing.Process]" = ()) -> None:
    """Kill the ranks this process started, their workers, and this process's own workers.

    Each started rank leads its own process group (see ``become_group_leader``), so killing
    the group also reaches its DataLoader workers, even after the rank itself has died.
    """
    for rank in ranks:
        try:
            os.killpg(rank.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError, TypeError):
            pass
    processes = list(ranks) + multiprocessing.active_children()
    for process in processes:
        try:
            process.kill()
        except Exception:  # noqa: BLE001 - already gone
            pass
    for process in processes:
        process.join(timeout=5)
