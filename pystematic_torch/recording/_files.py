"""Plain files: ``scalars.csv``, ``text.csv`` and PNG images, readable without TensorBoard."""
import csv
import os
import re
import shutil
from operator import itemgetter
from pathlib import Path
from typing import Any, Dict, List, Optional, Set, Tuple

from ._backend import RecordedImage, RecorderBackend, ResumePoint
from ._csv_repair import check_and_repair
from ._event_history import sync_directory
from ._file_handles import sync_and_close

__all__ = ["FileBackend"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_HEADERS = {"scalars.csv": ("step", "tag", "value"), "text.csv": ("step", "tag", "text")}
_KINDS = {"scalars.csv": "scalar", "text.csv": "text"}
_NEEDS_QUOTES = re.compile(r'[,"\r\n]')
_TAG, _VALUE, _STEP = itemgetter(1), itemgetter(2), itemgetter(3)


class FileBackend(RecorderBackend):
    """Writes ``scalars.csv`` (columns ``step,tag,value``), ``text.csv`` and PNG images.

    The CSV files use standard quoting, so tags and texts with commas, quotes or newlines
    read back unchanged with any CSV reader. An existing file is appended to, keeping its
    single header. Images and figures go to ``images/<tag>/<step>.png``, with the step
    zero-padded to 8 digits so the files sort in order; a tag's ``/`` makes
    subdirectories and other characters outside ``A-Z a-z 0-9 . _ -`` become ``_``.
    """

    name = "files"

    def __init__(self) -> None:
        self._dir: Optional[Path] = None
        self._files: Dict[str, Tuple[Any, Any]] = {}
        self._history: Dict[str, bool] = {}
        self._plain_tags: Set[str] = set()
        # Images written since the last flush, which syncs them.
        self._unsynced: Set[Path] = set()

    def open(self, output_dir: Optional[Path]) -> None:
        self._dir = Path(output_dir)
        # Repaired before anything is judged by them: a file holding only its header and a
        # row cut short has no history.
        for name, header in _HEADERS.items():
            path = self._dir / name
            if path.exists() and path.stat().st_size > 0:
                check_and_repair(path, header)
        self._history = {name: _has_rows(self._dir / name) for name in _HEADERS}
        self._history["images"] = (self._dir / "images").is_dir()
        self._csv("scalars.csv")

    def _scalar_run(self, run: List[tuple]) -> None:
        # One %-format over the whole run, so the per-value work (repr of the number, as
        # the csv module writes it) happens in C.
        fields: List[Any] = [None] * (3 * len(run))
        fields[0::3] = map(_STEP, run)
        fields[1::3] = tags = list(map(_TAG, run))
        fields[2::3] = map(_VALUE, run)
        unseen = set(tags) - self._plain_tags
        if unseen:
            self._quote_tags(unseen, fields)
        self._files["scalars.csv"][0].write("%s,%s,%r\r\n" * len(run) % tuple(fields))

    def scalar(self, tag: str, value: float, step: int) -> None:
        self._scalar_run([(0, tag, value, step, self.wall_time)])

    def _quote_tags(self, tags: Set[str], fields: List[Any]) -> None:
        """Quote the tags in ``fields`` that need it; remember the ones that do not."""
        needing = {tag for tag in tags if _NEEDS_QUOTES.search(tag)}
        self._plain_tags |= tags - needing
        if needing:
            fields[1::3] = [_quote(tag) if tag in needing else tag for tag in fields[1::3]]

    def text(self, tag: str, text: str, step: int) -> None:
        self._csv("text.csv")[1].writerow((step, tag, text))

    def image(self, tag: str, image: RecordedImage, step: int) -> None:
        folder = self._dir / "images" / _image_folder(tag)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{step:08d}.png"
        _write_whole(path, image.png)
        self._unsynced.add(path)

    def resume(self, point: ResumePoint) -> None:
        for name in _HEADERS:
            source = None if self._history[name] else point.source_for(self._dir)
            source_path = source / name if source is not None else None
            if (self._dir / name).exists() or (source_path and source_path.exists()):
                self._rewrite(name, point, source_path)
        self._resume_images(point)

    def flush(self) -> None:
        for handle, _ in self._files.values():
            handle.flush()
            os.fsync(handle.fileno())
        _sync_files(self._unsynced)
        self._unsynced.clear()

    def close(self) -> None:
        handles = [handle for handle, _ in self._files.values()]
        self._files.clear()
        try:
            _sync_files(self._unsynced)
            self._unsynced.clear()
        finally:
            sync_and_close(handles)

    def _csv(self, name: str) -> Tuple[Any, Any]:
        if name not in self._files:
            path = self._dir / name
            # Repaired in open(); a crash can leave no more than a part of the header.
            fresh = not path.exists() or path.stat().st_size == 0
            handle = open(path, "a", newline="", encoding="utf-8")
            writer = csv.writer(handle)
            if fresh:
                writer.writerow(_HEADERS[name])
            self._files[name] = (handle, writer)
        return self._files[name]

    def _rewrite(self, name: str, point: ResumePoint, source: Optional[Path]) -> None:
        """Rewrite ``name`` to hold the resumed run's history (source rows, then own rows)."""
        if name in self._files:
            sync_and_close([self._files.pop(name)[0]])
        path = self._dir / name
        rows: List[List[str]] = []
        for origin in (source, path):
            if origin is not None and origin.exists():
                if origin is source:  # the own file was repaired in open()
                    check_and_repair(origin, _HEADERS[name])
                with open(origin, newline="", encoding="utf-8") as handle:
                    rows.extend(list(csv.reader(handle))[1:])
        keep, kind = point.keeper(), _KINDS[name]
        kept = [row for row in rows if keep(kind, row[1], int(row[0]))]
        temporary = path.with_name(path.name + ".tmp")
        with open(temporary, "w", newline="", encoding="utf-8") as target:
            csv.writer(target).writerows([_HEADERS[name], *kept])
            target.flush()
            os.fsync(target.fileno())
        os.replace(temporary, path)
        sync_directory(self._dir)
        self._history[name] = True
        self._csv(name)

    def _resume_images(self, point: ResumePoint) -> None:
        recorded = (point.recorded or {}).get("image", {})
        kept_tags = {_image_folder(tag) for tag, n in recorded.items() if n > 0}
        own = self._dir / "images"
        source = None if self._history["images"] else point.source_for(self._dir)
        if source is not None and (source / "images").is_dir():
            # Copied into a folder of another name that becomes ``images`` once complete:
            # a kill in the middle leaves no ``images``, and the next resume copies again.
            copying = self._dir / ".images.copying"
            shutil.rmtree(copying, ignore_errors=True)
            copied = []
            for png, folder, step in _pngs(source / "images"):
                if step < point.step or (step == point.step and folder in kept_tags):
                    destination = copying / png.relative_to(source / "images")
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(png, destination)
                    copied.append(destination)
            _sync_files(copied)
            if copied and not own.exists():
                os.replace(copying, own)
                sync_directory(self._dir)
            elif copied:  # images were recorded before the resume: merged into them
                for destination in copied:
                    target = own / destination.relative_to(copying)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(destination, target)
            shutil.rmtree(copying, ignore_errors=True)
            return
        if own.is_dir():
            for png, folder, step in _pngs(own):
                if step > point.step or (step == point.step and folder not in kept_tags):
                    png.unlink()


def _write_whole(path: Path, data: bytes) -> None:
    """Write ``path`` under another name first: a kill or a full disk leaves no torn file."""
    partial = path.with_name(f".{path.name}.partial")
    try:
        with open(partial, "wb") as handle:
            handle.write(data)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def _sync_files(paths) -> None:
    """fsync every file in ``paths`` and then each of their folders (new names in them)."""
    synced = []
    for path in paths:
        try:
            handle = os.open(path, os.O_RDONLY)
        except FileNotFoundError:  # deleted since (a resume drops abandoned images)
            continue
        try:
            os.fsync(handle)
        finally:
            os.close(handle)
        synced.append(path)
    for folder in {path.parent for path in synced}:
        sync_directory(folder)


def _pngs(root: Path):
    """``(path, tag folder, step)`` of every recorded image below ``root``."""
    for png in root.rglob("*.png"):
        if png.stem.isdigit():
            yield png, png.parent.relative_to(root), int(png.stem)


def _image_folder(tag: str) -> Path:
    parts = [_UNSAFE.sub("_", part) for part in tag.split("/")]
    return Path(*(p if p.strip(".") else "_" for p in parts))


def _quote(field: str) -> str:
    """A field that needs quotes, as the csv module's default (minimal) quoting writes it."""
    return '"' + field.replace('"', '""') + '"'


def _has_rows(path: Path) -> bool:
    if not path.exists():
        return False
    with open(path, "rb") as handle:
        handle.readline()
        return bool(handle.read(1))
