"""The default parameters, through every way pystematic can set them."""
import json
import shutil
import subprocess
import sys

import pystematic
import pytest
import yaml

EXPERIMENT = '''
import json, pystematic

NAMES = ["checkpoint", "cuda", "distributed", "nproc_per_node", "nnodes", "node_rank",
         "master_addr", "master_port"]

@pystematic.experiment
def show_params(params):
    values = {name: params[name] for name in NAMES}
    values["checkpoint"] = values["checkpoint"] and str(values["checkpoint"])
    print("PARAMS " + json.dumps(values))

if __name__ == "__main__":
    show_params.cli()
'''

NAMES = ["checkpoint", "cuda", "distributed", "nproc_per_node", "nnodes", "node_rank",
         "master_addr", "master_port"]  # fmt: skip


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "exp.py"
    path.write_text(EXPERIMENT)
    return path


def run_cli(script, *args, env=None):
    import json
    import os

    full_env = {**os.environ, **(env or {})}
    result = subprocess.run(
        [sys.executable, str(script), "--output-dir", str(script.parent / "output"), *args],
        capture_output=True, text=True, timeout=120, env=full_env, cwd=script.parent,
    )  # fmt: skip
    lines = [line for line in result.stdout.splitlines() if line.startswith("PARAMS ")]
    values = json.loads(lines[0][len("PARAMS "):]) if lines else None
    return result, values


@pytest.mark.timeout(120)
def test_defaults_help_and_parameters_file(script):
    result, values = run_cli(script)
    assert result.returncode == 0, result.stderr
    assert values == {
        "checkpoint": None, "cuda": True, "distributed": False, "nproc_per_node": 1,
        "nnodes": 1, "node_rank": 0, "master_addr": "127.0.0.1", "master_port": None,
    }  # fmt: skip
    (run_dir,) = (script.parent / "output" / "show-params").iterdir()
    written = yaml.safe_load((run_dir / "parameters.yaml").read_text())
    assert {name: written[name] for name in NAMES if name != "checkpoint"} == {
        name: values[name] for name in NAMES if name != "checkpoint"
    }

    help_text = subprocess.run(
        [sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=60,
        env={"COLUMNS": "200", **__import__("os").environ},
    ).stdout  # fmt: skip
    for flag in ("--checkpoint", "--cuda, --no-cuda", "--distributed", "--nproc-per-node",
                 "--nproc_per_node", "--nnodes", "--node-rank", "--node_rank", "--master-addr",
                 "--master_addr", "--master-port", "--master_port", "--precision"):  # fmt: skip
        assert flag in help_text, flag
    assert "Number of processes to run on this" in help_text  # rich wraps the column


@pytest.mark.timeout(120)
def test_both_spellings_flags_and_environment(script, tmp_path):
    result, values = run_cli(
        # Not --distributed: that would start the job. Parsing is what is checked here.
        script, "--nproc_per_node", "4", "--node-rank", "1", "--nnodes", "2", "--no-cuda",
        "--no-distributed", "--master_addr", "127.0.0.9", "--master-port", "1234",
        "--checkpoint", str(tmp_path / "run"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert values == {
        "checkpoint": str(tmp_path / "run"), "cuda": False, "distributed": False,
        "nproc_per_node": 4, "nnodes": 2, "node_rank": 1, "master_addr": "127.0.0.9",
        "master_port": 1234,
    }  # fmt: skip
    env = {"NPROC_PER_NODE": "3", "NNODES": "4", "NODE_RANK": "2", "MASTER_ADDR": "node7",
           "MASTER_PORT": "4321"}  # fmt: skip
    result, values = run_cli(script, "--nproc-per-node", "2", env=env)
    assert result.returncode == 0, result.stderr
    assert (values["nproc_per_node"], values["nnodes"], values["node_rank"]) == (2, 4, 2)
    assert (values["master_addr"], values["master_port"]) == ("node7", 4321)


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "args, message",
    [
        (["--nproc_per_node", "0"], "nproc_per_node must be >= 1, got 0"),
        (["--nnodes", "0"], "nnodes must be >= 1, got 0"),
        (["--node_rank", "-1"], "node_rank must be >= 0, got -1"),
        (["--nnodes", "2", "--node_rank", "2"], "node_rank must be in 0..1 for nnodes=2, got 2"),
        (["--master_port", "70000"], "master_port must be in 1..65535, or 0 to pick a free"),
        (["--master_port", "x"], "master_port must be an integer, got 'x'"),
    ],
)
def test_invalid_values_are_refused_before_any_work(script, args, message):
    result, values = run_cli(script, *args)
    output = " ".join((result.stdout + result.stderr).split())
    assert result.returncode != 0 and values is None
    assert message in output, output
    assert "Traceback" not in output
    assert not (script.parent / "output").exists()


def dict_experiment():
    @pystematic.experiment
    def from_dict(params):
        from_dict.seen = dict(params)

    return from_dict


def test_dict_and_params_file_values_are_converted_and_checked(tmp_path):
    exp = dict_experiment()
    exp.run({"nproc_per_node": "2", "master_port": 8080, "output_dir": str(tmp_path)})
    assert exp.seen["nproc_per_node"] == 2 and exp.seen["master_port"] == 8080

    params_file = tmp_path / "params.yaml"
    params_file.write_text("nnodes: 3\nnode_rank: 2\ncuda: false\n")
    exp.run({"params_file": params_file, "output_dir": str(tmp_path)})
    assert (exp.seen["nnodes"], exp.seen["node_rank"], exp.seen["cuda"]) == (3, 2, False)

    with pytest.raises(pystematic.core.Error, match="node_rank must be in 0..0 for nnodes=1"):
        exp.run({"node_rank": 1, "output_dir": str(tmp_path / "refused")})
    assert not (tmp_path / "refused").exists()


@pytest.mark.timeout(120)
def test_only_the_documented_environment_variables_feed_parameters(script, tmp_path):
    # Names with other meanings in many shells: pystematic would read each as the parameter
    # of the same name (CUDA=/usr/local/cuda used to fail with "Boolean value expected").
    unrelated = {"CUDA": "/usr/local/cuda", "CHECKPOINT": str(tmp_path / "nowhere.pt"),
                 "DISTRIBUTED": "1", "DISTRIBUTED_TIMEOUT": "x", "LOCAL_RANK": "3",
                 "SUBPROCESS": str(tmp_path / "parameters.yaml")}  # fmt: skip
    result, values = run_cli(script, env=unrelated)
    assert result.returncode == 0, result.stderr
    assert (values["cuda"], values["checkpoint"], values["distributed"]) == (True, None, False)
    (run_dir,) = (script.parent / "output" / "show-params").iterdir()
    assert (run_dir / "log.txt").exists()  # a main process, not a "subprocess" of rank 3


@pytest.mark.timeout(120)
def test_ranks_asked_for_without_distributed_are_named_in_a_warning(script):
    result, values = run_cli(script, "--nproc_per_node", "2")
    assert result.returncode == 0, result.stderr
    output = " ".join((result.stdout + result.stderr).split())
    assert "nproc_per_node=2 has no effect without --distributed" in output


PRECISION_EXPERIMENT = '''
import json, pystematic, torch

@pystematic.experiment
def show_precision(params):
    explicit = pystematic.torch.Context(precision="32")
    with explicit.autocast():
        explicit_autocast = torch.is_autocast_enabled("cpu")
    ctx = pystematic.torch.Context()
    print("PARAMS " + json.dumps({"precision": params["precision"],
                                  "explicit_autocast": explicit_autocast}), flush=True)
    with ctx.autocast():
        print("AUTOCAST " + json.dumps([torch.is_autocast_enabled("cpu"),
                                        str(torch.get_autocast_dtype("cpu"))]))

if __name__ == "__main__":
    show_precision.cli()
'''


@pytest.mark.timeout(200)
def test_the_context_follows_precision_and_refuses_what_the_device_cannot_run(tmp_path):
    script = tmp_path / "exp.py"
    script.write_text(PRECISION_EXPERIMENT)

    def autocast_line(result):
        lines = [line for line in result.stdout.splitlines() if line.startswith("AUTOCAST ")]
        return json.loads(lines[0][len("AUTOCAST "):]) if lines else None

    result, values = run_cli(script, "--no-cuda", env={"PRECISION": "bf16-mixed"})
    assert result.returncode == 0, result.stderr
    assert values == {"precision": "32", "explicit_autocast": False}  # no variable is read
    assert autocast_line(result) == [False, "torch.bfloat16"]

    result, values = run_cli(script, "--no-cuda", "--precision", "bf16-mixed")
    assert result.returncode == 0, result.stderr
    assert values == {"precision": "bf16-mixed", "explicit_autocast": False}
    assert autocast_line(result) == [True, "torch.bfloat16"]
    recorded = [yaml.safe_load((run / "parameters.yaml").read_text())["precision"]
                for run in (tmp_path / "output" / "show-precision").iterdir()]  # fmt: skip
    assert sorted(recorded) == ["32", "bf16-mixed"]

    result, values = run_cli(script, "--no-cuda", "--precision", "16-mixed")
    output = result.stdout + result.stderr
    assert result.returncode == 1 and values["precision"] == "16-mixed"
    assert autocast_line(result) is None
    assert "PrecisionError: precision '16-mixed' needs a CUDA GPU, but the context is on cpu; " \
        "use 'bf16-mixed' there" in " ".join(output.split())  # fmt: skip

    shutil.rmtree(tmp_path / "output")
    result, values = run_cli(script, "--precision", "fp16")
    output = " ".join((result.stdout + result.stderr).split())
    assert result.returncode != 0 and values is None and "Traceback" not in output
    assert "precision must be one of '32', 'bf16-mixed', '16-mixed', got 'fp16'; for 'fp16' " \
        "write '16-mixed'." in output  # fmt: skip
    assert not (tmp_path / "output").exists()
