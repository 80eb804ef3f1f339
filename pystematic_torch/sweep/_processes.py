"""A sweep member's process: starting it, noticing its end, stopping it and all it started."""
import dataclasses
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

import psutil

from ._gpus import Gpu

_POLL_SECONDS = 0.1


def describe(params: Mapping[str, Any]) -> str:
    """``lr=0.1, batch_size=32``: how logs and errors name a run."""
    return ", ".join(f"{name}={value}" for name, value in params.items()) or "defaults"


@dataclasses.dataclass
class Member:
    """One run of the sweep and, once started, its process."""

    index: int
    params: dict
    gpu_count: int
    distributed_ranks: int
    gpus: List[Gpu] = dataclasses.field(default_factory=list)
    process: Optional[subprocess.Popen] = None
    started: float = 0.0
    ended: float = 0.0
    run_dir: Optional[Path] = None
    error: Optional[str] = None
    stopped_by_sweep: bool = False
    _report_fd: Optional[int] = None
    _pidfd: Optional[int] = None

    def start(self, payload: dict, environment: Dict[str, str]) -> None:
        from ._member import encode  # not at import: `python -m` runs that module afresh

        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "pystematic_torch.sweep._member", str(write_fd)],
                stdin=subprocess.PIPE, env=environment, pass_fds=(write_fd,),
                # Its own process group: a terminal's Ctrl-C reaches only the sweep, which
                # then stops each member exactly once, and the group is easy to clean up.
                start_new_session=True,
            )  # fmt: skip
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        self._report_fd = read_fd
        self.started = time.monotonic()
        try:
            self._pidfd = os.pidfd_open(self.process.pid)
        except (AttributeError, OSError):
            self._pidfd = None
        try:
            # The pipe stays open while the sweep lives; the member watches for its end.
            self.process.stdin.write(encode(payload))
            self.process.stdin.flush()
        except BrokenPipeError:
            pass  # it died at once; its exit code says how

    @property
    def pid(self) -> int:
        return self.process.pid

    def poll(self) -> Optional[int]:
        return self.process.poll() if self.process is not None else None

    def collect(self) -> int:
        """After the process ended: read its reports, clean up what it left, close pipes."""
        exit_code = self.process.wait()
        if self._report_fd is None:
            return exit_code  # collected already (a Ctrl-C came in between)
        self.ended = time.monotonic()
        self._read_reports()
        _kill_group(self.pid)  # stragglers it left in its own group (forked workers)
        for fd in (self._report_fd, self._pidfd):
            if fd is not None:
                os.close(fd)
        self._report_fd = self._pidfd = None
        try:
            self.process.stdin.close()
        except OSError:
            pass
        return exit_code

    def _read_reports(self) -> None:
        data = b""
        while True:
            try:
                chunk = os.read(self._report_fd, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            data += chunk
        for line in data.decode("utf-8", "replace").splitlines():
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if "run_dir" in message:
                self.run_dir = Path(message["run_dir"])
            if "error" in message:
                self.error = message["error"]


def wait_for_any(members: Sequence[Member], timeout: Optional[float] = None) -> List[Member]:
    """Block until at least one member's process has ended (or ``timeout``); return those."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        ended = [member for member in members if member.poll() is not None]
        if ended or not members:
            return ended
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            return []
        pidfds = [member._pidfd for member in members]
        if all(fd is not None for fd in pidfds):
            select.select(pidfds, [], [], remaining)
        else:
            time.sleep(_POLL_SECONDS if remaining is None else min(_POLL_SECONDS, remaining))


def stop(members: Iterable[Member], how: int, forward: bool, timeout: float) -> None:
    """Ask every running member to stop, wait up to ``timeout`` s, then kill what is left.

    SIGINT goes to each member's process group, as a terminal's Ctrl-C would; SIGTERM only to
    the member's main process, whose preemption handling stops every rank after the same
    step (DataLoader workers die of SIGTERM). A second Ctrl-C while waiting kills at once.

    Args:
        members: The members whose processes were started.
        how: ``signal.SIGINT`` or ``signal.SIGTERM``.
        forward: Send the signal; False where the members got it already from elsewhere.
        timeout: Seconds the members get to end by themselves.
    """
    running = [member for member in members if member.poll() is None]
    family = _family(running)
    for member in running:
        member.stopped_by_sweep = True
        if not forward:
            continue
        try:
            if how == signal.SIGINT:
                os.killpg(member.pid, how)
            else:
                os.kill(member.pid, how)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    try:
        while _alive(running, family) and time.monotonic() < deadline:
            wait_for_any([m for m in running if m.poll() is None], timeout=_POLL_SECONDS)
    except KeyboardInterrupt:
        pass  # asked twice: stop waiting
    _kill(running, family)


def _family(members: Iterable[Member]) -> List[psutil.Process]:
    """Every process the members started so far (ranks, workers), found through their parents."""
    processes = []
    for member in members:
        try:
            processes.extend(psutil.Process(member.pid).children(recursive=True))
        except psutil.NoSuchProcess:
            pass
    return processes


def _alive(members: Sequence[Member], family: Sequence[psutil.Process]) -> bool:
    if any(member.poll() is None for member in members):
        return True
    return any(_running(process) for process in family)


def _running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _kill(members: Sequence[Member], family: Sequence[psutil.Process]) -> None:
    for member in members:
        if member.poll() is None:
            member.process.kill()
    for process in family:
        try:
            process.kill()  # psutil checks the pid still names the same process
        except psutil.NoSuchProcess:
            pass
    for member in members:
        member.process.wait()
    psutil.wait_procs(family, timeout=10)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
