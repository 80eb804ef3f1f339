"""TensorBoard event files at the byte level: framed records, and scalar events built by hand.

An event file is a sequence of records: the payload's length (uint64), a masked CRC32C of
those 8 bytes, the payload (a serialised ``Event`` protocol buffer) and a masked CRC32C of
the payload, all little-endian. TensorBoard's own writer computes the CRC in pure Python,
which costs about as much as everything else a recorder does per value; here it comes from
the ``google-crc32c`` package's C implementation.

Scalar events are encoded directly in the protocol buffer wire format, so recording a
number builds no message object: each tag's bytes are encoded once, and an event is a
handful of byte strings joined. Other events are built with the ``tensorboard`` package's
protos and framed here.
"""
import math
import struct
from operator import itemgetter
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

_LENGTH = struct.Struct("<Q")
_CRC = struct.Struct("<I")
_DOUBLE = struct.Struct("<d")
_FLOAT = struct.Struct("<f")
_MASK_DELTA = 0xA282EAD8

# Field keys of the protocol buffers involved: (field number << 3) | wire type.
_EVENT_WALL_TIME = b"\x09"  # Event.wall_time = 1, fixed64 (double)
_EVENT_STEP = b"\x10"  # Event.step = 2, varint
_EVENT_SUMMARY = b"\x2a"  # Event.summary = 5, length-delimited
_SUMMARY_VALUE = b"\x0a"  # Summary.value = 1, length-delimited
_VALUE_TAG = b"\x0a"  # Summary.Value.tag = 1, length-delimited
_VALUE_SIMPLE = b"\x15"  # Summary.Value.simple_value = 2, fixed32 (float)

#: Values recorded at the same step within this many seconds share one event, which then
#: carries the wall time of the first of them.
SHARED_EVENT_SECONDS = 0.001
_MAX_VALUES_PER_EVENT = 512
# Runs shorter than this (a training loop's few values per writer wake-up) are encoded in
# plain Python; NumPy's fixed cost per call would outweigh its speed.
_SMALL_RUN = 256

_crc32c: Optional[Callable[[bytes], int]] = None
_tag, _number, _step, _wall = itemgetter(1), itemgetter(2), itemgetter(3), itemgetter(4)


def crc32c_function() -> Callable[[bytes], int]:
    """The CRC32C function: google-crc32c's C code, else TensorBoard's pure-Python one."""
    global _crc32c
    if _crc32c is None:
        try:
            import google_crc32c

            _crc32c = google_crc32c.value
        except ImportError:  # the package is a dependency; this keeps a broken install working
            from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import crc32c

            _crc32c = crc32c
    return _crc32c


def frame(payloads: Sequence[bytes]) -> bytes:
    """The records holding ``payloads``, ready to be appended to an event file."""
    crc = crc32c_function()
    pack_length, pack_crc = _LENGTH.pack, _CRC.pack
    parts: List[bytes] = []
    append = parts.append
    for data in payloads:
        header = pack_length(len(data))
        value = crc(header)
        append(header)
        append(pack_crc((((value >> 15) | (value << 17)) + _MASK_DELTA) & 0xFFFFFFFF))
        append(data)
        value = crc(data)
        append(pack_crc((((value >> 15) | (value << 17)) + _MASK_DELTA) & 0xFFFFFFFF))
    return b"".join(parts)


def read_records(path: Path) -> Iterator[bytes]:
    """The payloads of an event file, in order; a torn record at the end ends the file.

    A process killed while appending can leave the last record incomplete or with a wrong
    checksum; TensorBoard's readers stop there too, so nothing after it was ever visible.
    """
    crc = crc32c_function()
    with open(path, "rb") as handle:
        while True:
            header = handle.read(12)
            if len(header) < 12:
                return
            (length,) = _LENGTH.unpack_from(header)
            (header_crc,) = _CRC.unpack_from(header, 8)
            if _masked(crc(header[:8])) != header_crc:
                return
            payload = handle.read(length)
            footer = handle.read(4)
            if len(payload) < length or len(footer) < 4:
                return
            if _masked(crc(payload)) != _CRC.unpack(footer)[0]:
                return
            yield payload


def _masked(value: int) -> int:
    return (((value >> 15) | (value << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def _varint(number: int) -> bytes:
    if number < 0:
        number += 1 << 64  # int64 fields encode negative numbers in ten bytes
    out = bytearray()
    while number > 0x7F:
        out.append((number & 0x7F) | 0x80)
        number >>= 7
    out.append(number)
    return bytes(out)


def _float32(value: float) -> bytes:
    try:
        return _FLOAT.pack(value)
    except (OverflowError, struct.error):  # beyond float32: TensorBoard shows infinity
        return _FLOAT.pack(math.inf if value > 0 else -math.inf)


class ScalarEncoder:
    """Turns runs of recorded scalars into framed event records.

    Scalars recorded at the same step within the same millisecond go into one event
    (TensorBoard reads them as separate values); it carries the wall time of the first. In
    a training loop consecutive events usually hold the same tags in the same order; such
    stretches are laid out as one NumPy record array (every event has the same layout, only
    wall time, step and values differ), so the per-value work happens in NumPy and the
    per-event work in C (the CRC), not in Python. Other events are built one by one.
    """

    def __init__(self) -> None:
        self._heads: Dict[str, bytes] = {}
        self._layouts: Dict[tuple, Any] = {}

    def encode(self, run: Sequence[tuple]) -> bytes:
        """Framed records for ``run``: ``(kind, tag, number, step, wall_time)`` tuples."""
        count = len(run)
        if count < _SMALL_RUN:
            return frame(self._small_run(run))
        import numpy as np

        tags = np.empty(count, dtype=object)
        tags[:] = list(map(_tag, run))
        steps = np.fromiter(map(_step, run), np.int64, count)
        walls = np.fromiter(map(_wall, run), np.float64, count)
        try:
            values = np.fromiter(map(_number, run), np.float64, count)
        except OverflowError:  # an int beyond float64: TensorBoard shows it as infinite
            values = np.array([_clamped(item[2]) for item in run], dtype=np.float64)
        millis = np.floor(walls * 1000.0)
        starts = np.flatnonzero(
            np.concatenate(([True], (steps[1:] != steps[:-1]) | (millis[1:] != millis[:-1])))
        )
        sizes = np.diff(np.append(starts, count))
        # An event repeats its predecessor's layout when it has as many values, the same
        # tags in the same order, and a step of as many varint bytes.
        sizes_per_value = np.repeat(sizes, sizes)
        positions = np.arange(count)
        previous = positions - sizes_per_value
        same_tag = np.zeros(count, dtype=bool)
        valid = previous >= 0
        same_tag[valid] = tags[valid] == tags[previous[valid]]
        step_bytes = _varint_lengths(steps[starts])
        repeats = np.logical_and.reduceat(same_tag, starts) & (sizes <= _MAX_VALUES_PER_EVENT)
        repeats[1:] &= (sizes[1:] == sizes[:-1]) & (step_bytes[1:] == step_bytes[:-1])
        repeats[0] = False
        stretch_starts = np.flatnonzero(~repeats).tolist() + [len(starts)]
        parts: List[bytes] = []
        event_starts = starts.tolist() + [count]
        for first, end in zip(stretch_starts, stretch_starts[1:]):
            if end - first >= 4 and sizes[first] <= _MAX_VALUES_PER_EVENT:
                parts.append(self._stretch(
                    run, event_starts[first], end - first, int(sizes[first]),
                    int(step_bytes[first]), walls, steps, values,
                ))  # fmt: skip
            else:
                payloads = [
                    payload
                    for event in range(first, end)
                    for payload in self._events(run[event_starts[event] : event_starts[event + 1]])
                ]
                parts.append(frame(payloads))
        return b"".join(parts)

    def _stretch(self, run, start, events, size, step_bytes, walls, steps, values) -> bytes:
        """``events`` events of ``size`` values each, with equal layouts, from ``start``."""
        import numpy as np

        tags = tuple(item[1] for item in run[start : start + size])
        layout = self._layouts.get((tags, step_bytes)) or self._layout(tags, step_bytes)
        dtype, constants, payload_size = layout
        first_values = start + size * np.arange(events)
        records = np.empty(events, dtype=dtype)
        for name, constant in constants:
            records[name] = constant
        records["wall"] = walls[first_values]
        event_steps = steps[first_values]
        for index in range(step_bytes):
            byte = (event_steps >> (7 * index)) & 0x7F
            records[f"step{index}"] = byte | 0x80 if index < step_bytes - 1 else byte
        with np.errstate(over="ignore"):  # beyond float32's range: infinite, as TensorBoard
            for index in range(size):
                records[f"value{index}"] = values[first_values + index].astype(np.float32)
        data = records.tobytes()
        width = dtype.itemsize
        begins = range(12, 12 + width * events, width)
        ends = range(12 + payload_size, 12 + payload_size + width * events, width)
        payloads = map(data.__getitem__, map(slice, begins, ends))
        checksums = np.fromiter(map(crc32c_function(), payloads), np.uint64, events)
        masked = (((checksums >> 15) | (checksums << 17)) + _MASK_DELTA) & 0xFFFFFFFF
        records["crc"] = masked.astype(np.uint32)
        return records.tobytes()

    def _layout(self, tags: tuple, step_bytes: int):
        """The record layout of an event holding ``tags`` with a step of ``step_bytes``."""
        import numpy as np

        heads = [self._heads.get(tag) or self._head(tag) for tag in tags]
        summary_size = sum(len(head) + 4 for head in heads)
        summary_length = _varint(summary_size)
        payload_size = 1 + 8 + 1 + step_bytes + 1 + len(summary_length) + summary_size
        header = _LENGTH.pack(payload_size)
        fields = [("header", "V12"), ("wall_key", "u1"), ("wall", "<f8"), ("step_key", "u1")]
        fields += [(f"step{i}", "u1") for i in range(step_bytes)]
        fields += [("summary_key", "u1"), ("summary_length", f"V{len(summary_length)}")]
        for index, head in enumerate(heads):
            fields += [(f"head{index}", f"V{len(head)}"), (f"value{index}", "<f4")]
        fields.append(("crc", "<u4"))
        constants = [
            ("header", np.void(header + _CRC.pack(_masked(crc32c_function()(header))))),
            ("wall_key", _EVENT_WALL_TIME[0]),
            ("step_key", _EVENT_STEP[0]),
            ("summary_key", _EVENT_SUMMARY[0]),
            ("summary_length", np.void(summary_length)),
        ] + [(f"head{index}", np.void(head)) for index, head in enumerate(heads)]
        layout = (np.dtype(fields), constants, payload_size)
        self._layouts[(tags, step_bytes)] = layout
        return layout

    def _head(self, tag: str) -> bytes:
        # Summary.value's key and length, then the Value's tag field and simple_value key:
        # everything of a value but its 4 bytes of float.
        encoded = tag.encode("utf-8")
        value = _VALUE_TAG + _varint(len(encoded)) + encoded + _VALUE_SIMPLE
        head = _SUMMARY_VALUE + _varint(len(value) + 4) + value
        self._heads[tag] = head
        return head

    def _small_run(self, run: Sequence[tuple]) -> List[bytes]:
        """The payloads of a short run, grouped in Python: cheaper than NumPy's set-up."""
        payloads: List[bytes] = []
        first = 0
        for index in range(1, len(run) + 1):
            if index == len(run) or run[index][3] != run[first][3] or (
                math.floor(run[index][4] * 1000.0) != math.floor(run[first][4] * 1000.0)
            ):
                payloads.extend(self._events(run[first:index]))
                first = index
        return payloads

    def _events(self, items: Sequence[tuple]) -> List[bytes]:
        """The payloads of one group of values (one step, one millisecond), built in Python."""
        heads, head_of = self._heads, self._head
        events = []
        for offset in range(0, len(items), _MAX_VALUES_PER_EVENT):
            chunk = items[offset : offset + _MAX_VALUES_PER_EVENT]
            values = [(heads.get(item[1]) or head_of(item[1])) + _float32(item[2])
                      for item in chunk]  # fmt: skip
            events.append(_event(chunk[0][4], chunk[0][3], values))
        return events


def _clamped(number) -> float:
    try:
        return float(number)
    except OverflowError:
        return math.inf if number > 0 else -math.inf


def _varint_lengths(numbers):
    """How many bytes the varint of each (non-negative) number takes."""
    import numpy as np

    lengths = np.ones(len(numbers), dtype=np.int64)
    remaining = numbers >> 7
    while remaining.any():
        lengths += remaining > 0
        remaining = remaining >> 7
    return lengths


def _event(wall_time: float, step: int, values: List[bytes]) -> bytes:
    summary = b"".join(values)
    return b"".join((
        _EVENT_WALL_TIME, _DOUBLE.pack(wall_time), _EVENT_STEP, _varint(step),
        _EVENT_SUMMARY, _varint(len(summary)), summary,
    ))  # fmt: skip
