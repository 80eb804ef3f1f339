"""A resumed run's recordings hold every value exactly once, in its own or in a new directory.

The checkpoint is taken in the middle of a step: values recorded at that step before it
belong to the resumed run's history, values recorded after it to the abandoned
continuation, which the resumed run records again.
"""
import csv
import os
import signal
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader
from tensorboard.plugins.hparams import metadata as hparams_metadata
from tensorboard.plugins.hparams import plugin_data_pb2

from pystematic_torch import _hdf5_durable, _session
from pystematic_torch.recording import Recorder

CHECKPOINT_STEP = 6


def record_until_abandoned(directory, checkpoint_path):
    """Steps 0-9, a checkpoint in the middle of step 6; the run is then preempted."""
    _session.start({"lr": 0.1})
    try:
        recorder = Recorder(directory, hdf5=True)
        recorder.params({"lr": 0.1, "optimizer": "sgd"})
        for step in range(10):
            recorder.scalar("train/loss", float(step))
            recorder.array("weights", np.full(2, step, dtype=np.float32))
            recorder.image("img/every_step", np.full((2, 2), step / 10))
            if step == CHECKPOINT_STEP:
                recorder.scalar("val/acc1", 0.9)
                recorder.scalar("lr", 0.1)
                recorder.text("notes", "before the checkpoint")
                recorder.image("img/before", np.zeros((2, 2)))
                torch.save({"recorder": recorder.state_dict()}, checkpoint_path)
                recorder.scalar("after", -1.0)  # abandoned: recorded after the capture
                recorder.text("notes", "abandoned")
                recorder.image("img/after", np.zeros((2, 2)))
            if step == 8:
                recorder.scalar("only/abandoned", 8.0)
            recorder.step()
    finally:
        _session.end(_session.PREEMPTED)


def resume(directory, checkpoint_path):
    """Load the checkpoint and redo the rest of step 6, then steps 7-11."""
    state = torch.load(checkpoint_path, weights_only=True)["recorder"]
    with Recorder(directory, hdf5=True) as recorder:
        recorder.load_state_dict(state)
        assert recorder.count == CHECKPOINT_STEP
        recorder.scalar("after", 1.0)
        recorder.text("notes", "resumed")
        recorder.step()
        while recorder.count < 12:
            recorder.scalar("train/loss", recorder.count + 0.5)
            recorder.array("weights", np.full(2, recorder.count + 0.5, dtype=np.float32))
            recorder.step()


EXPECTED_SCALARS = (
    [(s, "train/loss", float(s)) for s in range(CHECKPOINT_STEP + 1)]
    + [(6, "val/acc1", 0.9), (6, "lr", 0.1), (6, "after", 1.0)]
    + [(s, "train/loss", s + 0.5) for s in range(7, 12)]
)


def scalar_rows(directory):
    with open(directory / "scalars.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["step", "tag", "value"]
    return [(int(step), tag, float(value)) for step, tag, value in rows[1:]]


def events(directory):
    """Every event in the run directory's event files, in the order TensorBoard reads them."""
    found = []
    for path in sorted(directory.glob("*tfevents*")):
        found.extend(LegacyEventFileLoader(str(path)).Load())
    return found


def tensorboard_scalars(directory):
    return [(e.step, v.tag, v.simple_value) for e in events(directory)
            for v in e.summary.value if v.HasField("simple_value")]  # fmt: skip


def hparams_records(directory, tag):
    return [plugin_data_pb2.HParamsPluginData.FromString(v.metadata.plugin_data.content)
            for e in events(directory) for v in e.summary.value if v.tag == tag]  # fmt: skip


def check_history(directory):
    # Every value once, in recording order: the history first, then the resumed run's.
    assert scalar_rows(directory) == EXPECTED_SCALARS
    assert tensorboard_scalars(directory) == [
        (s, t, pytest.approx(v)) for s, t, v in EXPECTED_SCALARS
    ]
    with open(directory / "text.csv", newline="", encoding="utf-8") as handle:
        assert list(csv.reader(handle))[1:] == [
            ["6", "notes", "before the checkpoint"], ["6", "notes", "resumed"]
        ]
    texts = [(e.step, v.tensor.string_val[0]) for e in events(directory)
             for v in e.summary.value if v.tag == "notes"]  # fmt: skip
    assert texts == [(6, b"before the checkpoint"), (6, b"resumed")]

    with h5py.File(directory / "recordings.h5", "r") as f:
        loss = list(zip(f["train/loss.steps"][:].tolist(), f["train/loss"][:].tolist()))
        assert loss == [(s, v) for s, t, v in EXPECTED_SCALARS if t == "train/loss"]
        assert f["after"][:].tolist() == [1.0] and f["val/acc1"][:].tolist() == [0.9]
        assert "only/abandoned" not in f or len(f["only/abandoned"]) == 0
        assert f["weights.steps"][:].tolist() == list(range(12))
        assert f["weights"][:, 0].tolist() == [*range(7), *(s + 0.5 for s in range(7, 12))]

    images = sorted(p.relative_to(directory / "images").as_posix()
                    for p in (directory / "images").rglob("*.png"))  # fmt: skip
    assert images == ["img/before/00000006.png"] + [
        f"img/every_step/{s:08d}.png" for s in range(7)
    ]
    image_steps = [(e.step, v.tag) for e in events(directory) for v in e.summary.value
                   if v.HasField("image")]  # fmt: skip
    assert image_steps == [(s, "img/every_step") for s in range(6)] + [
        (6, "img/every_step"), (6, "img/before")
    ]

    # One session, started by the first run, ended once: by the resumed run, a success.
    (start,) = hparams_records(directory, hparams_metadata.SESSION_START_INFO_TAG)
    assert start.session_start_info.hparams["optimizer"].string_value == "sgd"
    (end,) = hparams_records(directory, hparams_metadata.SESSION_END_INFO_TAG)
    assert end.session_end_info.status == 1  # STATUS_SUCCESS


def test_resuming_into_the_same_directory_keeps_exactly_the_history(tmp_path):
    run = tmp_path / "run"
    record_until_abandoned(run, tmp_path / "checkpoint.pt")
    assert (8, "only/abandoned", 8.0) in scalar_rows(run)  # the abandoned future is there
    resume(run, tmp_path / "checkpoint.pt")
    check_history(run)
    assert len(list(run.glob("*tfevents*"))) == 1
    assert not [p for p in run.iterdir() if p.name.startswith(".pystematic")]


def test_resuming_into_a_new_directory_copies_the_history_there(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    record_until_abandoned(first, tmp_path / "checkpoint.pt")
    before = {p: p.read_bytes() for p in first.rglob("*") if p.is_file()}
    resume(second, tmp_path / "checkpoint.pt")
    check_history(second)
    # The checkpointed run's own directory is left as it was.
    assert {p: p.read_bytes() for p in first.rglob("*") if p.is_file()} == before


def test_a_resume_without_the_first_directory_starts_the_files_at_the_checkpoint(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    record_until_abandoned(first, tmp_path / "checkpoint.pt")
    os.rename(first, tmp_path / "moved")
    resume(second, tmp_path / "checkpoint.pt")
    assert scalar_rows(second)[:2] == [(6, "after", 1.0), (7, "train/loss", 7.5)]


def test_an_older_state_without_a_tally_drops_everything_at_its_count(tmp_path):
    with Recorder(tmp_path, tensorboard=False) as recorder:
        for step in range(4):
            recorder.scalar("loss", float(step))
            recorder.step()
    with Recorder(tmp_path, tensorboard=False) as recorder:
        recorder.load_state_dict({"count": 2})
        recorder.scalar("loss", 2.5)
    assert [(s, v) for s, _, v in scalar_rows(tmp_path)] == [(0, 0.0), (1, 1.0), (2, 2.5)]


def test_state_dict_counts_what_was_recorded_at_the_count_before_it(tmp_path):
    with Recorder(tmp_path, hdf5=True) as recorder:
        recorder.scalar("a", 1.0)
        recorder.step()
        recorder.scalars({"a": 1.0, "b": torch.tensor(2.0)})
        recorder.scalar("a", 3)
        recorder.text("t", "x")
        recorder.array("arr", [1, 2])
        recorder.params({"lr": 1})
        state = recorder.state_dict()
        recorder.scalar("c", 1.0)
    assert state["count"] == 1
    assert state["recorded_at_count"] == {
        "scalar": {"a": 2, "b": 1}, "text": {"t": 1}, "array": {"arr": 1}, "params": {"": 1}
    }
    assert state["output_dir"] == str(tmp_path.resolve())


def test_a_run_resumed_and_checkpointed_again_at_the_same_count_keeps_that_counts_values(
    tmp_path,
):
    # Resumed at count 4 and preempted again before its first step: the second checkpoint
    # is at the same count, and must still say what the first run recorded there.
    with Recorder(tmp_path, hdf5=True) as recorder:
        for step in range(4):
            recorder.scalar("train/loss", float(step))
            recorder.step()
        recorder.scalar("val/acc", 0.5)
        recorder.text("notes", "epoch 1")
        first = recorder.state_dict()
    with Recorder(tmp_path, hdf5=True) as recorder:
        recorder.load_state_dict(first)
        recorder.scalar("val/loss", 0.25)  # at the same count, after the resume
        second = recorder.state_dict()
    assert second["recorded_at_count"] == {
        "scalar": {"val/acc": 1, "val/loss": 1}, "text": {"notes": 1}
    }
    with Recorder(tmp_path, hdf5=True) as recorder:
        recorder.load_state_dict(second)
        recorder.scalar("train/loss", 4.0)
    expected = [(s, "train/loss", float(s)) for s in range(4)] + [
        (4, "val/acc", 0.5), (4, "val/loss", 0.25), (4, "train/loss", 4.0)
    ]
    assert scalar_rows(tmp_path) == expected
    assert tensorboard_scalars(tmp_path) == [(s, t, pytest.approx(v)) for s, t, v in expected]
    with h5py.File(tmp_path / "recordings.h5", "r") as f:
        assert f["val/acc"][:].tolist() == [0.5] and f["val/loss"][:].tolist() == [0.25]
    with open(tmp_path / "text.csv", newline="", encoding="utf-8") as handle:
        assert list(csv.reader(handle))[1:] == [["4", "notes", "epoch 1"]]


def test_an_empty_hdf5_file_left_by_a_kill_during_the_copy_gets_the_history(tmp_path):
    # The copy into a new directory is flushed only once complete: a kill in the middle
    # leaves the file as it was created, empty, and the next resume copies again.
    first, second = tmp_path / "first", tmp_path / "second"
    record_until_abandoned(first, tmp_path / "checkpoint.pt")
    second.mkdir()
    _hdf5_durable.open_file(str(second / "recordings.h5"), "a").close()
    resume(second, tmp_path / "checkpoint.pt")
    check_history(second)


def test_a_csv_holding_only_its_header_and_a_torn_row_is_no_history_of_its_own(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    record_until_abandoned(first, tmp_path / "checkpoint.pt")
    second.mkdir()
    (second / "scalars.csv").write_bytes(b"step,tag,value\r\n0,train/lo")  # killed there
    resume(second, tmp_path / "checkpoint.pt")
    check_history(second)


KILLED_COPYING_IMAGES = textwrap.dedent("""
    import os, shutil, signal, sys, torch
    from pystematic_torch.recording import Recorder

    real_copyfile, copied = shutil.copyfile, []
    def copyfile(source, destination):  # killed after the third image of the history
        real_copyfile(source, destination)
        copied.append(destination)
        if len(copied) == 3:
            os.kill(os.getpid(), signal.SIGKILL)
    shutil.copyfile = copyfile
    state = torch.load(sys.argv[2], weights_only=True)["recorder"]
    recorder = Recorder(sys.argv[1], hdf5=True)
    recorder.load_state_dict(state)
    recorder.flush()
    print("the copy was not interrupted", flush=True)
""")


@pytest.mark.timeout(120)
def test_a_kill_while_the_history_is_copied_into_a_new_directory_is_made_good_by_the_next(
    tmp_path,
):
    first, second = tmp_path / "first", tmp_path / "second"
    record_until_abandoned(first, tmp_path / "checkpoint.pt")
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_COPYING_IMAGES, str(second), str(tmp_path / "checkpoint.pt")],
        capture_output=True, text=True, timeout=100,
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    assert not (second / "images").exists()  # the copied images are not taken for its own
    resume(second, tmp_path / "checkpoint.pt")
    check_history(second)
    assert not [p for p in second.iterdir() if p.name.startswith(".")]


# -- a kill in the middle of rewriting the event files ------------------------------------

KILLED_REWRITE = textwrap.dedent("""
    import os, signal, sys, torch
    from pystematic_torch.recording import Recorder, _event_history
    step = sys.argv[2]
    real_replace, real_unlink = os.replace, os.unlink
    def kill(): os.kill(os.getpid(), signal.SIGKILL)
    if step == "writing":
        real_fsync = os.fsync
        def fsync(fd):  # killed after the history was written, before it was renamed
            real_fsync(fd); kill()
        os.fsync = fsync
    elif step == "deleting":
        def unlink(path, *args, **kwargs):  # killed after the first old file is gone
            real_unlink(path, *args, **kwargs); kill()
        _event_history.Path.unlink = lambda self, *a, **k: unlink(self)
    state = torch.load(sys.argv[1] + "/checkpoint.pt", weights_only=True)
    recorder = Recorder(sys.argv[1], file=False)
    recorder.load_state_dict(state)
    recorder.flush()
    print("the rewrite was not interrupted", flush=True)
""")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("killed_at", ["writing", "deleting"])
def test_a_kill_during_the_rewrite_loses_nothing_and_the_next_open_finishes_it(
    tmp_path, killed_at
):
    # Two event files of earlier sessions, both to be rewritten.
    for session in range(2):
        with Recorder(tmp_path, file=False) as recorder:
            recorder.count = session * 5
            for _ in range(5):
                recorder.scalar("loss", float(recorder.count))
                recorder.step()
            if session == 0:
                torch.save(recorder.state_dict(), tmp_path / "checkpoint.pt")
    assert len(list(tmp_path.glob("*tfevents*"))) == 2

    child = subprocess.run([sys.executable, "-c", KILLED_REWRITE, str(tmp_path), killed_at],
                           capture_output=True, text=True, timeout=100)  # fmt: skip
    assert child.returncode == -signal.SIGKILL, child.stdout + child.stderr
    assert "not interrupted" not in child.stdout
    left = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".pystematic"))
    if killed_at == "writing":  # the old files untouched, a partial rewrite beside them
        assert left == [".pystematic-torch-events.writing"]
        assert len(list(tmp_path.glob("*tfevents*"))) == 2
    else:  # the complete rewrite, one old file already deleted
        assert left == [".pystematic-torch-events.written"]
        assert len(list(tmp_path.glob("*tfevents*"))) == 1

    # Whatever the kill left, the next recorder in the directory ends with exactly the
    # history up to the checkpoint (steps 0-4), each value once.
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    with Recorder(tmp_path, file=False) as recorder:
        recorder.load_state_dict(state)
    assert tensorboard_scalars(tmp_path) == [(s, "loss", float(s)) for s in range(5)]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".pystematic")]
