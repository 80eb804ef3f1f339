"""`pystematic-torch sweep`: a grid over an experiment file, ending with the runs table."""
import pathlib
import re

import pytest

from tests.cli.conftest import invoke, one_error_line, refused, run_command, write

JOB = pathlib.Path(__file__).parents[1] / "sweep" / "jobs" / "sweep_job.py"


@pytest.mark.timeout(240)
def test_a_grid_runs_every_combination_and_ends_with_the_table(tmp_path):
    result = run_command("sweep", JOB, "--grid", "value=1,2", "--grid", "mode=ok,raise",
                         "--grid", "steps=3", "-j", "2", "--output-dir", tmp_path,
                         "--metric", "train/loss", timeout=200)  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert "2 of 4 runs did not finish." in result.stderr
    assert len(re.findall(r"Sweep run #\d/4 started", result.stderr)) == 4
    table = [line.split() for line in result.stdout.strip().splitlines()[-5:]]
    assert table[0][-3:] == ["mode", "value", "train/loss"]  # steps=3 everywhere: no column
    assert sorted((row[4], row[-3], row[-2], row[-1]) for row in table[1:]) == [
        ("failed", "raise", "1.0", "-"), ("failed", "raise", "2.0", "-"),
        ("finished", "ok", "1.0", "2"), ("finished", "ok", "2.0", "4"),
    ]  # fmt: skip
    assert len(list((tmp_path / "sweep-job").iterdir())) == 4


@pytest.mark.timeout(120)
def test_through_clicks_runner_a_finished_sweep_exits_0(tmp_path):
    code, output = invoke("sweep", JOB, "--grid", "value=7", "--output-dir", tmp_path)
    assert code == 0, output
    assert re.search(r"sweep-job\s+\S+\s+\S+ \S+\s+finished", output), output


@pytest.mark.parametrize("make, args, message", [
    (lambda tmp: tmp / "missing.py", [], "missing.py does not exist; give the Python file"),
    (lambda tmp: JOB, ["--grid", "value"], "--grid 'value' is not NAME=VALUE[,VALUE...]"),
    (lambda tmp: JOB, ["--grid", "value=1", "--grid", "value=2"], "--grid names 'value' twice"),
    (lambda tmp: JOB, ["--grid", "valu=1,2"], "Invalid sweep, nothing was started: run #1 "
     "(valu=1, output_dir="),
    (lambda tmp: write(tmp / "none.py", "x = 1\n"), [], "defines no experiment"),
    (lambda tmp: write(tmp / "broken.py", "raise ImportError('no such thing')\n"), [],
     "broken.py failed: ImportError: no such thing"),
    (lambda tmp: write(tmp / "two.py", "import pystematic\n@pystematic.experiment\n"
     "def first(p): pass\n@pystematic.experiment\ndef second(p): pass\n"), [],
     "defines several experiments (first, second); choose one with --experiment"),
    (lambda tmp: JOB, ["--experiment", "other"], "has no experiment 'other'; it defines: "
     "sweep-job"),
])  # fmt: skip
def test_bad_input_is_one_clear_line_and_starts_nothing(tmp_path, make, args, message):
    output_dir = tmp_path / "output"
    assert message in refused("sweep", make(tmp_path), *args, "--output-dir", output_dir)
    assert not output_dir.exists()


@pytest.mark.timeout(120)
def test_the_installed_command_refuses_bad_input_for_real(tmp_path):
    result = run_command("sweep", JOB, "--grid", "value=high", "--output-dir", tmp_path)
    assert result.returncode == 1 and result.stdout == ""
    assert "could not convert string to float: 'high'" in one_error_line(result.stderr)
    assert list(tmp_path.iterdir()) == []


def test_more_gpus_per_run_than_present_is_one_clear_line(tmp_path, monkeypatch):
    from pystematic_torch.sweep import _gpus

    monkeypatch.setattr(_gpus, "inventory", lambda: [_gpus.Gpu("0", "GPU-a")])
    line = refused("sweep", JOB, "--gpus-per-run", 2, "--output-dir", tmp_path / "out")
    assert "needs 2 GPU(s) but this process may use 1 (GPUs: 0)" in line
    assert not (tmp_path / "out").exists()
