"""`pystematic-torch inspect`: what a checkpoint holds, read safely, with or without metadata."""
import re

import pytest
import torch

import pystematic_torch
from tests.cli.conftest import invoke, one_error_line, refused, run_command, write
from tests.support.damage import flip_a_bit_in

METADATA = {"version": "9.9.9", "params": {"lr": 0.1, "batch_size": 32}, "world_size": 2,
            "sequence": 3, "kind": "context", "saved_at": "2026-12-02T10:00:00+00:00"}  # fmt: skip


class Opaque:
    """Not loadable by torch.load(weights_only=True)."""


def training_state():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(3, 4)).sum().backward()
    optimizer.step()
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 3,
            "name": "digits"}  # fmt: skip


def lines_of(output):
    return [" ".join(line.split()) for line in output.splitlines()]


def test_items_tensors_values_and_totals_are_listed(tmp_path):
    path = pystematic_torch.save_checkpoint(training_state(), id=3, directory=tmp_path)
    code, output = invoke("inspect", path)
    assert code == 0, output
    lines = lines_of(output)
    assert re.fullmatch(rf"{re.escape(str(path))} \(\d+\.\d KiB on disk\)", lines[0])
    assert lines[1] == f"written by pystematic-torch {pystematic_torch.__version__}"
    assert "kind: state" in lines and "items:" in lines
    assert "model dict 2 entries; 2 tensor(s), 40 B" in lines
    assert "weight tensor float32 [2, 4] 32 B" in lines
    assert "bias tensor float32 [2] 8 B" in lines
    assert "epoch int 3" in lines and "name str 'digits'" in lines
    assert "exp_avg tensor float32 [2, 4] 32 B" in lines  # optimizer state, 4 levels down
    # model: 40 B; Adam: exp_avg and exp_avg_sq per parameter (80 B) plus two step counters.
    assert lines[-2:] == ["total: 8 tensor(s), 128 B", "checksums: every record matches"]


def test_recorded_metadata_is_shown_apart_from_the_items(tmp_path):
    path = tmp_path / "checkpoint-3.pt"
    torch.save({**training_state(), "_pystematic_torch": METADATA}, path)
    code, output = invoke("inspect", path)
    assert code == 0, output
    lines = lines_of(output)
    assert lines[1:10] == [
        "written by pystematic-torch 9.9.9", "world_size: 2", "sequence: 3", "kind: context",
        "saved_at: 2026-12-02T10:00:00+00:00", "parameters:", "lr 0.1", "batch_size 32",
        "items:",
    ]  # fmt: skip
    assert not any(line.startswith("_pystematic_torch") for line in lines)


def test_shared_storage_counts_once_and_depth_limits_the_listing(tmp_path):
    weight = torch.zeros(256)
    path = tmp_path / "tied.pt"
    torch.save({"encoder": {"weight": weight}, "decoder": {"weight": weight}}, path)
    code, output = invoke("inspect", path, "--depth", "1")
    lines = lines_of(output)
    assert "encoder dict 1 entry; 1 tensor(s), 1.0 KiB" in lines
    assert not any(line.startswith("weight") for line in lines)  # deeper than --depth 1
    assert lines[-2] == "total: 2 tensor(s), 1.0 KiB"


def test_a_run_directory_means_its_last_context_checkpoint(tmp_path):
    ctx = pystematic_torch.Context()
    ctx.epoch = 1
    pystematic_torch.save_checkpoint(ctx.state_dict(), id=1, directory=tmp_path)
    ctx.epoch = 2
    newest = pystematic_torch.save_checkpoint(ctx.state_dict(), id=2, directory=tmp_path)
    pystematic_torch.save_checkpoint({"epoch": 9}, id="best", directory=tmp_path)
    code, output = invoke("inspect", tmp_path)
    assert code == 0 and output.startswith(str(newest)) and "epoch int 2" in lines_of(output)


def test_files_in_torchs_older_format_are_read(tmp_path):
    path = tmp_path / "legacy.pt"
    torch.save({"w": torch.ones(3)}, path, _use_new_zipfile_serialization=False)
    code, output = invoke("inspect", path)
    assert code == 0 and "w tensor float32 [3] 12 B" in lines_of(output)
    assert lines_of(output)[-1].startswith("checksums: none in this file (torch's older format")


@pytest.mark.parametrize("record", ["data/0", "data.pkl"])
def test_a_damaged_file_is_shown_as_far_as_it_reads_and_then_refused(tmp_path, record):
    path = pystematic_torch.save_checkpoint(training_state(), id=3, directory=tmp_path)
    flip_a_bit_in(path, record)
    code, output = invoke("inspect", path)
    assert code == 1, output
    lines = output.strip().splitlines()
    assert lines[-1].startswith(f"Error: {path} is damaged: its record ")
    assert lines[-1].endswith(f"/{record}' does not match its checksum; its bytes changed "
                              "after it was saved, and load_checkpoint refuses it.")  # fmt: skip
    if record == "data/0":  # the structure still reads: everything is listed first
        assert "epoch int 3" in lines_of(output)


def make_unsafe(path):
    torch.save({"thing": Opaque()}, path)
    return path


@pytest.mark.parametrize("make, message", [
    (lambda tmp: tmp / "missing.pt", "missing.pt does not exist; give a checkpoint file"),
    (lambda tmp: tmp, "holds no checkpoint-*.pt file"),
    (lambda tmp: make_unsafe(tmp / "unsafe.pt"), "holds Python objects that "
     "torch.load(weights_only=True) refuses to create (Unsupported global: GLOBAL "
     "tests.cli.test_inspect.Opaque); inspect opens only checkpoints that need no code"),
    (lambda tmp: write(tmp / "notes.txt", "hello"),
     "is not a checkpoint written by torch.save (neither a zip archive nor a pickle)"),
])  # fmt: skip
def test_unreadable_input_is_one_clear_line(tmp_path, make, message):
    assert message in refused("inspect", make(tmp_path))


@pytest.mark.timeout(120)
def test_the_installed_command_inspects_for_real(tmp_path):
    path = pystematic_torch.save_checkpoint(training_state(), id=1, directory=tmp_path)
    result = run_command("inspect", path)
    assert result.returncode == 0, result.stderr
    assert "weight tensor float32 [2, 4] 32 B" in lines_of(result.stdout)
    result = run_command("inspect", make_unsafe(tmp_path / "unsafe.pt"))
    assert result.returncode == 1 and "refuses to create" in one_error_line(result.stderr)
