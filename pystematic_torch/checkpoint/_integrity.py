"""Checking a checkpoint's bytes against the checksums ``torch.save`` wrote into it.

``torch.save`` writes a zip archive whose every record carries a CRC-32 of its bytes, but
``torch.load`` never compares them: a bit flipped on a failing disk, in a copy or in a
transfer loads silently as a different weight. Checking every record before a checkpoint is
loaded turns that into an error, and lets a run directory fall back to the checkpoint saved
before the damaged one. The check reads the file once more; the load after it then reads
from the page cache (about 0.4 s per GiB on our CI machine: benchmarks/README.md).

The bytes are read, not mapped: a mapped file that another program cuts short while it is
checked kills the process with SIGBUS. The caller may pass the open file it then loads
from, so a save that replaces the file meanwhile cannot make the check and the load see two
different files.

A file is checked once per process: the result is kept for as long as the file's identity
(device, inode, size, modification time) stays the same, so finding a run's checkpoint and
loading it cost one check, and a file replaced by a new save is checked again.
"""
import os
import pathlib
import struct
import threading
import zipfile
import zlib
from typing import BinaryIO, Dict, Optional, Tuple

from ..errors import CheckpointError

_CHUNK = 4 << 20
# A zip record's local header: signature, 22 bytes of fields, then the lengths of the name
# and of the extra field, which the record's bytes follow.
_LOCAL_HEADER = struct.Struct("<4s22xHH")
_Identity = Tuple[int, int, int, int]
_sound: Dict[pathlib.Path, _Identity] = {}
_lock = threading.Lock()


class DamagedCheckpoint(CheckpointError):
    """A checkpoint whose bytes do not match the checksums written when it was saved."""

    def __init__(self, path: pathlib.Path, damage: str) -> None:
        super().__init__(
            f"Checkpoint {path} is damaged: {damage}. Its bytes changed after it was saved (a "
            "failing disk, an interrupted copy); load an earlier checkpoint, or give the run "
            "directory to resume from the newest undamaged one."
        )
        #: What is wrong, e.g. "its record 'archive/data/0' does not match its checksum".
        self.damage = damage


def damage(path: pathlib.Path, structure_only: bool = False,
           file: Optional[BinaryIO] = None) -> Optional[str]:  # fmt: skip
    """What is wrong with the file's bytes, or None when they match their checksums.

    Args:
        path: The checkpoint file.
        structure_only: Check the pickle alone (the dict's structure and the metadata, not
            the tensors' bytes): a fraction of the file, cheap enough for every file of a
            directory.
        file: ``path`` opened for reading, unbuffered; the check reads through it.

    None too for what cannot be checked here: files in torch's pre-zip format and records
    saved with ``torch.serialization.set_crc32_options(False)`` carry no checksum, and a
    file that is no zip archive at all (cut short, not a checkpoint) is left to the loader,
    which says what it is.
    """
    path = pathlib.Path(path)
    if file is None:
        try:
            with open(path, "rb", buffering=0) as opened:
                return damage(path, structure_only, opened)
        except OSError:
            return None
    stat = os.fstat(file.fileno())
    identity = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
    key = path.resolve()
    with _lock:
        if _sound.get(key) == identity:
            return None
    found = _first_damaged_record(file, structure_only)
    if found is None and not structure_only:
        with _lock:
            _sound[key] = identity
    return found


def carries_checksums(path: pathlib.Path) -> bool:
    """Whether the file is a zip archive with checksums to check (torch.save's default)."""
    try:
        with zipfile.ZipFile(path) as archive:
            records = archive.infolist()
    except Exception:  # noqa: BLE001 - any archive zipfile cannot read has none to check
        return False
    return any(_checked(record, False) and record.file_size for record in records)


def check(path: pathlib.Path, structure_only: bool = False,
          file: Optional[BinaryIO] = None) -> None:  # fmt: skip
    """Raise when the file's bytes do not match the checksums written when it was saved.

    Raises:
        DamagedCheckpoint: naming the file and the damaged record.
    """
    found = damage(path, structure_only, file)
    if found is not None:
        raise DamagedCheckpoint(path, found)


def _first_damaged_record(file: BinaryIO, structure_only: bool) -> Optional[str]:
    try:
        archive = zipfile.ZipFile(file)  # reads the index through the caller's open file
    except Exception:  # noqa: BLE001 - not an archive zipfile reads: the loader says what
        return None
    with archive:
        records = [record for record in archive.infolist() if _checked(record, structure_only)]
        size = os.fstat(file.fileno()).st_size
        buffer = memoryview(bytearray(_CHUNK))
        for record in records:
            try:
                matches = _matches_checksum(archive, file, record, size, buffer)
            except Exception as error:  # noqa: BLE001 - a damaged index can fail anywhere
                return f"its record {record.filename!r} cannot be read ({error})"
            if not matches:
                return f"its record {record.filename!r} does not match its checksum"
    return None


def _checked(record: zipfile.ZipInfo, structure_only: bool) -> bool:
    if record.CRC == 0 and record.file_size > 0:
        return False  # saved without checksums
    return not structure_only or record.filename.endswith("/data.pkl")


def _matches_checksum(archive: zipfile.ZipFile, file: BinaryIO, record: zipfile.ZipInfo,
                      size: int, buffer: memoryview) -> bool:  # fmt: skip
    if record.compress_type != zipfile.ZIP_STORED:  # not torch.save's: let zipfile inflate it
        with archive.open(record) as member:
            crc = 0
            while chunk := member.read(_CHUNK):
                crc = zlib.crc32(chunk, crc)
        return crc == record.CRC
    file.seek(record.header_offset)
    header = file.read(_LOCAL_HEADER.size)
    if len(header) < _LOCAL_HEADER.size:
        raise EOFError("the file ends inside it")
    signature, name_length, extra_length = _LOCAL_HEADER.unpack(header)
    if signature != b"PK\x03\x04":
        raise zipfile.BadZipFile("its local header is damaged")
    position = record.header_offset + _LOCAL_HEADER.size + name_length + extra_length
    end = position + record.compress_size
    if end > size:
        raise EOFError("the file ends inside it")
    file.seek(position)
    crc = 0
    while position < end:
        count = file.readinto(buffer[: min(len(buffer), end - position)])
        if not count:
            raise EOFError("the file ends inside it")
        crc = zlib.crc32(buffer[:count], crc)
        position += count
    return crc == record.CRC
