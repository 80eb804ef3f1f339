"""A run SIGKILLed at any moment keeps every value recorded before its last checkpoint.

Each test runs a real process that records without pause (Recorder with TensorBoard, CSV
and HDF5, and an HDF5Writer beside it) and makes its recordings durable every 40 steps, as
``save_checkpoint`` does, printing a marker after each. The test kills it right after a
marker, while it goes on recording, and then reads the files with their own readers.
Files cut where a kill can cut them (a CSV inside a quoted field) are also written by hand.
"""
import csv
import io
import signal
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest
from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

from pystematic_torch.data import HDF5Dataset
from pystematic_torch.recording import Recorder, _csv_repair

RECORDING_FOREVER = textwrap.dedent("""
    import sys
    import numpy as np
    from pystematic_torch import _session
    from pystematic_torch.data import HDF5Writer
    from pystematic_torch.recording import Recorder

    directory = sys.argv[1]
    recorder = Recorder(directory, hdf5=True, flush_secs=float(sys.argv[2]))
    writer = HDF5Writer(directory + "/rows.h5", compression=sys.argv[3] or None)
    step = 0
    while True:
        recorder.scalar("loss", float(step))
        recorder.scalar("accuracy", step / 1000)
        recorder.array("weights", np.full(3, step, dtype=np.float32))
        if step % 10 == 0:
            recorder.text("note", f"step {step}")
        writer.append(step=[step], features=np.full((1, 4), step, dtype=np.float32))
        recorder.step()
        step += 1
        if step % 40 == 0:
            _session.make_durable()  # what save_checkpoint does before it writes
            print(f"CHECKPOINT {step}", flush=True)
""")


def complete_csv_rows(path):
    """The CSV's rows up to its last complete line (a kill can cut the last one)."""
    data = path.read_bytes()
    data = data[: data.rfind(b"\n") + 1]
    return list(csv.reader(data.decode("utf-8").splitlines()))


def read_then_kill(script, *args, enough):
    """Run ``script`` with ``args``; SIGKILL it once ``enough(lines)`` holds for the lines it
    has printed. Returns the lines and what it wrote to standard error."""
    child = subprocess.Popen([sys.executable, "-c", script, *map(str, args)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    lines = []
    try:
        for line in child.stdout:
            lines.append(line)
            if enough(lines):
                break
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=60)
        child.stdout.close()
        stderr = child.stderr.read()
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL, stderr
    return lines, stderr


def run_and_kill(directory, markers, flush_secs=5.0, compression=""):
    """Start the recording process, SIGKILL it after ``markers`` markers; the last step."""
    lines, stderr = read_then_kill(
        RECORDING_FOREVER, directory, flush_secs, compression,
        enough=lambda lines: sum(line.startswith("CHECKPOINT") for line in lines) == markers,
    )  # fmt: skip
    checkpoints = [int(line.split()[1]) for line in lines if line.startswith("CHECKPOINT")]
    assert checkpoints, f"the recording process printed no marker: {stderr}"
    return checkpoints[-1]


def check_everything_up_to(directory, durable):
    steps = list(range(durable))

    rows = complete_csv_rows(directory / "scalars.csv")
    assert rows[0] == ["step", "tag", "value"]
    loss = [(int(step), float(value)) for step, tag, value in rows[1:] if tag == "loss"]
    assert loss[:durable] == [(s, float(s)) for s in steps]
    assert [s for s, _ in loss] == list(range(len(loss)))  # no gap, no duplicate

    events = []
    for path in sorted(directory.glob("*tfevents*")):
        events.extend(LegacyEventFileLoader(str(path)).Load())
    tensorboard_loss = [(e.step, v.simple_value) for e in events for v in e.summary.value
                        if v.tag == "loss"]  # fmt: skip
    assert tensorboard_loss[:durable] == [(s, float(s)) for s in steps]
    assert [s for s, _ in tensorboard_loss] == list(range(len(tensorboard_loss)))

    with h5py.File(directory / "recordings.h5", "r") as f:
        recorded = len(f["loss"])
        assert recorded >= durable
        assert f["loss"][:].tolist() == list(map(float, range(recorded)))
        assert f["loss.steps"][:].tolist() == list(range(recorded))
        assert f["weights"][:durable, 0].tolist() == list(map(float, steps))

    rows_file = HDF5Dataset(directory / "rows.h5", keys=["step", "features"])  # equal lengths
    assert len(rows_file) >= durable
    with h5py.File(directory / "rows.h5", "r") as f:
        assert f["step"][:].tolist() == list(range(len(rows_file)))
        assert np.array_equal(f["features"][:, 0], np.arange(len(rows_file)))


@pytest.mark.timeout(180)
@pytest.mark.parametrize("markers", [1, 3, 6])
def test_a_kill_loses_nothing_recorded_before_the_last_checkpoint(tmp_path, markers):
    durable = run_and_kill(tmp_path, markers)
    check_everything_up_to(tmp_path, durable)


@pytest.mark.timeout(180)
def test_compressed_hdf5_writers_and_frequent_flushes_survive_kills_too(tmp_path):
    for attempt in range(3):
        directory = tmp_path / str(attempt)
        durable = run_and_kill(directory, markers=2 + attempt, flush_secs=0.05,
                               compression="gzip")  # fmt: skip
        check_everything_up_to(directory, durable)


# -- the periodic flush, when the loop records without pause --------------------------------

RECORDING_WITHOUT_PAUSE = textwrap.dedent("""
    import sys, time
    from pystematic_torch.recording import Recorder

    recorder = Recorder(sys.argv[1], hdf5=True, flush_secs=0.3, max_pending=10_000)
    step = 0
    while True:
        recorder.scalar("loss", float(step))
        recorder.step()
        step += 1
        if step % 5000 == 0:
            print(f"AT {step} {time.monotonic()}", flush=True)
""")


@pytest.mark.timeout(180)
def test_a_loop_that_never_pauses_still_gets_its_periodic_flushes(tmp_path):
    # The writer never finds the queue empty here; its flushes must come all the same, so a
    # kill loses only the last flush_secs (here 0.3 s, plus the writer's lag behind the
    # loop, at most max_pending values; 2 s of margin for a loaded machine).
    lines, stderr = read_then_kill(
        RECORDING_WITHOUT_PAUSE, tmp_path,
        enough=lambda lines: float(lines[-1].split()[2]) - float(lines[0].split()[2]) > 4.0,
    )  # fmt: skip
    markers = [(int(line.split()[1]), float(line.split()[2])) for line in lines]
    assert markers[-1][1] - markers[0][1] > 4.0, stderr
    last_time = markers[-1][1]
    durable = max(step for step, at in markers if at <= last_time - 2.3)

    with h5py.File(tmp_path / "recordings.h5", "r") as f:
        assert len(f["loss"]) >= durable
        assert f["loss"][:durable].tolist() == list(map(float, range(durable)))
    loss = [int(step) for step, tag, _ in complete_csv_rows(tmp_path / "scalars.csv")[1:]]
    assert loss[:durable] == list(range(durable))


# -- recordings.h5 from the moment it exists --------------------------------------------------

RECORDING_HDF5_ONLY = textwrap.dedent("""
    import sys
    from pystematic_torch.recording import Recorder

    recorder = Recorder(sys.argv[1], tensorboard=False, file=False, hdf5=True, flush_secs=600)
    step = 0
    while True:
        recorder.scalar("loss", float(step))
        recorder.step()
        step += 1
""")


@pytest.mark.timeout(180)
def test_a_kill_before_the_first_flush_leaves_an_hdf5_file_that_opens(tmp_path):
    for attempt in range(3):
        directory = tmp_path / str(attempt)
        child = subprocess.Popen([sys.executable, "-c", RECORDING_HDF5_ONLY, str(directory)],
                                 stderr=subprocess.PIPE)  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while not (directory / "recordings.h5").exists() and child.poll() is None:
                assert time.monotonic() < deadline, "the recorder created no file in 60 s"
                time.sleep(0.001)  # polling for the file; the kill follows at once
            child.send_signal(signal.SIGKILL)
        finally:
            child.kill()
            child.wait(timeout=60)
            stderr = child.stderr.read()
            child.stderr.close()
        assert child.returncode == -signal.SIGKILL, stderr
        with h5py.File(directory / "recordings.h5", "r") as f:
            loss = f["loss"][:].tolist() if "loss" in f else []
        assert loss == list(map(float, range(len(loss))))


def test_an_hdf5_file_that_does_not_open_is_kept_aside_and_recording_goes_on(tmp_path, caplog):
    broken = b"\x89HDF\r\n\x1a\n" + bytes(96)  # a signature, then nothing a reader can use
    for _ in range(2):  # the second is kept beside the first, also in the same second
        (tmp_path / "recordings.h5").write_bytes(broken)
        with Recorder(tmp_path, tensorboard=False, file=False, hdf5=True) as recorder:
            recorder.scalar("loss", 1.0)
    kept = sorted(tmp_path.glob("recordings.h5.unreadable-*"))
    assert len(kept) == 2 and all(path.read_bytes() == broken for path in kept)
    assert "renamed to recordings.h5.unreadable-" in caplog.text
    with h5py.File(tmp_path / "recordings.h5", "r") as f:
        assert f["loss"][:].tolist() == [1.0]


# -- CSV files cut inside a quoted field ------------------------------------------------------


@pytest.mark.parametrize(
    "name, torn_row, cut_after",
    [
        ("text.csv", (2, "notes", "line 1\nline 2"), "line 1\nli"),  # inside, after an LF
        ("text.csv", (2, "notes", 'a "b",\r\nc'), 'a ""b"",\r\n'),  # ends in CRLF, inside
        ("text.csv", (2, "notes", "x\ny"), 'x\ny"\r'),  # CRLF cut after its CR, outside
        ("scalars.csv", (2, 'eval/"top,1"\nof 5', 0.5), 'eval/""top,1""\n'),  # a quoted tag
    ],
)
def test_a_row_cut_inside_a_quoted_field_is_cut_off_on_append(tmp_path, name, torn_row, cut_after):
    header = {"text.csv": ["step", "tag", "text"], "scalars.csv": ["step", "tag", "value"]}[name]
    whole_rows = [header, ["0", "notes", 'first\n"quoted",\nlast'], ["1", "a,b", "plain"]]
    out = io.StringIO(newline="")
    csv.writer(out).writerows([*whole_rows, torn_row])
    written = out.getvalue()
    start = written.index(f"\r\n{torn_row[0]},")
    (tmp_path / name).write_bytes(written[: written.index(cut_after, start) + len(cut_after)]
                                  .encode())  # fmt: skip
    with Recorder(tmp_path, tensorboard=False) as recorder:
        recorder.count = 5
        recorder.text("notes", "after restart")
        recorder.scalar("notes", 2.0)
        recorder.step()
        recorder.text("notes", "and more")
        recorder.scalar("notes", 3.0)
    new_rows = {"text.csv": [["5", "notes", "after restart"], ["6", "notes", "and more"]],
                "scalars.csv": [["5", "notes", "2.0"], ["6", "notes", "3.0"]]}[name]  # fmt: skip
    with open(tmp_path / name, newline="", encoding="utf-8") as handle:
        assert list(csv.reader(handle)) == whole_rows + new_rows


def test_repairing_a_large_csv_reads_only_its_end_when_that_settles_it(tmp_path, monkeypatch):
    rows = "".join(f'{step},notes,"entry {step}\nsecond line"\r\n' for step in range(200_000))
    torn = f'step,tag,text\r\n{rows}200000,notes,"entry 200000\nsecond li'
    (tmp_path / "text.csv").write_text(torn, newline="", encoding="utf-8")
    size = len(torn.encode())
    read = []

    class CountingFile(io.FileIO):
        def read(self, size=-1):
            data = super().read(size)
            read.append(len(data))
            return data

    def counting_open(path, mode="r", **kwargs):
        if mode == "rb+":
            return CountingFile(path, "r+")
        return open(path, mode, **kwargs)

    monkeypatch.setattr(_csv_repair, "open", counting_open, raising=False)
    with Recorder(tmp_path, tensorboard=False) as recorder:
        recorder.count = 200_001
        recorder.text("notes", "after restart")
    assert 0 < sum(read) < size // 50  # the header, and a block from the end
    with open(tmp_path / "text.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert len(rows) == 200_002 and rows[-1] == ["200001", "notes", "after restart"]
