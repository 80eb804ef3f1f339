"""A checkpoint whose bytes changed after it was saved is never loaded as if it were whole."""
import os
import subprocess
import sys

import pytest
import torch

import pystematic_torch as pt
from pystematic_torch.checkpoint import ContextState, _integrity
from tests.support.damage import damage_the_index_entry_of, flip_a_bit_in


def context_state(step):
    return ContextState(step=step, weights=torch.arange(4096, dtype=torch.float32) * step)


@pytest.mark.parametrize("record", ["data/0", "data.pkl"])
def test_a_file_with_a_flipped_bit_is_refused_naming_the_damaged_record(tmp_path, record):
    path = pt.save_checkpoint(context_state(3), id=3, directory=tmp_path)
    flip_a_bit_in(path, record)
    if record == "data/0":  # what this guards against: torch.load takes the changed weight
        assert not torch.equal(torch.load(path, weights_only=True)["weights"],
                               context_state(3)["weights"])  # fmt: skip
    with pytest.raises(pt.CheckpointError) as info:
        pt.load_checkpoint(path)
    message = str(info.value)
    assert f"Checkpoint {path} is damaged" in message
    assert f"/{record}' does not match its checksum" in message
    assert "load an earlier checkpoint, or give the run directory" in message


def test_a_run_directory_falls_back_to_the_checkpoint_saved_before_a_damaged_one(
    tmp_path, caplog
):
    for step in (1, 2, 3):
        pt.save_checkpoint(context_state(step), id=step, directory=tmp_path)
    flip_a_bit_in(tmp_path / "checkpoint-3.pt")
    flip_a_bit_in(tmp_path / "checkpoint-2.pt", "data.pkl")

    assert pt.find_checkpoint(tmp_path).name == "checkpoint-1.pt"
    state = pt.load_checkpoint(tmp_path)
    assert state["step"] == 1 and torch.equal(state["weights"], context_state(1)["weights"])
    assert f"Skipped checkpoint-3.pt in {tmp_path}, which is damaged: its record " in caplog.text
    assert "/data/0' does not match its checksum; using checkpoint-1.pt" in caplog.text
    # A damaged pickle could say anything about the file (its kind, its sequence): such a
    # file is skipped wherever a directory is read, even where only metadata is wanted.
    assert f"Skipped checkpoint-2.pt in {tmp_path}, which is damaged: its record " in caplog.text
    assert "/data.pkl' does not match its checksum." in caplog.text
    assert [info.id for info in pt.list_checkpoints(tmp_path)] == ["1", "3"]
    # Listing does not read the tensors: their damage shows when the file is loaded.
    with pytest.raises(pt.CheckpointError, match="data/0' does not match its checksum"):
        pt.load_checkpoint(tmp_path / "checkpoint-3.pt")


def test_a_run_directory_whose_every_context_checkpoint_is_damaged_is_an_error(tmp_path):
    for step in (1, 2):
        pt.save_checkpoint(context_state(step), id=step, directory=tmp_path)
        flip_a_bit_in(tmp_path / f"checkpoint-{step}.pt")
    with pytest.raises(pt.CheckpointError) as info:
        pt.load_checkpoint(tmp_path)
    message = str(info.value)
    assert "holds no undamaged checkpoint of a Context's whole state" in message
    assert "(checkpoint-2.pt, checkpoint-1.pt)" in message and "Restore one from a copy" in message


def test_a_file_replaced_by_a_new_save_is_checked_again(tmp_path):
    path = pt.save_checkpoint(context_state(1), id="best", directory=tmp_path)
    assert pt.load_checkpoint(path)["step"] == 1  # checked, and found whole
    pt.save_checkpoint(context_state(2), id="best", directory=tmp_path)
    flip_a_bit_in(path)
    with pytest.raises(pt.CheckpointError, match="is damaged"):
        pt.load_checkpoint(path)


def test_files_that_carry_no_checksums_load_as_they_are(tmp_path):
    legacy = tmp_path / "legacy.pt"
    torch.save({"w": torch.ones(3)}, legacy, _use_new_zipfile_serialization=False)
    assert torch.equal(pt.load_checkpoint(legacy)["w"], torch.ones(3))

    without = tmp_path / "without.pt"
    torch.serialization.set_crc32_options(False)
    try:
        torch.save({"w": torch.ones(3)}, without)
    finally:
        torch.serialization.set_crc32_options(True)
    assert torch.equal(pt.load_checkpoint(without)["w"], torch.ones(3))


@pytest.mark.parametrize("record, field", [("data/0", "method"), ("data/0", "offset"),
                                           ("data.pkl", "offset")])  # fmt: skip
def test_a_damaged_index_entry_is_damage_too_and_the_directory_falls_back(tmp_path, record,
                                                                          field):
    for step in (1, 2):
        pt.save_checkpoint(context_state(step), id=step, directory=tmp_path)
    damage_the_index_entry_of(tmp_path / "checkpoint-2.pt", record, field)
    with pytest.raises(pt.CheckpointError, match="is damaged|could not read|cut short"):
        pt.load_checkpoint(tmp_path / "checkpoint-2.pt")
    assert pt.load_checkpoint(tmp_path)["step"] == 1


def test_a_save_replacing_the_file_during_the_check_cannot_make_it_load_another_file(
    tmp_path, monkeypatch
):
    path = pt.save_checkpoint(context_state(1), id="best", directory=tmp_path)
    newer = pt.save_checkpoint(context_state(2), id="newer", directory=tmp_path)
    real_crc32 = _integrity.zlib.crc32

    def crc32_while_a_save_replaces_the_file(data, value=0):
        if newer.exists():
            os.replace(newer, path)  # an atomic save of id "best", in the middle of the check
        return real_crc32(data, value)

    monkeypatch.setattr(_integrity.zlib, "crc32", crc32_while_a_save_replaces_the_file)
    assert pt.load_checkpoint(path)["step"] == 1  # the file that was checked, not the new one
    assert not newer.exists()


CUT_SHORT_DURING_THE_CHECK = """
import os, sys, zlib
import pystematic_torch as pt
from pystematic_torch.checkpoint import _integrity
path = sys.argv[1]
real_crc32 = zlib.crc32
def crc32_while_another_program_truncates_the_file(data, value=0):
    if os.path.getsize(path) > 4096:
        os.truncate(path, 4096)  # rewritten in place, e.g. by cp or rsync --inplace
    return real_crc32(data, value)
_integrity.zlib.crc32 = crc32_while_another_program_truncates_the_file
try:
    pt.load_checkpoint(path)
except pt.CheckpointError as error:
    print("REFUSED", error)
"""


@pytest.mark.timeout(120)
def test_a_file_cut_short_during_the_check_is_an_error_not_a_crash(tmp_path):
    path = pt.save_checkpoint(context_state(1), id=1, directory=tmp_path)
    result = subprocess.run([sys.executable, "-c", CUT_SHORT_DURING_THE_CHECK, str(path)],
                            capture_output=True, text=True, timeout=100)  # fmt: skip
    assert result.returncode == 0, result  # a mapped file cut short kills with SIGBUS
    assert f"REFUSED Checkpoint {path} is damaged: its record " in result.stdout, result
