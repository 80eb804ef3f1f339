"""The GPU inventory and choice, with a fake nvidia-smi on PATH: no GPU needed."""
import os
import pathlib
import stat
import subprocess
import sys

import pytest

from pystematic_torch.sweep import _gpus
from pystematic_torch.sweep._environment import member_environment, threads_per_process

ROOT = pathlib.Path(__file__).parents[2]
SMI_OUTPUT = "0, GPU-aaa, 5000\n1, GPU-bbb, 12\n2, GPU-ccc, [N/A]\n"


@pytest.fixture
def fake_smi(tmp_path, monkeypatch):
    """Put an nvidia-smi that prints ``output`` (and exits with ``code``) first on PATH."""

    def install(output=SMI_OUTPUT, code=0):
        script = tmp_path / "bin" / "nvidia-smi"
        script.parent.mkdir(exist_ok=True)
        script.write_text(f"#!/bin/sh\ncat <<'END'\n{output}END\nexit {code}\n")
        script.chmod(script.stat().st_mode | stat.S_IEXEC)
        monkeypatch.setenv("PATH", f"{script.parent}{os.pathsep}{os.environ['PATH']}")

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return install


def test_nvidia_smi_lists_every_gpu_by_uuid(fake_smi):
    fake_smi()
    assert _gpus.inventory() == [
        _gpus.Gpu("0", "GPU-aaa", 5000.0), _gpus.Gpu("1", "GPU-bbb", 12.0),
        _gpus.Gpu("2", "GPU-ccc", 0.0),
    ]  # fmt: skip


def test_the_sweeps_own_visible_devices_limit_the_inventory(fake_smi, monkeypatch):
    fake_smi()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,GPU-aaa,-1,1")
    # CUDA ignores everything from the first invalid entry on; memory comes from nvidia-smi.
    assert _gpus.inventory() == [_gpus.Gpu("2", "2", 0.0), _gpus.Gpu("GPU-aaa", "GPU-aaa", 5000.0)]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert _gpus.inventory() == []


def test_a_failing_nvidia_smi_means_what_torch_counts(fake_smi):
    fake_smi("NVIDIA-SMI has failed because it couldn't communicate with the driver\n", code=9)
    import torch

    assert len(_gpus.inventory()) == torch.cuda.device_count()


def test_choice_prefers_gpus_running_fewer_members_then_less_memory():
    gpus = [_gpus.Gpu("0", "a", 5000), _gpus.Gpu("1", "b", 10), _gpus.Gpu("2", "c", 200)]
    assert [g.label for g in _gpus.choose(gpus, {}, 1)] == ["1"]
    assert [g.label for g in _gpus.choose(gpus, {"b": 1}, 2)] == ["0", "2"]  # inventory order
    assert [g.label for g in _gpus.choose(gpus, {"a": 1, "b": 1, "c": 1}, 1)] == ["1"]
    assert _gpus.choose(gpus, {}, 0) == []


def test_the_environment_drops_launcher_variables_and_sets_gpus_and_threads():
    base = {"RANK": "1", "SLURM_JOB_ID": "5", "TORCHELASTIC_RUN_ID": "x", "HOME": "/home/u",
            "CUDA_VISIBLE_DEVICES": "0,1,2"}  # fmt: skip
    assert member_environment(base, ["GPU-b"], 4) == {
        "HOME": "/home/u", "CUDA_VISIBLE_DEVICES": "GPU-b", "OMP_NUM_THREADS": "4",
    }  # fmt: skip
    assert member_environment(base, None, None)["CUDA_VISIBLE_DEVICES"] == "0,1,2"
    assert member_environment({**base, "OMP_NUM_THREADS": "7"}, [], 2)["OMP_NUM_THREADS"] == "7"
    assert threads_per_process(1) is None
    assert threads_per_process(10**6) == 1


@pytest.mark.timeout(120)
def test_a_real_sweep_hands_out_gpus_from_nvidia_smi(fake_smi, tmp_path):
    fake_smi()
    (tmp_path / "report").mkdir()
    code = (
        "import pystematic_torch\n"
        "from tests.sweep.jobs.sweep_job import sweep_job\n"
        f"params = [dict(value=v, report={str(tmp_path / 'report')!r}, "
        f"output_dir={str(tmp_path / 'output')!r}) for v in (1, 2)]\n"
        "results = pystematic_torch.run_parameter_sweep(sweep_job, params, 2)\n"
        "print([r.gpus for r in results])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=100, cwd=ROOT)  # fmt: skip
    assert result.returncode == 0, result.stderr
    # GPU 2 reports no memory figure ([N/A]) and counts as unused; GPU 0 is the busiest.
    assert result.stdout.strip().splitlines()[-1] == "[('2',), ('1',)]"
    visible = {path.stem: path.read_text() for path in (tmp_path / "report").iterdir()}
    assert '"CUDA_VISIBLE_DEVICES": "GPU-ccc"' in visible["1-0"]
    assert '"CUDA_VISIBLE_DEVICES": "GPU-bbb"' in visible["2-0"]
