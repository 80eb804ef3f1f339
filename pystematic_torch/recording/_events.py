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

_crc32c: Optional[Callable[[bytes], int]] = None


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
        data = handle.read()
    position, size = 0, len(data)
    while position + 12 <= size:
        header = data[position : position + 8]
        (length,) = _LENGTH.unpack(header)
        (header_crc,) = _CRC.unpack_from(data, position + 8)
        end = position + 12 + length + 4
        if _masked(crc(header)) != header_crc or end > size:
            return
        payload = data[position + 12 : position + 12 + length]
        (payload_crc,) = _CRC.unpack_from(data, end - 4)
        if _masked(crc(payload)) != payload_crc:
            return
        yield payload
        position = end


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
    except OverflowError:  # beyond float32's range: TensorBoard shows it as infinite
        return _FLOAT.pack(math.copysign(math.inf, value))


class ScalarEncoder:
    """Turns runs of recorded scalars into serialised ``Event`` payloads.

    Scalars recorded at the same step within :data:`SHARED_EVENT_SECONDS` of each other go
    into one event (TensorBoard reads them as separate values), which keeps the file small
    and the per-value work low.
    """

    def __init__(self) -> None:
        self._heads: Dict[str, bytes] = {}

    def _head(self, tag: str) -> bytes:
        # Summary.value's key and length, then the Value's tag field and simple_value key:
        # everything of a value but its 4 bytes of float.
        encoded = tag.encode("utf-8")
        value = _VALUE_TAG + _varint(len(encoded)) + encoded + _VALUE_SIMPLE
        head = _SUMMARY_VALUE + _varint(len(value) + 4) + value
        self._heads[tag] = head
        return head

    def payloads(self, items: Sequence[tuple]) -> List[bytes]:
        """``items`` are ``(kind, tag, number, step, wall_time)`` tuples in recording order."""
        heads, head_of = self._heads, self._head
        pack, float32 = _FLOAT.pack, _float32
        events: List[bytes] = []
        values: List[bytes] = []
        step = wall = limit = None
        for _kind, tag, number, item_step, item_wall in items:
            if item_step != step or item_wall > limit or len(values) >= _MAX_VALUES_PER_EVENT:
                if values:
                    events.append(_event(wall, step, values))
                    values = []
                step, wall = item_step, item_wall
                limit = item_wall + SHARED_EVENT_SECONDS
            head = heads.get(tag) or head_of(tag)
            try:
                values.append(head + pack(number))
            except OverflowError:
                values.append(head + float32(number))
        if values:
            events.append(_event(wall, step, values))
        return events


def _event(wall_time: float, step: int, values: List[bytes]) -> bytes:
    summary = b"".join(values)
    return b"".join((
        _EVENT_WALL_TIME, _DOUBLE.pack(wall_time), _EVENT_STEP, _varint(step),
        _EVENT_SUMMARY, _varint(len(summary)), summary,
    ))  # fmt: skip


def serialise(event: Any) -> bytes:
    """A protobuf ``Event`` as a payload."""
    return event.SerializeToString()
