"""Rewriting a run's event files on resume, so they hold exactly the resumed run's history.

TensorBoard has no way to say "forget the third value of step 96": its ``SessionLog.START``
event drops every value at a step and later, including those recorded before the
checkpoint, and its default data server ignores it. So the history is rewritten: the
events of every earlier file, filtered by a :class:`ResumePoint`, go into one new file, and
the old files are removed.

A kill can come at any moment, so the rewrite goes through two names TensorBoard does not
read (it reads files with ``tfevents`` in their name):

1. the filtered history is written to :data:`WRITING`, flushed and synced;
2. it is renamed to :data:`WRITTEN` (atomic): from here on it holds everything the old
   files held that the resumed run keeps;
3. the old files are deleted, and :data:`WRITTEN` is renamed to a new event file name.

A kill during 1 leaves the old files untouched (the partial file is deleted on the next
open); a kill during 3 leaves :data:`WRITTEN`, and the next open finishes step 3.
"""
import os
from itertools import islice
from pathlib import Path
from typing import Callable, Iterable, List, Optional, Sequence

from . import _events
from ._backend import ResumePoint

WRITING = ".pystematic-torch-events.writing"
WRITTEN = ".pystematic-torch-events.written"
#: Ends the name of every event file the TensorBoard backend writes, so it rewrites only its
#: own files and leaves those of other writers in the same directory alone.
SUFFIX = ".pystematic-torch"


def own_files(directory: Path) -> List[Path]:
    """The backend's event files in ``directory``, in the order TensorBoard reads them."""
    return sorted(p for p in directory.glob(f"events.out.tfevents.*{SUFFIX}") if p.is_file())


def recover(directory: Path, new_name: Callable[[], Path]) -> None:
    """Finish or undo a rewrite that a kill interrupted (see the module's steps)."""
    writing, written = directory / WRITING, directory / WRITTEN
    if written.exists():
        _replace_own_files(directory, written, new_name())
    if writing.exists():
        writing.unlink()


def rewrite(
    directory: Path,
    sources: Sequence[Path],
    point: ResumePoint,
    header: bytes,
    target: Path,
) -> None:
    """Replace the backend's files in ``directory`` by ``target`` holding the kept history.

    Args:
        directory: The backend's own directory.
        sources: Event files to take the history from, in reading order: the directory's
            own files, or another run directory's files followed by them.
        point: Decides which values are kept.
        header: The framed records every new file starts with.
        target: The new event file's path.
    """
    writing = directory / WRITING
    keep = point.keeper()
    with open(writing, "wb") as out:
        out.write(header)
        for path in sources:
            payloads = _kept_payloads(path, keep)
            while True:  # a few thousand events at a time: files of images can be large
                chunk = list(islice(payloads, 4096))
                if not chunk:
                    break
                out.write(_events.frame(chunk))
        out.flush()
        os.fsync(out.fileno())
    os.replace(writing, directory / WRITTEN)
    sync_directory(directory)
    _replace_own_files(directory, directory / WRITTEN, target)


def _replace_own_files(directory: Path, written: Path, target: Path) -> None:
    for path in own_files(directory):
        path.unlink()
    os.replace(written, target)
    sync_directory(directory)


def sync_directory(directory: Path) -> None:
    """Make renames and deletions in ``directory`` durable."""
    handle = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def _kept_payloads(path: Path, keep: Callable[[str, str, int], bool]) -> Iterable[bytes]:
    from tensorboard.compat.proto import event_pb2

    for payload in _events.read_records(path):
        event = event_pb2.Event.FromString(payload)
        if not event.HasField("summary"):
            continue  # file versions and session logs: each file writes its own
        values = event.summary.value
        kept = [v for v in values if _kept(v, event.step, keep)]
        if len(kept) == len(values):
            yield payload
        elif kept:
            del values[:]
            values.extend(kept)
            yield event.SerializeToString()


def _kept(value, step: int, keep: Callable[[str, str, int], bool]) -> bool:
    kind, tag = _kind_and_tag(value)
    if kind is None:
        return False
    return keep(kind, tag, step)


def _kind_and_tag(value) -> tuple:
    """The recorder's kind of a summary value and the tag it counts under; None to drop."""
    if value.HasField("simple_value"):
        return "scalar", value.tag
    if value.HasField("image"):
        return "image", value.tag
    if value.HasField("histo"):
        return "histogram", value.tag
    plugin = value.metadata.plugin_data.plugin_name
    if plugin == "hparams":
        # A session's start belongs to the run's history; its end does not (the run goes
        # on), and experiment descriptions are never written (see _hparams).
        return ("params", "") if value.tag.endswith("session_start_info") else (None, None)
    if plugin == "text":
        return "text", value.tag
    return "other", value.tag


def source_files(point: ResumePoint, directory: Path, has_own_history: bool) -> List[Path]:
    """The event files a resume at ``point`` takes the history from."""
    own = own_files(directory)
    source: Optional[Path] = None if has_own_history else point.source_for(directory)
    return (own_files(source) if source is not None else []) + own
