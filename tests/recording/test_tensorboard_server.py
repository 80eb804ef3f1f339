"""A real ``tensorboard --logdir`` server shows what the Recorder wrote, over its HTTP data API."""
import json
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest
import torch

from pystematic_torch.recording import Recorder
from tests.support.ranks import free_port

SERVER_TIMEOUT = 90


def get_json(port, path, **query):
    url = f"http://127.0.0.1:{port}{path}"
    if query:
        url += "?" + urllib.parse.urlencode(query)
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


@pytest.fixture
def tensorboard_server(tmp_path):
    logdir = tmp_path / "logs"
    logdir.mkdir()
    port = free_port()
    log = open(tmp_path / "tensorboard.log", "wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host",
         "127.0.0.1", "--port", str(port), "--reload_interval", "1"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        yield logdir, port, server
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


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
    # Steps 5 to 7 of this tag, recorded only by the abandoned run, remain visible here:
    # TensorBoard's default (Rust) data server drops a tag's later points only when the tag
    # is recorded again, and ignores the SessionLog.START event the Python loader honours.
    assert [(step, value) for _, step, value in rows][:5] == [(s, 2.0 * s) for s in range(5)]
