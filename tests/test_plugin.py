import pathlib
import statistics
import subprocess
import sys

import pytest

import pystematic_torch

HEAVY = ("tensorboard", "matplotlib", "h5py", "PIL")


def test_plugin_exposes_the_package_as_pystematic_torch():
    import pystematic

    assert pystematic.torch is pystematic_torch
    for name in pystematic_torch.__all__:
        assert getattr(pystematic.torch, name) is getattr(pystematic_torch, name)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("statement", ["import pystematic", "import pystematic_torch"])
def test_importing_loads_no_heavy_optional_library(statement):
    code = (
        f"{statement}; import sys; "
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=100)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.timeout(120)
def test_using_the_api_costs_little_on_top_of_importing_torch_and_pystematic():
    sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "benchmarks"))
    import import_time

    samples = import_time.touch_cost(runs=3)
    assert statistics.median(samples) <= import_time.BUDGET_SECONDS, samples


@pytest.mark.timeout(120)
def test_registering_the_plugin_does_not_import_torch():
    code = "import pystematic, sys; print('torch' in sys.modules, hasattr(pystematic, 'torch'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=100)
    assert out.stdout.split() == ["False", "True"], out.stderr


def test_public_names_resolve_lazily_and_completely():
    assert "Context" in dir(pystematic_torch)
    for name in pystematic_torch.__all__:
        assert getattr(pystematic_torch, name) is not None
    with pytest.raises(AttributeError, match="has no attribute 'Contxt'"):
        _ = pystematic_torch.Contxt
