"""Damaging a checkpoint the way a failing disk or a bad copy does: bytes changed in place."""
import pathlib
import struct
import zipfile

# A zip local file header: signature, 22 bytes of fields, then the name's and the extra
# field's lengths, then the name, the extra field and the record's bytes.
_LOCAL_HEADER = struct.Struct("<4s22xHH")


def flip_a_bit_in(path: pathlib.Path, record: str = "data/0") -> None:
    """Flip one bit in the middle of the bytes of the record whose name ends in ``record``
    (``data/0``: the first tensor's data; ``data.pkl``: the pickled structure)."""
    with zipfile.ZipFile(path) as archive:
        (info,) = [item for item in archive.infolist() if item.filename.endswith(record)]
    with open(path, "r+b") as file:
        file.seek(info.header_offset)
        signature, name_length, extra_length = _LOCAL_HEADER.unpack(file.read(30))
        assert signature == b"PK\x03\x04"
        position = info.header_offset + 30 + name_length + extra_length + info.file_size // 2
        file.seek(position)
        byte = file.read(1)[0]
        file.seek(position)
        file.write(bytes([byte ^ 0x10]))


def damage_the_index_entry_of(path: pathlib.Path, record: str, field: str) -> None:
    """Change one field of a record's entry in the zip index at the end of the file, which
    carries no checksum: ``"method"`` makes the record look deflated, ``"offset"`` points
    it past the end of the file."""
    data = bytearray(path.read_bytes())
    end = data.rindex(b"PK\x05\x06")  # the end-of-index record
    (position,) = struct.unpack_from("<I", data, end + 16)
    while data[position:position + 4] == b"PK\x01\x02":
        name_length, extra_length, comment_length = struct.unpack_from("<HHH", data, position + 28)
        name = bytes(data[position + 46:position + 46 + name_length]).decode()
        if name.endswith(record):
            if field == "method":
                struct.pack_into("<H", data, position + 10, 8)
            else:
                struct.pack_into("<I", data, position + 42, len(data) + 100)
            path.write_bytes(bytes(data))
            return
        position += 46 + name_length + extra_length + comment_length
    raise AssertionError(f"no record ending in {record!r} in {path}")
