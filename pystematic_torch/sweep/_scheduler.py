"""Starting members as slots free up, giving each its GPUs, and recording how each ended."""
import collections
import datetime
import logging
import os
import pickle
import socket
import sys
from typing import Any, Deque, Dict, List, Sequence

from .. import _run_record
from . import _gpus
from ._environment import member_environment, threads_per_process
from ._processes import Member, describe, stop, wait_for_any

logger = logging.getLogger("pystematic.torch.sweep")


class Scheduler:
    """Runs ``members`` at most ``max_processes`` at a time until all have ended."""

    def __init__(
        self,
        experiment_name: str,
        members: Sequence[Member],
        location: Dict[str, Any],
        gpus: Sequence[_gpus.Gpu],
        hand_out_gpus: bool,
        max_processes: int,
        stop_timeout: float,
    ) -> None:
        self.experiment_name = experiment_name
        self.members = list(members)
        self.location = location
        self.gpus = list(gpus)
        self.hand_out_gpus = hand_out_gpus
        self.max_processes = max_processes
        self.stop_timeout = stop_timeout
        self.pending: Deque[Member] = collections.deque(self.members)
        self.running: List[Member] = []
        self.exit_codes: Dict[int, int] = {}
        self.statuses: Dict[int, str] = {}
        self._started_at: Dict[int, str] = {}

    def run(self) -> None:
        while self.pending or self.running:
            while self.pending and len(self.running) < self.max_processes:
                self._start(self.pending.popleft())
            for member in wait_for_any(self.running):
                self._collect(member)

    def stop(self, how: int, forward: bool) -> None:
        """End every running member (see :func:`_processes.stop`) and start no more."""
        self.pending.clear()
        started = [member for member in self.running if member.process is not None]
        if started:
            logger.warning("Stopping %d sweep run(s).", len(started))
        stop(started, how, forward, self.stop_timeout)
        for member in list(self.running):
            if member.process is None:
                self.running.remove(member)
            else:
                self._collect(member)

    def results(self) -> list:
        """One result per member, in the order given; "not started" for those never started."""
        from . import NOT_STARTED, SweepResult

        results = []
        for member in self.members:
            if member.index not in self.exit_codes:
                results.append(SweepResult(member.params, NOT_STARTED, None, None, 0.0))
                continue
            results.append(SweepResult(
                params=member.params,
                status=self.statuses[member.index],
                exit_code=self.exit_codes[member.index],
                run_dir=member.run_dir,
                duration_s=member.ended - member.started,
                gpus=tuple(gpu.label for gpu in member.gpus),
                error=member.error,
            ))  # fmt: skip
        return results

    def _start(self, member: Member) -> None:
        members_on = collections.Counter(
            gpu.token for other in self.running for gpu in other.gpus
        )
        member.gpus = _gpus.choose(self.gpus, members_on, member.gpu_count)
        concurrent = min(self.max_processes, len(self.members)) * member.distributed_ranks
        environment = member_environment(
            os.environ,
            [gpu.token for gpu in member.gpus] if self.hand_out_gpus else None,
            threads_per_process(concurrent),
        )
        payload = {**self.location, "sys_path": list(sys.path),
                   "params": pickle.dumps(member.params)}  # fmt: skip
        self.running.append(member)  # before it starts: a Ctrl-C from here on stops it
        self._started_at[member.index] = _now()
        member.start(payload, environment)
        logger.info("Sweep run %s started (pid %d%s): %s", self._number(member), member.pid,
                    self._gpu_text(member), describe(member.params))  # fmt: skip

    def _collect(self, member: Member) -> None:
        exit_code = member.collect()
        self.running.remove(member)
        status = _run_record.status_of_exit_code(exit_code)
        if member.stopped_by_sweep and status == _run_record.FAILED:
            status = _run_record.INTERRUPTED
        self.exit_codes[member.index], self.statuses[member.index] = exit_code, status
        if member.run_dir is not None:
            self._record(member, exit_code, status)
        log = logger.info if status == _run_record.FINISHED else logger.warning
        seconds = member.ended - member.started
        log("Sweep run %s %s after %.1f s (exit code %d): %s", self._number(member), status,
            seconds, exit_code, member.run_dir or "no run directory")  # fmt: skip

    def _record(self, member: Member, exit_code: int, status: str) -> None:
        """Make the run's record say how its process really ended (a killed run cannot)."""
        fallback = {
            "format": 1, "experiment": self.experiment_name, "pid": member.pid,
            "host": socket.gethostname(), "started_at": self._started_at[member.index],
            "resumed_from": None, "world_size": member.distributed_ranks,
        }  # fmt: skip
        try:
            _run_record.record_exit(member.run_dir, exit_code, status, fallback)
        except OSError as error:
            logger.warning("Could not update %s: %s", member.run_dir / "run.json", error)

    def _number(self, member: Member) -> str:
        return f"#{member.index + 1}/{len(self.members)}"

    @staticmethod
    def _gpu_text(member: Member) -> str:
        if not member.gpus:
            return ""
        return ", GPU " + ",".join(gpu.label for gpu in member.gpus)


def _now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="milliseconds")
