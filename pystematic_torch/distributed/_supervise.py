"""Ending every rank of a job, quickly and without losing data, when one of them fails.

Each rank runs a monitor thread. A failure is announced through a key in the job's store,
which every rank polls, so it reaches other machines too. A parent also watches the exit
codes of the ranks it started, a started rank watches its parent, and SIGINT is noticed
through ``signal.set_wakeup_fd``, which works even while the main thread is blocked inside a
collective, where Python signal handlers cannot run.

What a healthy rank does when it learns of a failure: it raises :class:`JobFailed` in its
main thread, which unwinds the user's loop like any exception, so the experiment's normal
teardown flushes recorders and writers before the process ends (raised again if it lands in
a ``__del__``, where Python drops it). Only when the main thread does not get there within a
grace period (it is stuck in a collective whose peer hangs) does the monitor flush on its own
thread and end the process; nothing kills a process while its main thread is flushing.
"""
import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, Dict, Optional

logger = logging.getLogger("pystematic.torch.launch")

#: How long a healthy rank's main thread has to reach its teardown after a failure.
GRACE_SECONDS = 30.0
#: How long a teardown that has started may take before the process is ended anyway.
FLUSH_SECONDS = 300.0
#: How long a parent waits for the ranks it started to flush and exit before killing them.
CHILDREN_SECONDS = GRACE_SECONDS + 30.0
# A signal with no default action, used only to wake a main thread blocked in a system
# call (time.sleep, a queue wait) so that the pending JobFailed is raised there.
_WAKE_SIGNAL = signal.SIGURG


class JobFailed(BaseException):
    """Raised in a healthy rank's main thread when another rank failed.

    A ``BaseException``, like ``KeyboardInterrupt``, so that ``except Exception`` in a
    training loop does not swallow it.
    """

    def __init__(self, *args) -> None:
        # Raised asynchronously, the class is instantiated without arguments.
        super().__init__(*(args or (_reason_for_main_thread,)))


_reason_for_main_thread = "another rank failed"
# Python drops an exception raised inside ``__del__`` (a DataLoader iterator being freed,
# say) after reporting it to ``sys.unraisablehook``; a JobFailed dropped there is raised again.
_dropped = threading.Event()


class Supervisor:
    """Watches for failures on behalf of one rank.

    Args:
        rendezvous: The job's store (``report_failure``, ``reported_failure``).
        rank: This process's global rank, for messages.
        children: Processes this rank started (the other local ranks), keyed by rank.
        watch_parent: End when the process that started this one goes away.
        end_session: Flushes and closes what the run recorded; called on the monitor
            thread only when the main thread cannot do it in time.
        is_ending: Whether the main thread has begun that teardown.
    """

    def __init__(
        self,
        rendezvous,
        rank: int,
        children: Optional[Dict[int, multiprocessing.Process]] = None,
        watch_parent: bool = False,
        end_session: Callable[[], None] = lambda: None,
        is_ending: Callable[[], bool] = lambda: False,
        poll_seconds: float = 0.25,
    ) -> None:
        self.rendezvous = rendezvous
        self.rank = rank
        self.children = children or {}
        self.end_session = end_session
        self.is_ending = is_ending
        self.poll_seconds = poll_seconds
        #: (reason, exit code) once this rank knows the job has failed.
        self.failure: Optional[tuple] = None
        #: Whether the monitor has printed why this rank stops.
        self.announced = False
        self._main_ending = threading.Event()
        # Makes the monitor's "is the main thread still running the experiment? then stop
        # it" one step, which the main thread's "I am ending" cannot fall between.
        self._abort_lock = threading.Lock()
        self._parent_pid = os.getppid() if watch_parent else None
        self._main = threading.main_thread()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="pystematic-torch-monitor",
                                        daemon=True)  # fmt: skip
        self._wakeup_read: Optional[int] = None
        self._wakeup_write: Optional[int] = None
        self._previous_wakeup = -1
        self._previous_wake_handler = None
        self._unraisable_hook: Optional[Callable[[Any], None]] = None

    def start(self) -> None:
        if threading.current_thread() is self._main:
            read, write = os.pipe()
            os.set_blocking(read, False)
            os.set_blocking(write, False)
            self._previous_wakeup = signal.set_wakeup_fd(write)
            self._wakeup_read, self._wakeup_write = read, write
            self._previous_wake_handler = signal.signal(_WAKE_SIGNAL, _do_nothing)
        self._unraisable_hook = _hook_catching_dropped_failures(sys.unraisablehook)
        sys.unraisablehook = self._unraisable_hook
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)
        if self._unraisable_hook is not None and sys.unraisablehook is self._unraisable_hook:
            sys.unraisablehook = self._unraisable_hook.previous
        self._unraisable_hook = None
        if self._wakeup_read is not None and threading.current_thread() is self._main:
            signal.set_wakeup_fd(self._previous_wakeup)
            signal.signal(_WAKE_SIGNAL, self._previous_wake_handler or signal.SIG_DFL)
            os.close(self._wakeup_read)
            os.close(self._wakeup_write)
            self._wakeup_read = None

    def main_thread_ending(self) -> None:
        """The main thread has reached the experiment's teardown: the monitor stands back.

        A stop the monitor queued just before is cancelled if it has not surfaced yet;
        if it has, the ``JobFailed`` was raised in this call (see ``_lifecycle.teardown``).
        """
        with self._abort_lock:
            self._main_ending.set()
            if threading.current_thread() is self._main:
                _cancel_pending_stop(self._main)

    def find_cause(self, seconds: float) -> bool:
        """Look (for up to ``seconds``) for a failure elsewhere that explains this rank's
        broken collective; record it and return True when found."""
        deadline = time.monotonic() + seconds
        while True:
            reason, code = self.look()
            if reason is not None:
                self.learn_of_failure(reason, code)
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(self.poll_seconds / 5)

    def learn_of_failure(self, reason: str, code: int) -> None:
        """Record a failure seen elsewhere (``look``) as the reason this rank ends."""
        first, standing = self.rendezvous.report_failure(reason)
        self.failure = self.failure or (standing, code)

    def claim_failure(self, reason: str, code: int) -> bool:
        """Record that this rank failed; returns whether it is the first failure of the job
        (else it is the echo of another rank's, e.g. a collective broken by a dead peer)."""
        first, standing = self.rendezvous.report_failure(reason)
        if self.failure is None:
            self.failure = (standing, code)
        return first

    def wait_for_children(self, seconds: float = CHILDREN_SECONDS) -> None:
        """Give the ranks this process started time to flush and exit, then kill the rest."""
        deadline = time.monotonic() + seconds
        for child in self.children.values():
            child.join(timeout=max(0.0, deadline - time.monotonic()))
        kill_ranks(self.children.values())

    # -- the monitor thread ----------------------------------------------------------------

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            reason, code = self.look()
            if reason is not None and not self._stop.is_set():
                self._abort(reason, code)
                return

    def look(self) -> tuple:
        """(reason, exit code) of a failure this rank can see now, else (None, 1)."""
        for rank, child in self.children.items():
            if child.exitcode not in (None, 0):
                return f"rank {rank} exited with code {child.exitcode}", 1
        if self._parent_pid is not None and os.getppid() != self._parent_pid:
            return "the process that started this rank is gone", 1
        if self._interrupted():
            return f"rank {self.rank} was interrupted (SIGINT)", 130
        return self.rendezvous.reported_failure(), 1

    def _interrupted(self) -> bool:
        if self._wakeup_read is None:
            return False
        try:
            received = os.read(self._wakeup_read, 512)
        except BlockingIOError:
            return False
        return signal.SIGINT.value in received

    def _ending(self) -> bool:
        return self._main_ending.is_set() or self.is_ending()

    def _abort(self, reason: str, code: int) -> None:
        if self.failure is not None or self._ending():
            return  # the main thread is already ending this rank
        # Outside the lock: a store that does not answer must not hold up the teardown.
        first, standing = self.rendezvous.report_failure(reason)
        with self._abort_lock:
            if self.failure is not None or self._ending():
                return
            self.failure = (standing, code)
            self.announced = True
            if code != 130:
                # SIGINT already raises KeyboardInterrupt in the main thread once it runs
                # Python.
                _dropped.clear()
                _raise_in_main_thread(self._main, standing)
        # After the lock: a full stderr pipe must not hold up the main thread's teardown.
        sys.stderr.write(f"[rank {self.rank}] Stopping this rank: {standing}.\n")
        sys.stderr.flush()
        deadline = time.monotonic() + GRACE_SECONDS
        while time.monotonic() < deadline and not self._ending():
            if self._stop.wait(self.poll_seconds):
                return
            if _dropped.is_set():
                _dropped.clear()
                with self._abort_lock:
                    if not self._ending():
                        _raise_in_main_thread(self._main, standing)
            _wake(self._main)
        if self._ending():
            return  # the main thread flushes, then ends the process
        logger.error("Rank %d did not stop within %.0f s; flushing from the monitor thread.",
                     self.rank, GRACE_SECONDS)  # fmt: skip
        finish_off(code, self.end_session, self.children.values())


def finish_off(code: int, end_session: Callable[[], None], children=()) -> None:
    """Flush (bounded in time), stop the ranks and workers this process started, and exit."""
    worker = threading.Thread(target=_quietly(end_session), daemon=True)
    worker.start()
    worker.join(timeout=FLUSH_SECONDS)
    kill_ranks(children)
    kill_own_workers()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def become_group_leader() -> None:
    """Put this started rank and the workers it will start into a process group of their own."""
    try:
        os.setpgid(0, 0)
    except OSError:  # already a leader, or not allowed here: killing falls back to the rank
        pass


def kill_ranks(ranks=()) -> None:
    """Kill started ranks that are still alive, with the workers in their process groups."""
    for rank in ranks:
        if rank.exitcode is None:
            try:
                os.killpg(rank.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError, TypeError):
                pass
            rank.kill()
    for rank in ranks:
        rank.join(timeout=5)
        # A dead rank's workers may outlive it; they share its process group.
        try:
            os.killpg(rank.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError, TypeError):
            pass


def kill_own_workers() -> None:
    """Kill this process's DataLoader workers just before it exits.

    torch reports a killed worker by raising in the main thread from its SIGCHLD handler,
    which would print a second traceback on the way out; the handler goes first.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for process in multiprocessing.active_children():
        try:
            process.kill()
        except Exception:  # noqa: BLE001 - already gone
            pass


def _raise_in_main_thread(main: threading.Thread, reason: str) -> None:
    global _reason_for_main_thread
    _reason_for_main_thread = f"stopping because {reason}"
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(main.ident), ctypes.py_object(JobFailed)
    )
    _wake(main)


def _cancel_pending_stop(main: threading.Thread) -> None:
    # NULL as the exception clears the thread's pending asynchronous exception, if any.
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(main.ident), None)


def _wake(main: threading.Thread) -> None:
    try:
        signal.pthread_kill(main.ident, _WAKE_SIGNAL)
    except (ProcessLookupError, OSError):
        pass


def _hook_catching_dropped_failures(previous: Callable[[Any], None]) -> Callable[[Any], None]:
    """An unraisable hook that notes a dropped JobFailed, instead of printing it as
    "Exception ignored", and passes everything else to ``previous``."""

    def hook(unraisable: Any) -> None:
        if unraisable.exc_type is not None and issubclass(unraisable.exc_type, JobFailed):
            _dropped.set()
            return
        previous(unraisable)

    hook.previous = previous  # type: ignore[attr-defined]
    return hook


def _do_nothing(signum, frame) -> None:
    """The wake signal's handler: running it lets a pending JobFailed surface."""


def _quietly(function: Callable[[], None]) -> Callable[[], None]:
    def run() -> None:
        try:
            function()
        except BaseException:  # noqa: B036 - the process is ending; say what failed
            logger.exception("Clean-up on the way out failed.")

    return run
