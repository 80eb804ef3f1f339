"""Every command answers --help, fast: no torch, matplotlib or tensorboard is imported for it."""
import pathlib
import re
import statistics
import subprocess
import sys
import time

import pytest

import pystematic_torch
from tests.cli.conftest import invoke, run_command

COMMANDS = ("runs", "plot", "inspect", "sweep")
HEAVY = ("torch", "matplotlib", "tensorboard", "h5py", "PIL", "numpy")
# What --help may cost on top of starting Python; importing torch alone takes longer.
BUDGET_SECONDS = 0.75


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_every_command_has_help(command):
    code, output = invoke(*([command] if command else []), "--help")
    assert code == 0 and output.startswith("Usage: main"), output


@pytest.mark.timeout(120)
def test_help_imports_nothing_heavy():
    code = (
        "import sys\n"
        "from pystematic_torch.cli import main\n"
        f"for args in ([], *([name] for name in {COMMANDS!r})):\n"
        "    try:\n"
        "        main([*args, '--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=100)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def seconds(args):
    started = time.perf_counter()
    subprocess.run(args, capture_output=True, check=True, timeout=60)
    return time.perf_counter() - started


@pytest.mark.timeout(120)
def test_the_installed_command_answers_help_quickly():
    result = run_command("--help")
    assert result.returncode == 0 and all(name in result.stdout for name in COMMANDS)
    from tests.cli.conftest import SCRIPT

    helps = [seconds([str(SCRIPT), "--help"]) for _ in range(3)]
    bare = [seconds([sys.executable, "-c", "pass"]) for _ in range(3)]
    extra = statistics.median(helps) - statistics.median(bare)
    assert extra < BUDGET_SECONDS, (helps, bare)


def test_nothing_in_the_library_imports_the_command_line():
    package = pathlib.Path(pystematic_torch.__file__).parent
    importers = [
        path.relative_to(package) for path in package.rglob("*.py")
        if "cli" not in path.relative_to(package).parts
        and re.search(r"^\s*(from|import)\s+(pystematic_torch)?\.*cli\b", path.read_text(), re.M)
    ]  # fmt: skip
    assert importers == []
