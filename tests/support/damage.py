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
