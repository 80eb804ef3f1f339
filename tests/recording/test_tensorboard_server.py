"""A real ``tensorboard --logdir`` server shows what the Recorder wrote, over its HTTP data API.

The server is TensorBoard's default one (its Rust data server when installed), started on a
port it chooses itself; the tests ask it what its web page asks.
"""
import json
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pystematic
import pytest
import torch

from pystematic_torch import _session
from pystematic_torch.recording import Recorder

SERVER_TIMEOUT = 90
_LISTENING = re.compile(rb"TensorBoard \S+ at http://127\.0\.0\.1:(\d+)/")


def get_json(port, path, **query):
    url = f"http://127.0.0.1:{port}{path}"
    if query:
        url += "?" + urllib.parse.urlencode(query)
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def post_json(port, path, body):
    """POST a JSON request as TensorBoard's HParams page does (as text/plain)."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
        headers={"Content-Type": "text/plain"}, method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture(params=["auto", "false"], ids=["default-server", "python-loader"])
def tensorboard_server(tmp_path, request):
    """A TensorBoard server on ``tmp_path/logs``: yields (logdir, port, process).

    Once as users get it (``--load_fast=auto``: the Rust data server, installed with
    tensorboard) and once with its Python event loader, which reads files differently.
    """
    logdir = tmp_path / "logs"
    logdir.mkdir()
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host",
         "127.0.0.1", "--port", "0", "--reload_interval", "1", "--load_fast", request.param],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        port = None
        output = b""
        for line in server.stdout:  # the server says where it listens once it does
            output += line
            found = _LISTENING.search(line)
            if found:
                port = int(found.group(1))
                break
        assert port is not None, f"tensorboard did not start: {output.decode()}"
        yield logdir, port, server
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        server.stdout.close()


def poll(port, path, ready, deadline, **query):
    """GET ``path`` until ``ready(answer)`` holds; the last answer (or error) on timeout."""
    answer = None
    while time.monotonic() < deadline:
        try:
            answer = get_json(port, path, **query)
            if ready(answer):
                return answer
        except OSError as error:  # not listening yet, or the run is not loaded yet
            answer = error
        time.sleep(0.5)
    return answer


@pytest.mark.timeout(SERVER_TIMEOUT + 30)
def test_tensorboard_serves_the_recorded_scalars_of_a_resumed_run(tensorboard_server):
    logdir, port, server = tensorboard_server
    run = logdir / "resumed"
    first = Recorder(run, file=False)
    for step in range(8):
        if step == 5:
            checkpoint = first.state_dict()
        first.scalar("train/loss", float(step))
        first.scalar("train/tensor", torch.tensor(step * 2))
        first.step()
    first.close()
    with Recorder(run, file=False) as second:
        second.load_state_dict(checkpoint)
        for _ in range(5):
            second.scalar("train/loss", second.count + 0.5)
            second.step()
        second.params({"lr": 0.01}, metrics={"val/accuracy": 0.5})

    deadline = time.monotonic() + SERVER_TIMEOUT
    expected = [(s, float(s)) for s in range(5)] + [(s, s + 0.5) for s in range(5, 10)]
    answer = poll(
        port, "/data/plugin/scalars/scalars",
        lambda rows: [(step, value) for _, step, value in rows] == expected,
        deadline, run="resumed", tag="train/loss",
    )
    assert server.poll() is None, "tensorboard exited"
    assert isinstance(answer, list), f"no scalars from tensorboard: {answer!r}"
    assert [(step, value) for _, step, value in answer] == expected
    tags = get_json(port, "/data/plugin/scalars/tags")
    assert set(tags["resumed"]) == {"train/loss", "train/tensor", "val/accuracy"}
    rows = get_json(port, "/data/plugin/scalars/scalars", run="resumed", tag="train/tensor")
    # Steps 5 to 7 of this tag were recorded only by the abandoned continuation, which the
    # resume removed from the event files.
    assert [(step, value) for _, step, value in rows] == [(s, 2.0 * s) for s in range(5)]


# -- the HParams tab ----------------------------------------------------------------------

failing_runs = set()


@pystematic.parameter(name="lr", type=float, default=0.1, help="Learning rate.")
@pystematic.parameter(name="optimizer", type=str, default="sgd", help="Optimizer.")
@pystematic.parameter(name="batch_size", type=int, default=64, help="Batch size.")
@pystematic.parameter(name="warmup", type=int, default=None, help="Warm-up steps.")
@pystematic.experiment
def hparams_run(params):
    recorder = pystematic.torch.Recorder()
    recorder.params(params)  # the documented usage: once, at the start
    for step in range(3):
        recorder.scalar("train/loss", params["lr"] * (3 - step))
        recorder.step()
    if params["optimizer"] in failing_runs:
        raise RuntimeError("the loss diverged")
    recorder.scalar("val/accuracy", 0.5 + params["lr"])


def preempted_run(run_dir, params):
    """A run that the scheduler preempts: the session ends with PREEMPTED, as the plugin
    ends it after the preemption checkpoint."""
    _session.start(params)
    try:
        recorder = Recorder(run_dir)
        recorder.params(params, metrics={"val/accuracy": 0.25})
        recorder.scalar("train/loss", 1.0)
    finally:
        _session.end(_session.PREEMPTED)


def session_groups(port, experiment):
    """The session groups as the HParams page asks for them: every column, every status."""
    columns = [{"hparam": info["name"], "order": "ORDER_UNSPECIFIED", "includeInResult": True}
               for info in experiment["hparamInfos"]]  # fmt: skip
    columns += [{"metric": info["name"], "order": "ORDER_UNSPECIFIED", "includeInResult": True}
                for info in experiment.get("metricInfos", [])]  # fmt: skip
    request = {
        "experimentName": "", "colParams": columns, "startIndex": 0, "sliceSize": 100,
        "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE",
                            "STATUS_RUNNING"],
    }  # fmt: skip
    return post_json(port, "/data/plugin/hparams/session_groups", request)


@pytest.mark.timeout(SERVER_TIMEOUT + 60)
def test_hparams_tab_shows_differing_parameters_first_with_metrics_and_status(
    tensorboard_server,
):
    logdir, port, server = tensorboard_server
    hparams_run.run({"output_dir": str(logdir), "lr": 0.1, "optimizer": "sgd"})
    hparams_run.run({"output_dir": str(logdir), "lr": 0.01, "optimizer": "adam",
                     "warmup": 100})  # fmt: skip
    failing_runs.add("rmsprop")
    with pytest.raises(RuntimeError, match="diverged"):
        hparams_run.run({"output_dir": str(logdir), "lr": 0.001, "optimizer": "rmsprop",
                         "warmup": 200})  # fmt: skip
    framework = {"output_dir": str(logdir), "random_seed": 7, "cuda": True, "debug": False,
                 "checkpoint": None, "distributed": False}  # fmt: skip
    preempted_run(logdir / "preempted", {**framework, "lr": 0.3, "optimizer": "sgd",
                                         "batch_size": 64, "warmup": None})  # fmt: skip

    deadline = time.monotonic() + SERVER_TIMEOUT

    def all_runs_loaded(answer):
        groups = session_groups(port, answer).get("sessionGroups", [])
        return len(groups) == 4 and all(g["sessions"][0].get("endTimeSecs") for g in groups)

    experiment = poll_post(port, "/data/plugin/hparams/experiment", {"experimentName": ""},
                           all_runs_loaded, deadline)  # fmt: skip
    assert server.poll() is None, "tensorboard exited"
    assert isinstance(experiment, dict), f"no experiment from tensorboard: {experiment!r}"
    infos = experiment["hparamInfos"]
    names = [info["name"] for info in infos]
    differs = {info["name"]: info.get("differs", False) for info in infos}

    # The parameters that differ between runs come first, the user's before the
    # framework's; the page ticks the first five columns.
    assert names[:3] == ["lr", "optimizer", "warmup"]
    assert all(differs[name] for name in names[:3])
    assert names[3] == "~pystematic.random_seed" and differs[names[3]]
    own = [n for n in names if not n.startswith("~")]
    assert own == ["lr", "optimizer", "warmup", "batch_size"]
    first_framework = min(names.index(n) for n in names if n.startswith("~") and not differs[n])
    assert names.index("batch_size") < first_framework
    # Every framework parameter is recorded, under its prefix, but None ones (checkpoint).
    assert {"~pystematic.cuda", "~pystematic.debug", "~pystematic.distributed",
            "~pystematic.nproc_per_node", "~pystematic.distributed_timeout",
            "~pystematic.output_dir"} <= set(names)  # fmt: skip
    assert "~pystematic.checkpoint" not in names and "checkpoint" not in names
    # None is an empty cell, so warmup stays a number column.
    assert next(i for i in infos if i["name"] == "warmup")["type"] == "DATA_TYPE_FLOAT64"
    # Every run's scalars are offered as metrics, also for runs that passed no metrics=.
    metrics = {info["name"]["tag"] for info in experiment["metricInfos"]}
    assert {"train/loss", "val/accuracy"} <= metrics

    groups = {g["name"].split("/")[0] if g["name"] == "preempted" else g["hparams"]["optimizer"]: g
              for g in session_groups(port, experiment)["sessionGroups"]}  # fmt: skip
    assert set(groups) == {"sgd", "adam", "rmsprop", "preempted"}
    status = {name: group["sessions"][0]["status"] for name, group in groups.items()}
    assert status == {"sgd": "STATUS_SUCCESS", "adam": "STATUS_SUCCESS",
                      "rmsprop": "STATUS_FAILURE", "preempted": "STATUS_RUNNING"}  # fmt: skip
    for group in groups.values():
        session = group["sessions"][0]
        assert 0 < session["startTimeSecs"] <= session["endTimeSecs"] <= time.time()
        metric_values = {m["name"]["tag"]: m["value"] for m in group["metricValues"]}
        assert "train/loss" in metric_values
    assert "warmup" not in groups["sgd"]["hparams"]  # None: an empty cell
    assert groups["adam"]["hparams"]["warmup"] == 100
    assert groups["sgd"]["metricValues"] and {
        m["name"]["tag"]: m["value"] for m in groups["sgd"]["metricValues"]
    }["val/accuracy"] == pytest.approx(0.6)


def poll_post(port, path, body, ready, deadline):
    """POST ``body`` to ``path`` until ``ready(answer)`` holds; the last answer on timeout."""
    answer = None
    while time.monotonic() < deadline:
        try:
            answer = post_json(port, path, body)
            if ready(answer):
                return answer
        except OSError as error:  # the runs are not loaded yet
            answer = error
        time.sleep(0.5)
    return answer
