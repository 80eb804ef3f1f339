import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).parents[1]


@pytest.mark.timeout(120)
def test_ruff_finds_nothing():
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "pystematic_torch", "tests", "examples",
         "benchmarks"],
        capture_output=True, text=True, cwd=ROOT, timeout=100,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.rst").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "    bash scripts/test.sh\n" in readme
    assert "bash scripts/test.sh" in ci
