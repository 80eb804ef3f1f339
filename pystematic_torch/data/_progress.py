"""An epoch's progress: a tqdm bar in a terminal, a plain line a minute in a log.

A bar redraws itself in place, which a terminal shows and a log file keeps as one line per
redraw. In a log a line a minute says as much, and an epoch shorter than that writes
nothing: a bar's start and end lines cost more than a small model's epoch spends on its
batches.
"""
import sys
import time
from typing import Any, Optional, TextIO

#: How often a log gets a line while an epoch runs.
LOG_EVERY_SECONDS = 60.0


def epoch_progress(epoch: int, start: int, total: Optional[int]) -> Any:
    """A progress display for batches ``start`` to ``total`` of ``epoch``, on standard error.

    Both kinds take ``update(batches)`` and ``close()``.
    """
    stream = sys.stderr
    if getattr(stream, "isatty", lambda: False)():
        from tqdm import tqdm

        return tqdm(total=total, initial=start, desc=f"epoch {epoch}", unit="batch",
                    file=stream, dynamic_ncols=True, mininterval=0.1)  # fmt: skip
    return LogLines(stream, epoch, start, total)


class LogLines:
    """An epoch's progress as a line a minute; nothing for an epoch shorter than that."""

    def __init__(self, stream: TextIO, epoch: int, start: int, total: Optional[int]) -> None:
        self._stream = stream
        self._epoch = epoch
        self._start = self._done = start
        self._total = total
        self._began = time.monotonic()
        self._next_line = self._began + LOG_EVERY_SECONDS
        self._lines = 0

    def update(self, batches: int) -> None:
        self._done += batches
        now = time.monotonic()
        if now >= self._next_line:
            self._write(now)
            self._next_line = now + LOG_EVERY_SECONDS

    def close(self) -> None:
        """Write the epoch's last line, if it wrote any before."""
        if self._lines:
            self._write(time.monotonic())
            self._lines = 0

    def _write(self, now: float) -> None:
        elapsed = now - self._began
        rate = (self._done - self._start) / elapsed if elapsed > 0 else 0.0
        of = "" if self._total is None else f"/{self._total}"
        self._stream.write(f"epoch {self._epoch}: {self._done}{of} batches, {elapsed:.0f} s, "
                           f"{rate:.1f} batch/s\n")  # fmt: skip
        self._stream.flush()
        self._lines += 1
