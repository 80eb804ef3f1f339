"""Cutting a CSV file that a crash left half-written back to its last complete record.

A crash can cut ``scalars.csv`` or ``text.csv`` anywhere, also inside a quoted field that
holds a newline, so the last newline need not end a record: a newline ends one only
outside quotes, and whether a position is inside quotes depends on how many quotes come
before it, back to the start of the file. The file is therefore read from its end with
two hypotheses, "the end is outside quotes" and "the end is inside quotes", each of which
fixes inside or outside for every byte read so far (every quote flips it). What the
backend writes (the csv module's minimal quoting, ``\\r\\n`` after every record, the step
never quoted) refutes a hypothesis that puts

* a CR or LF outside quotes other than in a CRLF (a field holding either is quoted), but
  for a CR as the file's last byte, a CRLF cut in two;
* an opening quote (or the second of a doubled one) after anything but ``,`` or ``"``;
* a closing quote (or the first of a doubled one) before anything but ``,``, CR, ``"`` or
  the end of the file;
* the start of the file inside quotes.

Reading stops once one hypothesis is left and the last newline it puts outside quotes has
been read: the file is cut just after that newline. A multi-line text cut inside its
quotes is usually settled by the bytes of its last record. A file without quotes near its
end is read further, up to its first quote from the end or to its start: no number of
bytes read from the end tells such a file apart from one whose quoted field opened before
them (a tag or text may hold anything, rows included), so there is no cheaper correct
way. That reading is a search for quotes in C, at the disk's speed: far less than the csv
parsing a resume does over the whole file.
"""
import os
from pathlib import Path
from typing import Any, List, Optional, Tuple

from ..errors import RecorderError

__all__ = ["check_and_repair"]

_FIRST_BLOCK = 64 * 1024
_LARGEST_BLOCK = 8 * 1024 * 1024
_BEFORE_OPENING = frozenset(b',"')
_AFTER_CLOSING = frozenset(b',\r"')


def check_and_repair(path: Path, header: Tuple[str, ...]) -> None:
    """Check an existing CSV's header and cut off a last record left half-written by a crash."""
    with open(path, "rb+") as handle:
        line = handle.readline()
        if not line.endswith(b"\n") and (",".join(header) + "\r\n").encode().startswith(line):
            handle.truncate(0)  # cut inside the header: the file starts afresh
            return
        first = line.rstrip(b"\r\n").decode("utf-8", "replace")
        if first != ",".join(header):
            raise RecorderError(
                f"{path} exists with the header {first!r}, not {','.join(header)!r}; move it "
                "away or record into another output_dir."
            )
        size = handle.seek(0, os.SEEK_END)
        end = complete_end(handle, size)
        if end < size:
            handle.truncate(end)


def complete_end(handle: Any, size: int) -> int:
    """The offset just after the last complete record of the CSV file open in ``handle``."""
    scan = _Scan(size)
    end = size
    block = _FIRST_BLOCK
    while end > 0 and not scan.settled:
        start = max(0, end - block)
        # One byte on either side, so that each position's neighbours are at hand.
        low = max(0, start - 1)
        handle.seek(low)
        scan.block(handle.read(min(size, end + 1) - low), low, start, end)
        end = start
        block = min(2 * block, _LARGEST_BLOCK)
    if not scan.settled:
        scan.start_of_file()
    if scan.record_end is not None:
        return scan.record_end
    # Neither hypothesis fits: the file is not as this backend writes it (edited, or its
    # line ends converted). Cut at the last newline, which is right for any file without
    # quoted newlines.
    return _after_last_newline(handle, size)


class _Scan:
    """The two hypotheses, updated block by block from the end of the file backwards.

    Hypothesis ``h`` (0: the end is outside quotes, 1: inside) puts the bytes between two
    quotes outside quotes when ``h`` equals the parity of the quotes after them.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.alive = [True, True]
        self.record_ends: List[Optional[int]] = [None, None]
        self.parity = 0  # of the quotes read so far
        #: Whether reading is over; then :attr:`record_end` holds the answer, None when
        #: neither hypothesis fits.
        self.settled = False
        self.record_end: Optional[int] = None

    def block(self, data: bytes, low: int, start: int, end: int) -> None:
        """Read the file's bytes ``start:end`` (``data`` holds them from offset ``low``)."""
        top = end - low
        bottom = start - low
        while not self.settled:
            quote = data.rfind(b'"', bottom, top)
            self._between_quotes(data, low, max(quote + 1, bottom), top)
            if quote >= 0:
                self._quote(data, low, quote)
            self._settle()
            if quote < 0:
                return
            top = quote

    def start_of_file(self) -> None:
        self.alive[1 - self.parity] = False  # a file starts outside quotes
        if self.alive[self.parity]:
            self.record_end = self.record_ends[self.parity] or 0
        self.settled = True

    def _between_quotes(self, data: bytes, low: int, first: int, stop: int) -> None:
        """Bytes without quotes, ``data[first:stop]``: outside quotes for one hypothesis."""
        outside = self.parity
        # Once a hypothesis has its record end, these bytes could only refute it, and
        # they never refute the true one: skipping them can keep a false one alive longer
        # but not change the answer, and a file without quotes is read with one search.
        if not self.alive[outside] or self.record_ends[outside] is not None or first >= stop:
            return
        lfs = data.count(b"\n", first, stop) - data.count(b"\r\n", max(0, first - 1), stop)
        crs = data.count(b"\r", first, stop) - data.count(b"\r\n", first, stop + 1)
        if crs and stop + low == self.size and data[stop - 1] == ord("\r"):
            crs -= 1  # a CRLF cut after its CR
        if lfs or crs:
            self.alive[outside] = False
        else:
            newline = data.rfind(b"\n", first, stop)
            if newline >= 0:
                self.record_ends[outside] = low + newline + 1

    def _quote(self, data: bytes, low: int, index: int) -> None:
        opening, closing = 1 - self.parity, self.parity
        before = data[index - 1] if index + low > 0 else None
        after = data[index + 1] if index + low + 1 < self.size else None
        if before not in _BEFORE_OPENING:
            self.alive[opening] = False
        if after is not None and after not in _AFTER_CLOSING:
            self.alive[closing] = False
        self.parity ^= 1

    def _settle(self) -> None:
        """Settled once one hypothesis is left and its last record end was read, or none."""
        if not any(self.alive):
            self.settled = True
        elif self.alive[0] != self.alive[1]:
            self.record_end = self.record_ends[self.alive.index(True)]
            self.settled = self.record_end is not None


def _after_last_newline(handle: Any, size: int) -> int:
    block = 64 * 1024
    position = size
    while position > 0:
        start = max(0, position - block)
        handle.seek(start)
        chunk = handle.read(position - start)
        index = chunk.rfind(b"\n")
        if index >= 0:
            return start + index + 1
        position = start
    return 0
