"""The background writer: one thread that converts recorded values and feeds the backends.

The training thread appends ``(kind, tag, value, step)`` tuples to a deque (an atomic
operation in CPython, so no lock is taken per value) and this thread pops them in order.
Everything slow happens here: ``Tensor.item()`` (which waits for the GPU), rendering
figures, PNG and protobuf encoding, and file writes.
"""
import logging
import threading
import time
from collections import deque
from pathlib import Path
from typing import Callable, List, Optional, Sequence

from ..errors import RecorderError
from . import _values
from ._backend import RecorderBackend, overrides

logger = logging.getLogger("pystematic.torch.recording")

# The kinds of items on the queue. Markers (step, resume, flush) travel in the same queue
# as the values so that they take effect exactly between the values around them.
SCALAR, IMAGE, FIGURE, HISTOGRAM, TEXT, PARAMS, ARRAY, STEP, RESUME, FLUSH = range(10)
_KIND_NAMES = ("scalar", "image", "figure", "histogram", "text", "params", "array")
_METHODS = {
    SCALAR: "scalar",
    IMAGE: "image",
    FIGURE: "image",
    HISTOGRAM: "histogram",
    TEXT: "text",
    PARAMS: "params",
    ARRAY: "array",
    STEP: "step_finished",
    RESUME: "resume",
}
_CONVERTERS = {
    IMAGE: _values.image_pixels,
    FIGURE: _values.render_figure,
    HISTOGRAM: _values.histogram_values,
    ARRAY: _values.array_values,
}


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
        self._on_failure = on_failure
        self._handlers = {
            kind: [(b, getattr(b, method)) for b in self._backends if overrides(b, method)]
            for kind, method in _METHODS.items()
        }
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
        """Return once every item appended so far has been written and flushed."""
        done = threading.Event()
        self.items.append((FLUSH, None, done, None))
        self._wake.set()
        while not done.wait(0.05):
            if not self._thread.is_alive():
                break

    def raise_failures(self) -> None:
        """Raise what went wrong on the writer thread since the last call, once."""
        if self.failures:
            found = [self.failures.pop(0) for _ in range(len(self.failures))]
            if len(found) == 1:
                raise found[0]
            raise RecorderError(" ".join(str(f) for f in found)) from found[0].__cause__

    def stop(self) -> None:
        """Write what is queued, close the backends and end the thread."""
        self._stopping = True
        self._wake.set()
        self._thread.join()

    def discard(self) -> None:
        """Drop what is queued and stop; used when this process falls silent."""
        self.items.clear()
        self.stop()

    # -- the writer thread ---------------------------------------------------------------

    def _run(self) -> None:
        try:
            last_flush = time.monotonic()
            while True:
                self._wake.wait(0.1)
                self._wake.clear()
                stopping = self._stopping
                if self.items:
                    self._drain()
                if stopping:
                    break
                if self._opened and time.monotonic() - last_flush > self._flush_secs:
                    self._flush_backends()
                    last_flush = time.monotonic()
            self._close_backends()
        except BaseException as error:  # noqa: B036 - reported to the user, not swallowed
            self._fail(None, "running the writer thread", error)
            self._room.set()

    def _drain(self) -> None:
        items = self.items
        pop = items.popleft
        scalar_handlers = self._handlers[SCALAR]
        while items:
            kind, tag, value, step = pop()
            self.items_done += 1
            if self._waiting_for_room and len(items) <= self._low_water:
                self._waiting_for_room = False
                self._room.set()
            if kind == FLUSH:
                if self._opened:
                    self._flush_backends()
                value.set()
                continue
            if not self._opened:
                self._open_backends()
            if kind == SCALAR:
                if value.__class__ is not float and value.__class__ is not int:
                    value = self._convert(_values.scalar_number, kind, tag, value, step)
                    if value is None:
                        continue
                for backend, handler in scalar_handlers:
                    try:
                        handler(tag, value, step)
                    except Exception as error:
                        self._fail(backend, f"writing scalar {tag!r} at step {step}", error)
                        scalar_handlers = self._handlers[SCALAR]
                continue
            self._dispatch(kind, tag, value, step)

    def _dispatch(self, kind: int, tag, value, step: int) -> None:
        handlers = self._handlers[kind]
        if not handlers:
            return
        if kind in _CONVERTERS:
            value = self._convert(_CONVERTERS[kind], kind, tag, value, step)
            if value is None:
                return
        for backend, handler in handlers:
            try:
                if kind in (STEP, RESUME):
                    handler(step)
                elif kind == HISTOGRAM:
                    handler(tag, value[0], value[1], step)
                elif kind == PARAMS:
                    handler(value[0], value[1], step)
                else:
                    handler(tag, value, step)
            except Exception as error:
                what = f"in {_METHODS[kind]}() at step {step}" if tag is None else (
                    f"writing {_KIND_NAMES[kind]} {tag!r} at step {step}"
                )
                self._fail(backend, what, error)

    def _convert(self, converter, kind: int, tag: str, value, step: int):
        try:
            return converter(value)
        except Exception as error:
            self._fail(None, f"converting {_KIND_NAMES[kind]} {tag!r} at step {step}", error)
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
        for kind, handlers in self._handlers.items():
            self._handlers[kind] = [(b, h) for b, h in handlers if b is not backend]
        if close:
            try:
                backend.close()
            except Exception:
                logger.exception("Closing the failed backend %r failed too.", backend.name)
