"""Plain files: ``scalars.csv``, ``text.csv`` and PNG images, readable without TensorBoard."""
import csv
import os
import re
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from ..errors import RecorderError
from ._backend import RecordedImage, RecorderBackend

__all__ = ["FileBackend"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_HEADERS = {"scalars.csv": ("step", "tag", "value"), "text.csv": ("step", "tag", "text")}


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

    def open(self, output_dir: Optional[Path]) -> None:
        self._dir = Path(output_dir)
        self._csv("scalars.csv")

    def scalar(self, tag: str, value: float, step: int) -> None:
        self._files["scalars.csv"][1].writerow((step, tag, value))

    def text(self, tag: str, text: str, step: int) -> None:
        self._csv("text.csv")[1].writerow((step, tag, text))

    def image(self, tag: str, image: RecordedImage, step: int) -> None:
        parts = [_UNSAFE.sub("_", part) for part in tag.split("/")]
        folder = self._dir.joinpath("images", *(p if p.strip(".") else "_" for p in parts))
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{step:08d}.png").write_bytes(image.png)

    def resume(self, step: int) -> None:
        for name in _HEADERS:
            if (self._dir / name).exists():
                self._drop_rows_from(name, step)

    def flush(self) -> None:
        for handle, _ in self._files.values():
            handle.flush()

    def close(self) -> None:
        for handle, _ in self._files.values():
            handle.close()
        self._files.clear()

    def _csv(self, name: str) -> Tuple[Any, Any]:
        if name not in self._files:
            path = self._dir / name
            fresh = not path.exists() or path.stat().st_size == 0
            if not fresh:
                _check_and_repair(path, _HEADERS[name])
            handle = open(path, "a", newline="", encoding="utf-8")
            writer = csv.writer(handle)
            if fresh:
                writer.writerow(_HEADERS[name])
            self._files[name] = (handle, writer)
        return self._files[name]

    def _drop_rows_from(self, name: str, step: int) -> None:
        """Rewrite ``name`` without the rows at ``step`` or later (an abandoned future)."""
        if name in self._files:
            self._files.pop(name)[0].close()
        path = self._dir / name
        _check_and_repair(path, _HEADERS[name])
        with open(path, newline="", encoding="utf-8") as source:
            rows = list(csv.reader(source))
        kept = [rows[0]] + [row for row in rows[1:] if int(row[0]) < step]
        if len(kept) != len(rows):
            temporary = path.with_name(path.name + ".tmp")
            with open(temporary, "w", newline="", encoding="utf-8") as target:
                csv.writer(target).writerows(kept)
            os.replace(temporary, path)
        self._csv(name)


def _check_and_repair(path: Path, header: Tuple[str, ...]) -> None:
    """Check an existing CSV's header and cut off a last row left half-written by a crash."""
    with open(path, "rb+") as handle:
        first = handle.readline().rstrip(b"\r\n").decode("utf-8", "replace")
        if first != ",".join(header):
            raise RecorderError(
                f"{path} exists with the header {first!r}, not {','.join(header)!r}; move it "
                "away or record into another output_dir."
            )
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        handle.seek(max(0, size - 1))
        if handle.read(1) != b"\n":
            data_end = _last_newline(handle, size)
            handle.truncate(data_end)


def _last_newline(handle: Any, size: int) -> int:
    block = 4096
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
