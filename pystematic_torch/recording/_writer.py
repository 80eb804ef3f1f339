"""The background writer: one thread that converts recorded values and feeds the backends.

The training thread appends ``(kind, tag, value, step, wall_time)`` tuples to a deque (an
atomic operation in CPython, so no lock is taken per value) and this thread pops them in
order, in batches. Everything slow happens here: ``Tensor.item()`` (which waits for the
GPU), rendering figures, PNG and protobuf encoding, and file writes. Consecutive scalars are
handed to the built-in backends as one run, so their per-value work is a tight loop.
"""
import logging
import threading
import time
from collections import deque
from itertools import islice
from operator import itemgetter
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from ..errors import RecorderError
from . import _values
from ._backend import RecorderBackend, overrides
from ._tally import Tally

logger = logging.getLogger("pystematic.torch.recording")

# The kinds of items on the queue. Markers (step, resume, flush, capture, end) travel in
# the same queue as the values so that they take effect exactly between the values
# around them.
SCALAR, IMAGE, FIGURE, HISTOGRAM, TEXT, PARAMS, ARRAY, STEP, RESUME, FLUSH, CAPTURE, END = (
    range(12)
)
#: The kind names used in error messages and in the recorder's state.
KIND_NAMES = ("scalar", "image", "image", "histogram", "text", "params", "array")
_METHODS = {
    IMAGE: "image",
    FIGURE: "image",
    HISTOGRAM: "histogram",
    TEXT: "text",
    PARAMS: "params",
    ARRAY: "array",
    STEP: "step_finished",
    RESUME: "resume",
    END: "run_ended",
}
_CONVERTERS = {
    IMAGE: _values.image_pixels,
    FIGURE: _values.render_figure,
    HISTOGRAM: _values.histogram_values,
    ARRAY: _values.array_values,
}
# How long the writer sleeps when nothing wakes it: values wait at most this long before
# the backends see them (a backlog of a quarter of the queue, a flush or a finished step
# for the console wakes it at once), and values come in batches.
_POLL_SECONDS = 0.5
# How many items the writer takes off the queue at a time.
_BATCH = 4096
# Markers that do not make the backends create their files.
_QUIET = frozenset((FLUSH, CAPTURE, END))
_ONLY_SCALARS = {SCALAR}
_NUMBER_TYPES = frozenset((float, int))
_KIND, _VALUE = itemgetter(0), itemgetter(2)


class Capture:
    """A request for the tally of values recorded at ``step``, answered by the writer."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.counts: Optional[Dict[str, Dict[str, int]]] = None
        self.done = threading.Event()


class Writer:
    """Owns the hand-over deque, the writer thread and the backends."""

    def __init__(
        self,
        backends: Sequence[RecorderBackend],
        output_dir: Optional[Path],
        max_pending: int,
        flush_secs: float,
        on_failure: Callable[[], None],
    ) -> None:
        self.items: deque = deque()
        self.max_pending = max_pending
        self._low_water = max_pending // 2
        self._backends: List[RecorderBackend] = list(backends)
        self._output_dir = output_dir
        self._flush_secs = flush_secs
        self._next_flush = time.monotonic() + flush_secs
        self._on_failure = on_failure
        self._handlers: Dict[int, list] = {}
        self._scalar_handlers: list = []
        self._update_handlers()
        self._tally = Tally()
        self.failures: List[RecorderError] = []
        #: How many items the writer has taken off the queue (read by the benchmark).
        self.items_done = 0
        self._opened = False
        self._stopping = False
        self._waiting_for_room = False
        self._wake = threading.Event()
        self._room = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="pystematic-torch-recorder", daemon=True
        )
        self._thread.start()

    def wants(self, method: str) -> bool:
        """Whether any backend implements ``method`` (``"array"``, ``"step_finished"``...)."""
        return any(overrides(b, method) for b in self._backends)

    # -- called on the training thread ---------------------------------------------------

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def wake(self) -> None:
        self._wake.set()

    def wait_for_room(self) -> None:
        """Block until the writer has worked the queue down to half its capacity."""
        self._wake.set()
        while len(self.items) > self._low_water and self._thread.is_alive():
            self._room.clear()
            self._waiting_for_room = True
            if len(self.items) > self._low_water:
                self._room.wait(0.05)
        self._waiting_for_room = False
        if not self._thread.is_alive() and not self._stopping:
            self.items.clear()
            raise RecorderError(
                "The recorder's writer thread has stopped (see the error logged before), so "
                "nothing more can be recorded; create a new Recorder."
            )

    def flush(self) -> None:
        """Return once every item appended so far is written, flushed and synced to disk."""
        self._wait_for(FLUSH, threading.Event())

    def capture(self, step: int) -> Optional[Dict[str, Dict[str, int]]]:
        """How many values of each kind and tag reached the backends at ``step`` so far.

        None when the writer thread is gone and cannot answer.
        """
        request = Capture(step)
        self._wait_for(CAPTURE, request, request.done)
        return request.counts

    def raise_failures(self) -> None:
        """Raise what went wrong on the writer thread since the last call, once."""
        if self.failures:
            found = [self.failures.pop(0) for _ in range(len(self.failures))]
            if len(found) == 1:
                raise found[0]
            raise RecorderError(" ".join(str(f) for f in found)) from found[0].__cause__

    def stop(self, outcome: Optional[str] = None) -> None:
        """Write what is queued, tell the backends how the run ended, close them, end the thread."""
        if outcome is not None:
            self.items.append((END, None, outcome, None, time.time()))
        self._stopping = True
        self._wake.set()
        self._thread.join()

    def discard(self) -> None:
        """Drop what is queued and stop; used when this process falls silent."""
        self.items.clear()
        self.stop()

    def _wait_for(self, kind: int, value: Any, done: Optional[threading.Event] = None) -> None:
        done = done or value
        self.items.append((kind, None, value, None, None))
        self._wake.set()
        while not done.wait(0.05):
            if not self._thread.is_alive():
                break

    # -- the writer thread ---------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._next_flush = time.monotonic() + self._flush_secs
            while True:
                self._wake.wait(_POLL_SECONDS)
                self._wake.clear()
                stopping = self._stopping
                if self.items:
                    self._drain()
                if stopping:
                    break
                self._flush_if_due()
            self._close_backends()
        except BaseException as error:  # noqa: B036 - reported to the user, not swallowed
            self._fail(None, "running the writer thread", error)
            self._room.set()

    def _drain(self) -> None:
        items = self.items
        take = iter(items.popleft, None)  # popleft called from C, not from a Python loop
        while items:
            batch = list(islice(take, len(items) if len(items) < _BATCH else _BATCH))
            self.items_done += len(batch)
            if self._waiting_for_room and len(items) <= self._low_water:
                self._waiting_for_room = False
                self._room.set()
            kinds = set(map(_KIND, batch))
            if not self._opened and not kinds <= _QUIET:
                self._open_backends()
            # A loop that records without pause keeps the queue from ever emptying: the
            # periodic flush is due between batches too, or a kill would lose everything.
            self._flush_if_due()
            if kinds == _ONLY_SCALARS:
                self._write_scalars(batch)
                continue
            run: list = []
            append = run.append
            for item in batch:
                if item[0] == SCALAR:
                    append(item)
                    continue
                if run:
                    self._write_scalars(run)
                    run = []
                    append = run.append
                self._dispatch(item)
            if run:
                self._write_scalars(run)

    def _flush_if_due(self) -> None:
        if self._opened and time.monotonic() >= self._next_flush:
            self._flush_backends()
            self._next_flush = time.monotonic() + self._flush_secs

    def _write_scalars(self, run: list) -> None:
        if not set(map(type, map(_VALUE, run))) <= _NUMBER_TYPES:
            run = self._converted(run)
            if not run:
                return
        self._tally.add_run(run)
        for backend, handler in self._scalar_handlers:
            try:
                handler(run)
            except _ScalarFailure as failure:
                self._fail(backend, failure.what, failure.__cause__)
            except Exception as error:
                what = f"writing scalars at steps {run[0][3]} to {run[-1][3]}"
                self._fail(backend, what, error)

    def _converted(self, run: list) -> list:
        """``run`` with every tensor replaced by its number (one device sync per device)."""
        try:
            numbers = _values.scalar_numbers([item[2] for item in run])
        except Exception:  # find the value that failed, so the message can name it
            kept = []
            for kind, tag, value, step, wall in run:
                number = self._convert(_values.scalar_number, kind, tag, value, step)
                if number is not None:
                    kept.append((kind, tag, number, step, wall))
            return kept
        return [(k, tag, number, step, wall)
                for (k, tag, _, step, wall), number in zip(run, numbers)]  # fmt: skip

    def _dispatch(self, item: tuple) -> None:
        kind, tag, value, step, wall = item
        if kind == FLUSH:
            if self._opened:
                self._flush_backends()
            value.set()
            return
        if kind == RESUME:
            self._tally.resume(value.step, value.recorded)
        if kind == CAPTURE:
            value.counts = self._tally.counts_at(value.step)
            value.done.set()
            return
        handlers = self._handlers[kind]
        if kind == END and not self._opened:
            return  # nothing was recorded: no files, and no session to end
        if kind in _CONVERTERS and handlers:
            value = self._convert(_CONVERTERS[kind], kind, tag, value, step)
            if value is None:
                return
        if kind < STEP:
            self._tally.add(KIND_NAMES[kind], tag or "", step)
        for backend, handler in handlers:
            backend.wall_time = wall
            try:
                if kind in (STEP, RESUME, END):
                    handler(value if kind != STEP else step)
                elif kind == HISTOGRAM:
                    handler(tag, value[0], value[1], step)
                elif kind == PARAMS:
                    handler(value[0], value[1], step)
                else:
                    handler(tag, value, step)
            except Exception as error:
                what = f"in {_METHODS[kind]}() at step {step}" if tag is None else (
                    f"writing {KIND_NAMES[kind]} {tag!r} at step {step}"
                )
                self._fail(backend, what, error)

    def _convert(self, converter, kind: int, tag: str, value, step: int):
        try:
            return converter(value)
        except Exception as error:
            self._fail(None, f"converting {KIND_NAMES[kind]} {tag!r} at step {step}", error)
            return None

    def _open_backends(self) -> None:
        self._opened = True
        if self._output_dir is not None:
            self._output_dir.mkdir(parents=True, exist_ok=True)
        for backend in list(self._backends):
            try:
                backend.open(self._output_dir)
            except Exception as error:
                self._fail(backend, f"opening its files in {self._output_dir}", error)

    def _flush_backends(self) -> None:
        for backend in list(self._backends):
            try:
                backend.flush()
            except Exception as error:
                self._fail(backend, "flushing", error)

    def _close_backends(self) -> None:
        if not self._opened:
            return
        for backend in list(self._backends):
            try:
                backend.close()
            except Exception as error:
                self._fail(backend, "closing", error, close=False)

    def _update_handlers(self) -> None:
        backends = self._backends
        self._handlers = {
            kind: [(b, getattr(b, method)) for b in backends if overrides(b, method)]
            for kind, method in _METHODS.items()
        }
        self._scalar_handlers = [
            (b, getattr(b, "_scalar_run", None) or _one_by_one(b))
            for b in backends if overrides(b, "scalar")
        ]  # fmt: skip

    def _fail(self, backend, what: str, error: BaseException, close: bool = True) -> None:
        if backend is not None and backend not in self._backends:
            return
        if backend is None:
            message = f"The recorder's writer failed {what}: {type(error).__name__}: {error}"
        else:
            message = (
                f"Recorder backend {backend.name!r} failed {what}: "
                f"{type(error).__name__}: {error}. The backend has been closed and the "
                "other backends go on recording; fix the cause and start a new recorder "
                "to record with it again."
            )
            self._remove(backend, close)
        logger.error(message)
        failure = RecorderError(message)
        failure.__cause__ = error
        self.failures.append(failure)
        self._on_failure()

    def _remove(self, backend: RecorderBackend, close: bool) -> None:
        if backend not in self._backends:
            return
        self._backends.remove(backend)
        self._update_handlers()
        if close:
            try:
                backend.close()
            except Exception:
                logger.exception("Closing the failed backend %r failed too.", backend.name)


class _ScalarFailure(Exception):
    """A backend's scalar() failed; says which value, with the backend's error as cause."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


def _one_by_one(backend: RecorderBackend) -> Callable[[list], None]:
    """A run handler for a backend that takes scalars one at a time."""
    scalar = backend.scalar

    def write(run: list) -> None:
        for _kind, tag, value, step, wall in run:
            backend.wall_time = wall
            try:
                scalar(tag, value, step)
            except Exception as error:
                raise _ScalarFailure(f"writing scalar {tag!r} at step {step}") from error

    return write
