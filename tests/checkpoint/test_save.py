import os

import numpy as np
import pytest
import torch

import pystematic_torch as pt


def test_save_writes_atomically_and_loads_weights_only(tmp_path):
    state = {"epoch": 3, "weights": torch.arange(4.0), "nested": [1, (2, "x"), {"k": None}]}
    path = pt.save_checkpoint(state, id=3, directory=tmp_path)
    assert path == tmp_path / "checkpoint-3.pt"
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-3.pt"]  # no temporary file left
    loaded = torch.load(path, weights_only=True)
    assert loaded["epoch"] == 3 and torch.equal(loaded["weights"], torch.arange(4.0))
    assert loaded["nested"] == [1, (2, "x"), {"k": None}]


def test_existing_checkpoints_are_never_overwritten_by_accident(tmp_path):
    pt.save_checkpoint({"v": 1}, id="best", directory=tmp_path)
    with pytest.raises(pt.CheckpointError, match="already exists; pass overwrite=True"):
        pt.save_checkpoint({"v": 2}, id="best", directory=tmp_path)
    assert pt.load_checkpoint(tmp_path / "checkpoint-best.pt") == {"v": 1}
    pt.save_checkpoint({"v": 2}, id="best", directory=tmp_path, overwrite=True)
    assert pt.load_checkpoint(tmp_path / "checkpoint-best.pt") == {"v": 2}


def test_values_that_need_pickled_code_are_listed_before_writing(tmp_path):
    state = {"loss": np.float64(0.5), "ok": 1, "deep": {"fn": print, "list": [object()]}}
    with pytest.raises(pt.CheckpointError) as info:
        pt.save_checkpoint(state, id=1, directory=tmp_path)
    message = str(info.value)
    assert "state['loss'] is a numpy.float64" in message
    assert "state['deep']['fn']" in message and "state['deep']['list'][0]" in message
    assert not any(tmp_path.iterdir())


def test_bad_ids_and_missing_directory_are_refused(tmp_path):
    with pytest.raises(pt.CheckpointError, match="characters other than"):
        pt.save_checkpoint({}, id="../escape", directory=tmp_path)
    with pytest.raises(pt.CheckpointError, match="pass directory="):
        pt.save_checkpoint({}, id=1)


def test_a_run_directory_resolves_to_its_newest_checkpoint(tmp_path):
    for epoch in (1, 2, 10):
        pt.save_checkpoint({"epoch": epoch}, id=epoch, directory=tmp_path)
    same_time = os.stat(tmp_path / "checkpoint-1.pt").st_mtime_ns
    for epoch in (1, 2, 10):
        os.utime(tmp_path / f"checkpoint-{epoch}.pt", ns=(same_time, same_time))
    assert pt.find_checkpoint(tmp_path).name == "checkpoint-10.pt"  # numeric, not lexical
    os.utime(tmp_path / "checkpoint-2.pt", ns=(same_time + 10**9, same_time + 10**9))
    assert pt.load_checkpoint(tmp_path) == {"epoch": 2}


def test_loading_errors_are_clear(tmp_path):
    with pytest.raises(pt.CheckpointError, match="does not exist"):
        pt.load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(pt.CheckpointError, match="holds no checkpoint"):
        pt.load_checkpoint(tmp_path)
    unsafe = tmp_path / "pickled.pt"
    torch.save({"fn": np.float64(1.0)}, unsafe)
    with pytest.raises(pt.CheckpointError, match="weights_only=True"):
        pt.load_checkpoint(unsafe)
