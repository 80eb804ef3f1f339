"""The training thread's end of the queue to the recorder's writer thread.

``Recorder`` derives from ``_Handover``, which starts the writer and holds what the
recording methods fall back on: appending an item, waking the writer or waiting for
room, and the slow path taken when the recorder is closed, silent or its writer failed.
``Recorder.scalar`` and ``Recorder.step``, the per-step hot path, read the attributes set
up here directly (``scalar`` even appends to the queue itself), since every call they
save per value is measurable.
"""
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from ..distributed import _REDUCE_OPS, all_reduce
from ..errors import RecorderError
from . import _values
from ._backend import RecorderBackend
from ._writer import Writer

_now = time.time


class _Handover:
    """Private base of ``Recorder``: the hand-over of recorded values to the writer.

    The recorder sets ``_count`` and ``_closed`` itself, before :meth:`_start_writer`.
    """

    _count: int
    _closed: bool

    def _start_writer(
        self,
        backends: Sequence[RecorderBackend],
        output_dir: Optional[Path],
        max_pending: int,
        flush_secs: float,
        silent: bool,
    ) -> None:
        self._silent = silent
        self._max_pending = max_pending
        self._wake_at = max(1, max_pending // 4)
        self._writer: Optional[Writer] = None
        if not self._silent:
            self._writer = Writer(backends, output_dir, max_pending, flush_secs,
                                  self._writer_failed)
        self._items = self._writer.items if self._writer else None
        self._wants_steps = bool(self._writer and self._writer.wants("step_finished"))
        self._stores_arrays = bool(self._writer and self._writer.wants("array"))
        self._accepting = not self._silent

    def _put(self, kind: int, tag: Optional[str], value: Any, step: Optional[int] = None) -> None:
        if self._accepting or self._reopen():
            items = self._items
            items.append((kind, tag, value, self._count if step is None else step, _now()))
            pending = len(items)
            if pending >= self._wake_at:
                self._backlog(pending)

    def _backlog(self, pending: int) -> None:
        # The writer polls every 0.5 s and works through what has come meanwhile in one go:
        # each wake-up makes the training thread wait for the GIL at least once, so a loop
        # that records quickly does not wake it more often, until a quarter of the queue is
        # waiting (only at the crossing, so a busy writer costs no Event.set() per call). A
        # full queue blocks.
        if pending >= self._max_pending:
            self._writer.wait_for_room()
        elif pending == self._wake_at:
            self._writer.wake()

    def _reduced(self, tag: str, value: Any, reduce: str) -> Any:
        if reduce not in _REDUCE_OPS:
            raise RecorderError(
                f"Recorder.scalar({tag!r}) got reduce={reduce!r}; allowed are "
                f"{', '.join(map(repr, _REDUCE_OPS))} or None."
            )
        return all_reduce(_values.scalar(tag, value), op=reduce)

    def _writer_failed(self) -> None:
        # Runs on the writer thread; the next call on the training thread takes the slow
        # path and raises the failure.
        self._accepting = False

    def _reopen(self) -> bool:
        """The slow path of every call: whether to record, or the error to raise."""
        if self._closed:
            raise RecorderError(
                "This Recorder is closed; recording after close() is not possible. Create "
                "a new Recorder to record more."
            )
        if self._silent:
            return False
        self._raise_failures()
        if not self._writer.alive:
            raise RecorderError(
                "The recorder's writer thread has stopped (see the error logged before), so "
                "nothing more can be recorded; create a new Recorder."
            )
        self._accepting = True
        return True

    def _raise_failures(self) -> None:
        if self._writer is not None:
            self._writer.raise_failures()
