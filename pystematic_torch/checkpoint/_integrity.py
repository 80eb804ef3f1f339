"""Checking a checkpoint's bytes against the checksums ``torch.save`` wrote into it.

``torch.save`` writes a zip archive whose every record carries a CRC-32 of its bytes, but
``torch.load`` never compares them: a bit flipped on a failing disk, in a copy or in a
transfer loads silently as a different weight. Checking every record before a checkpoint is
loaded turns that into an error, and lets a run directory fall back to the checkpoint saved
before the damaged one. The check reads the file once more; the load after it then reads
from the page cache (about 0.3 s per GiB on our CI machine: benchmarks/README.md).

A file is checked once per process: the result is kept for as long as the file's identity
(device, inode, size, modification time) stays the same, so finding a run's checkpoint and
loading it cost one check, and a file replaced by a new save is checked again.
"""
import mmap
import pathlib
import struct
import threading
import zipfile
import zlib
from typing import Dict, Optional, Tuple

from ..errors import CheckpointError

_CHUNK = 1 << 20
# A zip record's local header: signature, 22 bytes of fields, then the lengths of the name
# and of the extra field, which the record's bytes follow.
_LOCAL_HEADER = struct.Struct("<4s22xHH")
_Identity = Tuple[int, int, int, int]
_sound: Dict[pathlib.Path, _Identity] = {}
_lock = threading.Lock()


def damage(path: pathlib.Path, structure_only: bool = False) -> Optional[str]:
    """What is wrong with the file's bytes, or None when they match their checksums.

    ``structure_only`` checks the pickle alone (the dict's structure, the metadata, not the
    tensors' bytes): a fraction of the file, cheap enough for every file of a directory.

    None too for what cannot be checked here: files in torch's pre-zip format and records
    saved with ``torch.serialization.set_crc32_options(False)`` carry no checksum, and a
    file that is no zip archive at all (cut short, not a checkpoint) is left to the loader,
    which says what it is.
    """
    path = pathlib.Path(path)
    try:
        identity = _identity(path)
    except OSError:
        return None
    with _lock:
        if _sound.get(path.resolve()) == identity:
            return None
    found = _first_damaged_record(path, structure_only)
    if found is None and not structure_only:
        with _lock:
            _sound[path.resolve()] = identity
    return found


def check(path: pathlib.Path, structure_only: bool = False) -> None:
    """Raise when the file's bytes do not match the checksums written when it was saved.

    Raises:
        CheckpointError: naming the file and the damaged record.
    """
    found = damage(path, structure_only)
    if found is not None:
        raise CheckpointError(
            f"Checkpoint {path} is damaged: {found}. Its bytes changed after it was saved (a "
            "failing disk, an interrupted copy); load an earlier checkpoint, or give the run "
            "directory to resume from the newest undamaged one."
        )


def _first_damaged_record(path: pathlib.Path, structure_only: bool) -> Optional[str]:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError):
        return None
    with archive, open(path, "rb") as file:
        records = [record for record in archive.infolist() if _checked(record, structure_only)]
        if not records:
            return None
        # Mapped, the bytes are checksummed where they lie in the page cache, without a copy
        # (zlib releases the GIL meanwhile).
        with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            for record in records:
                try:
                    matches = _matches_checksum(archive, record, mapped)
                except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
                    return f"its record {record.filename!r} cannot be read ({error})"
                if not matches:
                    return f"its record {record.filename!r} does not match its checksum"
    return None


def _checked(record: zipfile.ZipInfo, structure_only: bool) -> bool:
    if record.CRC == 0 and record.file_size > 0:
        return False  # saved without checksums
    return not structure_only or record.filename.endswith("/data.pkl")


def _matches_checksum(archive: zipfile.ZipFile, record: zipfile.ZipInfo, mapped) -> bool:
    if record.compress_type != zipfile.ZIP_STORED:  # not torch.save's: let zipfile inflate it
        with archive.open(record) as member:
            crc = 0
            while chunk := member.read(_CHUNK):
                crc = zlib.crc32(chunk, crc)
        return crc == record.CRC
    start = record.header_offset
    signature, name_length, extra_length = _LOCAL_HEADER.unpack_from(mapped, start)
    if signature != b"PK\x03\x04":
        raise zipfile.BadZipFile("its local header is damaged")
    data = start + _LOCAL_HEADER.size + name_length + extra_length
    if data + record.compress_size > len(mapped):
        raise EOFError("the file ends inside it")
    with memoryview(mapped) as view:
        return zlib.crc32(view[data:data + record.compress_size]) == record.CRC


def _identity(path: pathlib.Path) -> _Identity:
    stat = path.stat()
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns
