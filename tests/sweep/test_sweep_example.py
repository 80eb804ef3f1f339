"""examples/sweep.py runs its grid on the CPU, and the command line reads what it left."""
import csv
import pathlib
import re
import subprocess
import sys

import pytest

from pystematic_torch import _run_record

EXAMPLE = pathlib.Path(__file__).parents[2] / "examples" / "sweep.py"


@pytest.mark.timeout(300)
def test_the_sweep_example_runs_its_grid(tmp_path):
    result = subprocess.run([sys.executable, str(EXAMPLE), "--output-dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=280, cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    summary = re.findall(r"^lr=(\S+)\s+batch_size=(\d+)\s+finished in [\d.]+ s: (\S+)$",
                         result.stdout, re.M)  # fmt: skip
    assert [(lr, size) for lr, size, _ in summary] == [
        ("0.1", "32"), ("0.1", "128"), ("0.01", "32"), ("0.01", "128"),
    ]  # fmt: skip
    for _, size, run_dir in summary:
        run_dir = pathlib.Path(run_dir)
        assert _run_record.read(run_dir)["status"] == "finished"
        assert (run_dir / "checkpoint-3.pt").exists()
        with open(run_dir / "scalars.csv", newline="") as file:
            steps = [row for row in csv.DictReader(file) if row["tag"] == "train/loss"]
        assert len(steps) == 3 * (1024 // int(size))

    runs = subprocess.run([sys.executable, "-m", "pystematic_torch.cli", "runs", str(tmp_path),
                           "--metric", "train/loss"], capture_output=True, text=True,
                          timeout=100)  # fmt: skip
    assert runs.returncode == 0, runs.stderr
    header, *rows = runs.stdout.strip().splitlines()
    assert header.split()[-3:] == ["batch_size", "lr", "train/loss"] and len(rows) == 4

    plot = subprocess.run([sys.executable, "-m", "pystematic_torch.cli", "plot",
                           str(tmp_path / "sweep-regression"), "--tag", "train/loss", "-o",
                           str(tmp_path / "losses.png")], capture_output=True, text=True,
                          timeout=100)  # fmt: skip
    assert plot.returncode == 0 and (tmp_path / "losses.png").exists(), plot.stderr


@pytest.mark.timeout(200)
def test_the_command_line_sweeps_the_example_file_without_its_main_block(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "pystematic_torch.cli", "sweep", str(EXAMPLE), "--grid",
         "lr=0.1,0.01", "--grid", "batch_size=128", "--grid", "epochs=1", "-j", "2",
         "--output-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=180, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(list((tmp_path / "sweep-regression").iterdir())) == 2  # not the example's 4
    assert result.stdout.count("finished") == 2
