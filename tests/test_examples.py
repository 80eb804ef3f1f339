"""Every example runs, in a subprocess, the way a user starts it."""
import csv
import pathlib
import re
import subprocess
import sys

import pytest
import torch

EXAMPLES = pathlib.Path(__file__).parents[1] / "examples"


def run_example(name, *args, cwd):
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), "--output-dir", str(cwd / "output"), *args],
        capture_output=True, text=True, timeout=240, cwd=cwd,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def only_run_dir(parent):
    (run_dir,) = parent.iterdir()
    return run_dir


@pytest.mark.timeout(200)
def test_ddp_example_runs_in_a_single_process(tmp_path):
    output = run_example("ddp.py", "--epochs", "2", cwd=tmp_path)
    assert re.findall(r"epoch (\d): loss", output) == ["1", "2"], output
    (run_dir,) = (tmp_path / "output" / "ddp-example").iterdir()
    assert (run_dir / "checkpoint-2.pt").exists()


@pytest.mark.timeout(300)
def test_quickstart_trains_saves_and_resumes(tmp_path):
    output = run_example("quickstart.py", "--epochs", "3", "--random-seed", "1", cwd=tmp_path)
    losses = [float(v) for v in re.findall(r"train loss (\d+\.\d+)", output)]
    accuracies = [float(v) for v in re.findall(r"validation accuracy (\d+\.\d+)", output)]
    assert len(losses) == 3 and losses[-1] < losses[0], output
    assert accuracies[-1] > 0.85, output
    assert "CUDA was requested but is not available" in output or torch.cuda.is_available()

    run_dir = only_run_dir(tmp_path / "output" / "train-digits")
    assert {"checkpoint-1.pt", "checkpoint-2.pt", "checkpoint-3.pt"} <= {
        p.name for p in run_dir.iterdir()
    }
    checkpoint = torch.load(run_dir / "checkpoint-3.pt", weights_only=True)
    assert checkpoint["epoch"] == 3
    with open(run_dir / "scalars.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert {row["tag"] for row in rows} == {"train/loss", "val/accuracy"}

    resumed = run_example(
        "quickstart.py", "--epochs", "4", "--checkpoint", str(run_dir), cwd=tmp_path / "output"
    )
    assert re.findall(r"epoch (\d+)/4", resumed) == ["4"], resumed
    (new_run,) = [p for p in (tmp_path / "output" / "output" / "train-digits").iterdir()]
    assert (new_run / "checkpoint-4.pt").exists()
    assert not (run_dir / "checkpoint-4.pt").exists()  # the old run is never written to


@pytest.mark.timeout(300)
def test_mixed_precision_example_accumulates_and_resumes_exactly(tmp_path):
    common = ("--no-cuda", "--precision", "bf16-mixed", "--batch-size", "8", "--accumulate", "4",
              "--random-seed", "3")  # fmt: skip

    def validation_losses(output):
        return {int(epoch): loss for epoch, loss in
                re.findall(r"epoch (\d+): validation loss (\d+\.\d+)", output)}  # fmt: skip

    (tmp_path / "whole").mkdir()
    output = run_example("mixed_precision.py", *common, "--epochs", "2", cwd=tmp_path / "whole")
    whole = validation_losses(output)
    assert list(whole) == [1, 2] and float(whole[2]) < float(whole[1]), whole

    (tmp_path / "parts").mkdir()
    first = run_example("mixed_precision.py", *common, "--epochs", "1", cwd=tmp_path / "parts")
    run_dir = only_run_dir(tmp_path / "parts" / "output" / "mixed-precision-example")
    state = torch.load(run_dir / "checkpoint-1.pt", weights_only=True)
    assert "precision.scaler" not in state and state["scheduler"]["last_epoch"] == 64 // 4
    resumed = run_example("mixed_precision.py", *common, "--epochs", "2",
                          "--checkpoint", str(run_dir), cwd=tmp_path / "parts")  # fmt: skip
    assert validation_losses(first) == {1: whole[1]}
    assert validation_losses(resumed) == {2: whole[2]}  # the same digits, all nine
