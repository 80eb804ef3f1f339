"""A backend that fails on a full disk closes its files: nothing it could not write lands later.

A buffered file whose flush failed still holds the bytes; left open, it writes them when it
is flushed again or collected, after another recorder has repaired and appended to the
same file. Each test fills the disk until the backends fail, frees space, records with a
new recorder, and then checks that the failed backends' files are closed and that the
files on disk no longer change.
"""
import csv
import errno
import gc
import io
import json
import os
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest
from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

from pystematic_torch import RecorderError
from pystematic_torch.recording import Recorder, _files, _hdf5, _tensorboard

# The disk fills up (here: a file size limit, which fails writes with EFBIG as a full disk
# fails them with ENOSPC) until both file backends have failed, and the recorder is closed;
# then space is freed and a new recorder appends to the same files. What the first
# recorder left behind is collected only once the parent has looked at the files.
FILLING_THE_DISK = textwrap.dedent("""
    import gc, json, os, resource, signal, sys
    import psutil
    from pystematic_torch import RecorderError
    from pystematic_torch.recording import Recorder

    directory = os.path.realpath(sys.argv[1])
    gc.disable()
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
    failed = Recorder(directory, flush_secs=3600)
    reported = ""
    for step in range(100_000):
        try:
            failed.scalar("loss", float(step))
            failed.text("note", f"step {step}\\nsecond line")
            failed.step()
            if step % 100 == 99:
                failed.flush()
        except RecorderError as error:
            reported += str(error)
        if "'files'" in reported and "'tensorboard'" in reported:
            break
    try:
        failed.close()
    except RecorderError as error:
        reported += str(error)
    still_open = [f.path for f in psutil.Process().open_files() if f.path.startswith(directory)]
    print(json.dumps({"reported": reported, "still_open": still_open}), flush=True)
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    with Recorder(directory) as recorder:
        recorder.count = 1_000_000
        for step in range(3):
            recorder.scalar("loss", float(step))
            recorder.text("note", "after restart")
            recorder.step()
    print("CLOSED", flush=True)
    sys.stdin.readline()
    del failed
    gc.collect()
""")


@pytest.mark.timeout(180)
def test_backends_failed_on_a_full_disk_close_their_files_and_write_nothing_later(tmp_path):
    child = subprocess.Popen(
        [sys.executable, "-c", FILLING_THE_DISK, str(tmp_path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        failed = child.stdout.readline()
        assert child.stdout.readline() == "CLOSED\n", failed + child.stderr.read()
        files = sorted(p for p in tmp_path.iterdir() if p.is_file())
        closed = {path: path.read_bytes() for path in files}
        child.stdin.write("\n")
        child.stdin.close()
        assert child.wait(timeout=60) == 0, child.stderr.read()
    finally:
        child.kill()
        child.wait(timeout=60)
        child.stdout.close()
        child.stderr.close()
    failed = json.loads(failed)
    assert "Recorder backend 'files' failed" in failed["reported"]
    assert "Recorder backend 'tensorboard' failed" in failed["reported"]
    assert "File too large" in failed["reported"]
    assert failed["still_open"] == []
    assert {path: path.read_bytes() for path in files} == closed  # nothing written later

    with open(tmp_path / "scalars.csv", newline="", encoding="utf-8") as handle:
        steps = [int(step) for step, tag, value in list(csv.reader(handle))[1:]]
    assert steps[-3:] == [1_000_000, 1_000_001, 1_000_002]
    assert steps[:-3] == list(range(len(steps) - 3)) and len(steps) > 1000  # whole, in order
    with open(tmp_path / "text.csv", newline="", encoding="utf-8") as handle:
        texts = list(csv.reader(handle))[1:]
    assert texts[-3:] == [[str(s), "note", "after restart"] for s in range(1_000_000, 1_000_003)]
    assert texts[:-3] == [[str(s), "note", f"step {s}\nsecond line"] for s in range(len(texts) - 3)]

    loss = [(event.step, value.simple_value)
            for path in sorted(tmp_path.glob("*tfevents*"))
            for event in LegacyEventFileLoader(str(path)).Load()
            for value in event.summary.value if value.tag == "loss"]  # fmt: skip
    assert loss[-3:] == [(1_000_000 + s, float(s)) for s in range(3)]
    assert loss[:-3] == [(s, float(s)) for s in range(len(loss) - 3)] and len(loss) > 100


class FullDisk(io.FileIO):
    """A file whose writes fail as on a full disk while :attr:`full` is set."""

    full = False
    opened = []

    def __init__(self, *args):
        super().__init__(*args)
        FullDisk.opened.append(self)

    def write(self, data):
        if FullDisk.full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(data)


def open_on_full_disk(path, mode="r", **kwargs):
    """``open``, but files opened for appending are :class:`FullDisk` files."""
    if mode not in ("a", "ab"):
        return open(path, mode, **kwargs)
    buffered = io.BufferedWriter(FullDisk(path, "a"))
    return buffered if mode == "ab" else io.TextIOWrapper(buffered, **kwargs)


@pytest.mark.parametrize("backend, module", [("files", _files), ("tensorboard", _tensorboard)])
def test_a_backend_failed_on_a_full_disk_keeps_nothing_to_write_later(
    tmp_path, monkeypatch, backend, module
):
    monkeypatch.setattr(module, "open", open_on_full_disk, raising=False)
    monkeypatch.setattr(FullDisk, "opened", [])
    choice = {"file": backend == "files", "tensorboard": backend == "tensorboard"}
    recorder = Recorder(tmp_path, **choice)
    recorder.scalar("loss", 1.0)
    recorder.step()
    recorder.flush()
    monkeypatch.setattr(FullDisk, "full", True)
    recorder.scalar("loss", 2.0)
    recorder.step()
    with pytest.raises(RecorderError, match=rf"'{backend}' failed flushing: OSError: \[Errno 28\]"):
        recorder.flush()
    recorder.close()
    assert FullDisk.opened and all(file.closed for file in FullDisk.opened)

    monkeypatch.setattr(FullDisk, "full", False)  # space freed
    with Recorder(tmp_path, **choice) as recorder:
        recorder.count = 10
        recorder.scalar("loss", 3.0)
    files = sorted(p for p in tmp_path.iterdir() if p.is_file())
    closed = {path: path.read_bytes() for path in files}
    del recorder
    gc.collect()
    assert {path: path.read_bytes() for path in files} == closed
    if backend == "files":
        with open(tmp_path / "scalars.csv", newline="", encoding="utf-8") as handle:
            assert list(csv.reader(handle))[1:] == [["0", "loss", "1.0"], ["10", "loss", "3.0"]]
    else:
        loss = [(event.step, value.simple_value)
                for path in sorted(tmp_path.glob("*tfevents*"))
                for event in LegacyEventFileLoader(str(path)).Load()
                for value in event.summary.value if value.tag == "loss"]  # fmt: skip
        assert loss == [(0, 1.0), (10, 3.0)]


def test_the_hdf5_backend_failed_on_a_full_disk_closes_its_file(tmp_path, monkeypatch):
    recorder = Recorder(tmp_path, tensorboard=False, file=False, hdf5=True)
    recorder.scalar("loss", 1.0)
    recorder.flush()
    (backend,) = recorder._writer._backends
    handle = backend._file

    def full_disk(handle):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_hdf5._hdf5_durable, "flush", full_disk)
    recorder.scalar("loss", 2.0)
    with pytest.raises(RecorderError, match=r"'hdf5' failed flushing: OSError: \[Errno 28\]"):
        recorder.flush()
    recorder.close()
    assert not handle.id.valid  # closed now, not by the garbage collector some day

    monkeypatch.undo()
    with Recorder(tmp_path, tensorboard=False, file=False, hdf5=True) as recorder:
        recorder.count = 10
        recorder.scalar("loss", 3.0)
    with h5py.File(tmp_path / "recordings.h5", "r") as f:
        assert f["loss.steps"][:].tolist()[-1] == 10 and f["loss"][:].tolist()[-1] == 3.0


class HalfWritten(io.FileIO):
    """A file for writing that takes half of the first write, then fails as a full disk."""

    def write(self, data):
        super().write(bytes(data)[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")


def test_an_image_the_disk_has_no_room_for_leaves_no_torn_png(tmp_path, monkeypatch):
    def open_half_written(path, mode="r", **kwargs):
        return HalfWritten(path, "w") if mode == "wb" else open(path, mode, **kwargs)

    with Recorder(tmp_path, tensorboard=False) as recorder:
        recorder.image("sample", np.zeros((4, 4)))
        recorder.flush()
        monkeypatch.setattr(_files, "open", open_half_written, raising=False)
        recorder.step()
        recorder.image("sample", np.ones((4, 4)))
        with pytest.raises(RecorderError, match=r"'files' failed .*Errno 28"):
            recorder.flush()
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert files == ["images/sample/00000000.png", "scalars.csv"]
