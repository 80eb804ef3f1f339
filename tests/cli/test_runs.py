"""`pystematic-torch runs`: the table and the JSON, through click's runner and for real."""
import json
import re

import pytest

from tests.cli.conftest import invoke, one_error_line, refused, run_command, write


def rows(output):
    """The table's lines split into cells (cells are separated by two or more spaces)."""
    return [re.split(r"\s{2,}", line.strip()) for line in output.strip().splitlines()]


def test_the_table_shows_each_run_with_what_differs(recorded):
    code, output = invoke("runs", recorded, "--metric", "train/loss", "--metric", "val/score")
    assert code == 0, output
    header, *table = rows(output)
    assert header == ["experiment", "run", "started", "status", "duration", "mode", "steps",
                      "value", "train/loss", "val/score"]  # fmt: skip
    # random_seed differs too, but says nothing: it is left out unless asked for.
    assert [(row[3], row[5], row[6], row[7], row[8], row[9]) for row in table] == [
        ("finished", "ok", "5", "1.0", "4", "1"),
        ("finished", "ok", "5", "2.0", "8", "2"),
        ("finished", "ok", "5", "3.0", "12", "3"),
        ("failed", "raise", "5", "4.0", "-", "-"),
        ("died", "ok", "2", "5.0", "5", "5"),  # record says running; its process is gone
    ]  # fmt: skip
    assert all(row[0] == "sweep-job" and row[1].startswith("sweep-job/2") for row in table)
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", row[2]) for row in table)
    assert all(re.fullmatch(r"\d+\.\ds", row[4]) for row in table)


def test_a_parameter_can_be_shown_even_when_it_does_not_differ(recorded):
    code, output = invoke("runs", recorded, "--param", "random_seed", "--param", "cuda")
    header, *table = rows(output)
    assert header[-2:] == ["random_seed", "cuda"]
    assert [row[-2] for row in table][:3] == ["1", "2", "3"]


def test_json_has_every_field_for_scripts(recorded):
    code, output = invoke("runs", recorded, "--json", "--metric", "train/loss")
    assert code == 0
    runs = json.loads(output)
    assert [run["status"] for run in runs] == ["finished"] * 3 + ["failed", "died"]
    first = runs[0]
    assert first["experiment"] == "sweep-job" and first["exit_code"] == 0
    assert first["differing_params"] == {"mode": "ok", "steps": 5, "value": 1.0}
    assert first["params"]["random_seed"] == 1 and first["metrics"] == {"train/loss": 4.0}
    assert first["duration_s"] >= 0 and first["started_at"].startswith("20")
    assert runs[3]["metrics"] == {"train/loss": None}


def test_a_run_directory_itself_lists_one_run(recorded):
    run_dir = next((recorded / "sweep-job").iterdir())
    code, output = invoke("runs", run_dir)
    assert code == 0 and len(rows(output)) == 2


def test_runs_without_a_record_show_as_unknown_with_the_time_from_their_name(tmp_path):
    run_dir = tmp_path / "exp" / "2026-01-02_03-04-05_abcdef"
    run_dir.mkdir(parents=True)
    (run_dir / "parameters.yaml").write_text("lr: 0.1\n")
    code, output = invoke("runs", tmp_path)
    assert code == 0
    assert rows(output)[1] == ["exp", "exp/2026-01-02_03-04-05_abcdef", "2026-01-02 03:04:05",
                               "unknown", "-"]  # fmt: skip


@pytest.mark.parametrize("make, message", [
    (lambda path: path / "missing", "missing does not exist; give a run directory or an "
                                    "output directory."),
    (lambda path: path, "No runs found under"),
    (lambda path: write(path / "file.txt", ""), "file.txt is not a directory"),
])  # fmt: skip
def test_bad_input_is_one_clear_line(tmp_path, make, message):
    assert message in refused("runs", make(tmp_path))


@pytest.mark.timeout(120)
def test_the_installed_command_lists_runs_for_real(recorded, tmp_path):
    result = run_command("runs", recorded, "--json")
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)) == 5
    result = run_command("runs", tmp_path / "missing")
    assert result.returncode == 1 and result.stdout == ""
    assert "does not exist" in one_error_line(result.stderr)
