"""run_parameter_sweep end to end: real member processes, their records and environments."""
import json
import os
import socket

import pytest

import pystematic_torch
from pystematic_torch import _run_record
from pystematic_torch.sweep import _gpus
from tests.sweep.jobs.sweep_job import sweep_job


def grid(tmp_path, *runs, report=True):
    """Parameter dicts writing into tmp_path, with a report folder for what members saw."""
    (tmp_path / "report").mkdir(exist_ok=True)
    extra = {"output_dir": str(tmp_path / "output")}
    if report:
        extra["report"] = str(tmp_path / "report")
    return [{**run, **extra} for run in runs]


def reports(tmp_path):
    return {path.stem: json.loads(path.read_text())
            for path in (tmp_path / "report").glob("*.json")}  # fmt: skip


def run_dirs(tmp_path):
    root = tmp_path / "output" / "sweep-job"
    return sorted(root.iterdir()) if root.exists() else []


@pytest.mark.timeout(180)
def test_every_member_runs_in_its_own_process_and_results_come_in_order(tmp_path):
    params = grid(tmp_path, {"value": 3}, {"value": 1}, {"value": 2})
    results = pystematic_torch.run_parameter_sweep(sweep_job, params, max_num_processes=2)

    assert [result.params["value"] for result in results] == [3.0, 1.0, 2.0]
    assert all(result.status == "finished" and result.exit_code == 0 for result in results)
    seen = reports(tmp_path)
    pids = {seen[f"{value}-0"]["pid"] for value in (1, 2, 3)}
    assert len(pids) == 3 and os.getpid() not in pids
    for result in results:
        assert result.duration_s > 0
        assert result.run_dir == _as_path(seen[f"{result.params['value']:g}-0"]["output_dir"])
        record = _run_record.read(result.run_dir)
        assert record["status"] == "finished" and record["exit_code"] == 0
        assert (result.run_dir / "scalars.csv").exists()


@pytest.mark.timeout(180)
def test_failing_members_do_not_stop_the_others_and_are_summarised(tmp_path):
    params = grid(tmp_path, {"mode": "raise", "value": 1}, {"mode": "exit", "value": 2},
                  {"mode": "kill", "value": 3}, {"mode": "ok", "value": 4},
                  {"mode": "exit143", "value": 5})  # fmt: skip
    with pytest.raises(pystematic_torch.SweepError) as caught:
        pystematic_torch.run_parameter_sweep(sweep_job, params, max_num_processes=2)

    results = caught.value.results
    assert [(r.status, r.exit_code) for r in results] == [
        ("failed", 1), ("failed", 3), ("failed", -9), ("finished", 0), ("preempted", 143),
    ]  # fmt: skip
    assert results[0].error == "ValueError: deliberate failure with value 1"
    message = str(caught.value)
    assert message.startswith("4 of 5 sweep runs did not finish:")
    assert "#1 mode=raise, value=1.0" in message and "ValueError: deliberate failure" in message
    assert "#3 mode=kill, value=3.0" in message and "exit code -9" in message
    assert str(results[0].run_dir / "log.txt") in message
    # The killed member's record said "running"; the sweep wrote what really happened, and
    # the member that exited 143 after its record said "failed" is recorded as preempted.
    killed = _run_record.read(results[2].run_dir)
    assert (killed["status"], killed["exit_code"]) == ("failed", -9)
    assert killed["ended_at"] is not None and killed["experiment"] == "sweep-job"
    assert _run_record.read(results[4].run_dir)["status"] == "preempted"


@pytest.mark.timeout(120)
def test_failures_can_be_returned_instead_of_raised(tmp_path):
    params = grid(tmp_path, {"mode": "raise"}, {"mode": "ok", "value": 2})
    results = pystematic_torch.run_parameter_sweep(sweep_job, params, raise_on_failure=False)
    assert [result.finished for result in results] == [False, True]


@pytest.mark.timeout(120)
def test_members_get_a_clean_environment(tmp_path, monkeypatch):
    inherited = {
        "RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4",
        "MASTER_ADDR": "10.1.2.3", "MASTER_PORT": "1234", "NODE_RANK": "1", "NNODES": "2",
        "NPROC_PER_NODE": "4", "SLURM_JOB_ID": "77", "SLURM_PROCID": "3", "SLURM_NTASKS": "8",
        "TORCHELASTIC_RUN_ID": "abc", "TORCHELASTIC_RESTART_COUNT": "1",
        "OMPI_COMM_WORLD_RANK": "3", "PMI_RANK": "3", "SUBPROCESS": "x",
    }  # fmt: skip
    for name, value in {**inherited, "MY_SETTING": "kept"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    params = grid(tmp_path, {"value": 1}, {"value": 2})
    pystematic_torch.run_parameter_sweep(sweep_job, params, max_num_processes=2)

    for seen in reports(tmp_path).values():
        environ = seen["environ"]
        assert not set(inherited) & set(environ), set(inherited) & set(environ)
        assert environ["MY_SETTING"] == "kept"
        assert seen["world"] == 1  # not mistaken for a rank of the surrounding job
        cpus = len(os.sched_getaffinity(0))
        assert environ["OMP_NUM_THREADS"] == str(max(1, cpus // 2))


@pytest.mark.timeout(120)
def test_a_thread_count_the_user_chose_is_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    pystematic_torch.run_parameter_sweep(sweep_job, grid(tmp_path, {"value": 1}, {"value": 2}),
                                         max_num_processes=2)  # fmt: skip
    assert {seen["environ"]["OMP_NUM_THREADS"] for seen in reports(tmp_path).values()} == {"3"}


def fake_inventory(monkeypatch, *gpus):
    monkeypatch.setattr(_gpus, "inventory", lambda: list(gpus))


@pytest.mark.timeout(120)
def test_members_get_the_least_used_gpus(tmp_path, monkeypatch):
    fake_inventory(monkeypatch, _gpus.Gpu("0", "GPU-a", 5000.0), _gpus.Gpu("1", "GPU-b", 10.0),
                   _gpus.Gpu("2", "GPU-c", 200.0))  # fmt: skip
    params = grid(tmp_path, {"value": 1}, {"value": 2}, {"value": 3, "cuda": False})
    results = pystematic_torch.run_parameter_sweep(sweep_job, params, max_num_processes=3)

    seen = reports(tmp_path)
    assert seen["1-0"]["environ"]["CUDA_VISIBLE_DEVICES"] == "GPU-b"  # least memory used
    assert seen["2-0"]["environ"]["CUDA_VISIBLE_DEVICES"] == "GPU-c"  # b runs a member now
    assert seen["3-0"]["environ"]["CUDA_VISIBLE_DEVICES"] == ""  # cuda=False: no GPU
    assert [result.gpus for result in results] == [("1",), ("2",), ()]


@pytest.mark.timeout(120)
def test_zero_gpus_per_process_hides_every_gpu_and_none_leaves_a_cpu_machine_alone(
    tmp_path, monkeypatch
):
    fake_inventory(monkeypatch)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    pystematic_torch.run_parameter_sweep(sweep_job, grid(tmp_path, {"value": 1}),
                                         num_gpus_per_process=0)  # fmt: skip
    assert reports(tmp_path)["1-0"]["environ"]["CUDA_VISIBLE_DEVICES"] == ""

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "left-alone")
    pystematic_torch.run_parameter_sweep(sweep_job, grid(tmp_path, {"value": 2}))
    assert reports(tmp_path)["2-0"]["environ"]["CUDA_VISIBLE_DEVICES"] == "left-alone"


@pytest.mark.timeout(240)
def test_concurrent_distributed_members_get_their_gpus_and_ports_despite_the_environment(
    tmp_path, monkeypatch
):
    fake_inventory(monkeypatch, *(_gpus.Gpu(str(i), f"GPU-{i}") for i in range(4)))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        # Inherited from a surrounding job: every member would try this (busy) port.
        monkeypatch.setenv("MASTER_PORT", str(taken.getsockname()[1]))
        monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
        monkeypatch.setenv("RANK", "0")
        monkeypatch.setenv("WORLD_SIZE", "1")
        monkeypatch.setenv("LOCAL_RANK", "0")
        params = grid(tmp_path, *({"value": value, "distributed": True, "nproc_per_node": 2}
                                  for value in (1, 2)))  # fmt: skip
        results = pystematic_torch.run_parameter_sweep(sweep_job, params, max_num_processes=2)

    assert [result.status for result in results] == ["finished", "finished"]
    seen = reports(tmp_path)
    assert {seen[key]["world"] for key in ("1-0", "1-1", "2-0", "2-1")} == {2}
    first = seen["1-0"]["environ"]["CUDA_VISIBLE_DEVICES"]
    second = seen["2-0"]["environ"]["CUDA_VISIBLE_DEVICES"]
    assert first == seen["1-1"]["environ"]["CUDA_VISIBLE_DEVICES"] == "GPU-0,GPU-1"
    assert second == seen["2-1"]["environ"]["CUDA_VISIBLE_DEVICES"] == "GPU-2,GPU-3"
    assert {result.gpus for result in results} == {("0", "1"), ("2", "3")}
    record = _run_record.read(results[0].run_dir)
    assert record["world_size"] == 2 and record["pid"] == seen["1-0"]["pid"]


@pytest.mark.parametrize(
    "params, kwargs, message",
    [
        ([{"valu": 1}], {}, "run #1 (valu=1, output_dir=OUT): 'valu' is not a recognized "
         "parameter name"),
        ([{"value": "high"}], {}, "run #1 (value=high, output_dir=OUT): Error when setting "
         "value for param 'value': could not convert string to float: 'high'"),
        ([{"local_rank": 1}], {}, "local_rank=1, output_dir=OUT): local_rank is set by "
         "pystematic itself"),
        ([{"nnodes": 2}], {}, "nnodes=2; a sweep runs on one machine"),
        ([{}], {"max_num_processes": 0}, "max_num_processes must be an int >= 1, got 0"),
        ([{}], {"num_gpus_per_process": -1}, "num_gpus_per_process must be None or an int"),
        ([{"distributed": True, "master_port": 29999}] * 2, {"max_num_processes": 2},
         "runs #1, #2 set master_port=29999 and may run at the same time"),
    ],
)  # fmt: skip
def test_bad_input_is_refused_before_anything_starts(tmp_path, params, kwargs, message):
    params = [{**run, "output_dir": str(tmp_path)} for run in params]
    with pytest.raises(pystematic_torch.ParameterError, match="nothing was started") as caught:
        pystematic_torch.run_parameter_sweep(sweep_job, params, **kwargs)
    assert message.replace("OUT", str(tmp_path)) in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_every_problem_is_listed_at_once(tmp_path):
    with pytest.raises(pystematic_torch.ParameterError) as caught:
        pystematic_torch.run_parameter_sweep(sweep_job, [{"valu": 1}, {"value": "x"}],
                                             max_num_processes=0)  # fmt: skip
    assert str(caught.value).count(";") == 2, caught.value


@pytest.mark.parametrize(
    "params, kwargs",
    [([{"value": 1}], {"num_gpus_per_process": 2}),
     ([{"distributed": True, "nproc_per_node": 2}], {})],
)  # fmt: skip
def test_more_gpus_than_present_is_refused_before_anything_starts(
    tmp_path, monkeypatch, params, kwargs
):
    fake_inventory(monkeypatch, _gpus.Gpu("0", "GPU-a"))
    params = [{**run, "output_dir": str(tmp_path)} for run in params]
    with pytest.raises(pystematic_torch.DeviceError, match=r"needs 2 GPU\(s\) but this process "
                       r"may use 1 \(GPUs: 0\); lower num_gpus_per_process"):  # fmt: skip
        pystematic_torch.run_parameter_sweep(sweep_job, params, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_a_distributed_member_needs_a_gpu_per_rank(tmp_path, monkeypatch):
    fake_inventory(monkeypatch, *(_gpus.Gpu(str(i), str(i)) for i in range(4)))
    with pytest.raises(pystematic_torch.ParameterError, match="needs 2 GPUs, but "
                       "num_gpus_per_process=1"):  # fmt: skip
        pystematic_torch.run_parameter_sweep(
            sweep_job, [{"distributed": True, "nproc_per_node": 2}], num_gpus_per_process=1
        )


def test_an_experiment_a_new_process_cannot_find_is_refused():
    import pystematic

    @pystematic.experiment
    def local_experiment(params):
        pass

    with pytest.raises(pystematic_torch.SweepError, match="is not reachable as "
                       r"tests.sweep.test_sweep.local_experiment; define it at the top level"):
        pystematic_torch.run_parameter_sweep(local_experiment, [{}])


def test_arguments_of_the_wrong_kind_are_type_errors():
    with pytest.raises(TypeError, match="needs a pystematic experiment"):
        pystematic_torch.run_parameter_sweep(lambda params: None, [{}])
    with pytest.raises(TypeError, match="needs a list of parameter dicts"):
        pystematic_torch.run_parameter_sweep(sweep_job, {"value": 1})


def _as_path(text):
    import pathlib

    return pathlib.Path(text)
