"""Which checkpoint a path means, and the errors when it means none."""
import os
import socket
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

import pystematic_torch as pt
from pystematic_torch.checkpoint import ContextState


def context_state(epoch):
    return ContextState(epoch=epoch, weights=torch.full((2,), float(epoch)))


def test_a_run_directory_means_its_last_context_checkpoint_whatever_the_file_times(tmp_path):
    run = tmp_path / "run"
    for epoch in range(1, 7):
        pt.save_checkpoint(context_state(epoch), id=epoch, directory=run)
    pt.save_checkpoint({"fc.weight": torch.ones(2)}, id="mnist_cnn", directory=run)  # deploy
    torch.save({"notes": "by hand"}, run / "checkpoint-notes.pt")
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(run), str(copy)], check=True)  # new times, any order
    future = os.stat(copy / "checkpoint-3.pt").st_mtime_ns + 10**12
    os.utime(copy / "checkpoint-3.pt", ns=(future, future))
    for directory in (run, copy):
        assert pt.find_checkpoint(directory) == directory / "checkpoint-6.pt"
        assert pt.load_checkpoint(directory)["epoch"] == 6


def test_a_named_context_checkpoint_counts_when_it_is_the_last_saved(tmp_path):
    pt.save_checkpoint(context_state(1), id=1, directory=tmp_path)
    pt.save_checkpoint(context_state(1), id="best", directory=tmp_path)
    pt.save_checkpoint(context_state(2), id=2, directory=tmp_path)
    assert pt.find_checkpoint(tmp_path).name == "checkpoint-2.pt"
    pt.save_checkpoint(context_state(3), id="preempted", directory=tmp_path)
    assert pt.find_checkpoint(tmp_path).name == "checkpoint-preempted.pt"
    assert [info.id for info in pt.list_checkpoints(tmp_path)] == ["1", "best", "2", "preempted"]
    assert [info.sequence for info in pt.list_checkpoints(tmp_path)] == [1, 2, 3, 4]


@pytest.mark.timeout(120)
def test_a_new_process_continues_the_sequence_of_the_directory(tmp_path):
    for epoch in (1, 2, 3):
        pt.save_checkpoint(context_state(epoch), id=epoch, directory=tmp_path)
    code = (
        "import pystematic_torch as pt\n"
        "from pystematic_torch.checkpoint import ContextState\n"
        f"pt.save_checkpoint(ContextState(epoch=2), id=2, directory={str(tmp_path)!r})\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=100)
    # The resumed process rewrote epoch 2: that is now the run's latest state.
    assert pt.checkpoint_info(tmp_path).id == "2"
    assert pt.checkpoint_info(tmp_path).sequence == 4


def test_a_directory_without_a_context_checkpoint_says_what_it_holds(tmp_path):
    pt.save_checkpoint({"fc.weight": torch.ones(2)}, id="mnist_cnn", directory=tmp_path)
    torch.save({"epoch": 1}, tmp_path / "checkpoint-1.pt")
    with pytest.raises(pt.CheckpointError) as info:
        pt.load_checkpoint(tmp_path)
    message = str(info.value)
    assert "holds no checkpoint of a Context's whole state" in message
    assert "other states than a Context's: checkpoint-mnist_cnn.pt" in message
    assert "without pystematic-torch metadata (by torch.save or an older version): " \
           "checkpoint-1.pt" in message  # fmt: skip
    assert "Name the file to load" in message
    assert pt.load_checkpoint(tmp_path / "checkpoint-1.pt") == {"epoch": 1}


RUNS = ["2026-11-30_09-15-02_k3j9x1", "2026-12-01_18-40-11_a0b1c2", "2026-12-01_08-00-59_zz9q7w"]


def test_a_folder_of_runs_names_them_newest_first(tmp_path):
    for name in RUNS:
        (tmp_path / "train" / name).mkdir(parents=True)
    (tmp_path / "train" / "notes").mkdir()
    with pytest.raises(pt.CheckpointError) as info:
        pt.load_checkpoint(tmp_path / "train")
    assert (
        "is a folder of runs, not a run: it holds 3 runs, newest first: "
        "2026-12-01_18-40-11_a0b1c2, 2026-12-01_08-00-59_zz9q7w, 2026-11-30_09-15-02_k3j9x1. "
        f"Give one run's directory, e.g. '{tmp_path / 'train' / RUNS[1]}'."
    ) in str(info.value)
    with pytest.raises(pt.CheckpointError, match=r"is a folder of experiments, not a run: "
                                                 r"it holds train \(3 runs\)"):
        pt.load_checkpoint(tmp_path)


def test_an_empty_directory_and_a_missing_path_are_refused(tmp_path):
    with pytest.raises(pt.CheckpointError, match="holds no checkpoint-\\*.pt file"):
        pt.load_checkpoint(tmp_path)
    with pytest.raises(pt.CheckpointError, match="does not exist; give a checkpoint file"):
        pt.load_checkpoint(tmp_path / "nope.pt")


def truncated_checkpoint(path):
    pt.save_checkpoint({"w": torch.randn(1000)}, id="full", directory=path.parent)
    data = (path.parent / "checkpoint-full.pt").read_bytes()
    path.write_bytes(data[: len(data) // 2])


def zip_without_a_pickle(path):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "hello")


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_text("epoch: 3\n"),
     "not a checkpoint written by torch.save: it starts with b'epoch: 3"),
    (lambda p: p.write_bytes(b""), "not a checkpoint written by torch.save: the file is empty"),
    (zip_without_a_pickle, "not a checkpoint written by torch.save: it is a zip archive"),
    (lambda p: np.save(p.open("wb"), np.ones(3)),
     r"not a checkpoint written by torch.save: it starts with b.\\x93NUMPY"),
    (truncated_checkpoint, "it is damaged or was cut short"),
    (lambda p: torch.save({"fn": np.float64(1.0)}, p),
     r"refuses \(it needs numpy\S+\), so it was not written by save_checkpoint. If you trust"),
])  # fmt: skip
def test_files_that_are_not_checkpoints_get_a_clear_error(tmp_path, make, message):
    path = tmp_path / "given.pt"
    make(path)
    with pytest.raises(pt.CheckpointError, match=message) as info:
        pt.load_checkpoint(path)
    assert str(path) in str(info.value) and "pop from empty list" not in str(info.value)
    with pytest.raises(pt.CheckpointError, match=message):
        pt.checkpoint_info(path)


def test_an_unreadable_file_in_a_run_directory_is_skipped_with_a_warning(tmp_path, caplog):
    pt.save_checkpoint(context_state(1), id=1, directory=tmp_path)
    (tmp_path / "checkpoint-2.pt").write_text("not a checkpoint")
    assert pt.find_checkpoint(tmp_path).name == "checkpoint-1.pt"
    assert "Skipped checkpoint-2.pt" in caplog.text
    assert [info.id for info in pt.list_checkpoints(tmp_path)] == ["1"]


def test_the_latest_run_is_the_newest_by_name_that_holds_a_context_checkpoint(tmp_path):
    experiment = tmp_path / "train"
    oldest, middle, newest = (experiment / name for name in sorted(RUNS))
    pt.save_checkpoint(context_state(1), id=1, directory=oldest)
    pt.save_checkpoint(context_state(1), id=1, directory=middle)
    pt.save_checkpoint({"fc.weight": torch.ones(1)}, id="deploy", directory=newest)
    # Only the name counts: the oldest run's directory and files get the newest times.
    for path in (oldest, oldest / "checkpoint-1.pt"):
        os.utime(path, ns=(10**19, 10**19))
    assert pt.find_latest_run(tmp_path, "train") == middle
    pt.save_checkpoint(context_state(2), id=2, directory=newest)
    assert pt.find_latest_run(tmp_path, "train") == newest
    assert pt.find_latest_run(tmp_path, "other") is None
    assert pt.find_latest_run(tmp_path / "missing", "train") is None


def test_a_run_that_died_before_its_first_checkpoint_is_passed_over(tmp_path):
    older, newer = tmp_path / "train" / RUNS[0], tmp_path / "train" / RUNS[1]
    pt.save_checkpoint(context_state(1), id=1, directory=older)
    newer.mkdir()
    (newer / "log.txt").write_text("started\n")
    assert pt.find_latest_run(tmp_path, "train") == older


def test_the_first_save_into_a_directory_removes_temporary_files_of_killed_writes(tmp_path):
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    host = socket.gethostname()
    abandoned = tmp_path / f".checkpoint-2.pt.{host}.{finished.pid}.tmp"
    elsewhere = tmp_path / f".checkpoint-2.pt.another-host.{finished.pid}.tmp"
    alive = tmp_path / f".checkpoint-2.pt.{host}.{os.getppid()}.tmp"
    for path in (abandoned, elsewhere, alive):
        path.write_bytes(b"PK\x03\x04 partial")
    pt.save_checkpoint(context_state(1), id=1, directory=tmp_path)
    assert not abandoned.exists()
    assert elsewhere.exists() and alive.exists()  # another machine's or a live writer's
    assert pt.find_checkpoint(tmp_path).name == "checkpoint-1.pt"
