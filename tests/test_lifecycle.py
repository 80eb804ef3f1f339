"""What a run leaves behind in its process: nothing, however it ended."""
import os
import signal
import socket
import threading

import pystematic
import pytest
import torch

import pystematic_torch as pt
from pystematic_torch import _session


def make_experiment(body):
    @pystematic.experiment
    def lifecycle_probe(params):
        body(params)

    return lifecycle_probe


def test_a_distributed_run_restores_the_environment_and_the_next_run_starts(tmp_path):
    seen = {}

    def body(params):
        seen["rank"] = (os.environ["RANK"], os.environ["WORLD_SIZE"], pt.get_num_processes())
        seen["sigterm"] = signal.getsignal(signal.SIGTERM)

    before, handler_before = dict(os.environ), signal.getsignal(signal.SIGTERM)
    experiment = make_experiment(body)
    for _ in range(2):  # the second run would see a world of 1 "started by torchrun" if leaked
        experiment.run({"distributed": True, "cuda": False, "output_dir": str(tmp_path)})
        assert seen["rank"] == ("0", "1", 1)
        assert seen["sigterm"] is not handler_before  # preemption was armed during the run
        assert dict(os.environ) == before
        assert signal.getsignal(signal.SIGTERM) == handler_before
        assert not torch.distributed.is_initialized()


def test_a_failed_launch_leaves_nothing_running_and_the_next_run_starts(tmp_path):
    experiment = make_experiment(lambda params: None)
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        before = dict(os.environ)
        with pytest.raises(pt.LaunchError, match=f"master_port {port} is already in use"):
            experiment.run({"distributed": True, "cuda": False, "master_port": port,
                            "output_dir": str(tmp_path / "refused")})  # fmt: skip
    assert dict(os.environ) == before
    assert not (tmp_path / "refused").exists()  # refused before the run directory
    experiment.run({"cuda": False, "output_dir": str(tmp_path / "next")})  # not "already running"
    assert (tmp_path / "next").exists()


def test_an_experiment_that_raises_leaves_the_next_one_free_to_run(tmp_path):
    def body(params):
        raise ValueError("deliberate")

    with pytest.raises(ValueError, match="deliberate"):
        make_experiment(body).run({"cuda": False, "output_dir": str(tmp_path)})
    make_experiment(lambda params: None).run({"cuda": False, "output_dir": str(tmp_path)})


def test_ending_a_session_from_two_threads_runs_each_callback_once():
    calls = []
    entered = threading.Barrier(2)
    _session.start({"probe": True})
    for index in range(50):
        _session.call_at_exit(lambda index=index: calls.append(index))
    threads = [threading.Thread(target=lambda: (entered.wait(), _session.end())) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert sorted(calls) == list(range(50))
    assert _session.outcome() == _session.SUCCESS


def test_failing_callbacks_are_all_reported_after_every_callback_ran():
    ran = []

    def broken(name):
        def callback():
            ran.append(name)
            raise OSError(28, f"{name}: No space left on device")

        return callback

    _session.start({"probe": True})
    _session.call_at_exit(broken("first"))
    _session.call_at_exit(lambda: ran.append("healthy"))
    _session.call_at_exit(broken("last"))
    with pytest.raises(_session.TeardownError) as failure:
        _session.end(_session.FAILURE)
    assert ran == ["last", "healthy", "first"]  # newest first, and none skipped
    assert "first: No space left" in str(failure.value) and "last: No space" in str(failure.value)


def test_a_ctrl_c_swallowed_by_a_weakref_callback_still_ends_the_loop(tmp_path):
    from pystematic_torch.distributed import _preemption

    delivered = []

    def body(params):
        ctx = pt.Context()
        ctx.loader = pt.SmartDataLoader(list(range(10)), batch_size=1, loading_bar=False)
        for batch in ctx.loader:
            delivered.append(int(batch))
            if len(delivered) == 2:
                # What SIGINT's handler leaves behind when the KeyboardInterrupt it raised
                # went off inside a __del__ or a weakref callback, where Python ignores it.
                _preemption._interrupted.set()

    with pytest.raises(KeyboardInterrupt):
        make_experiment(body).run({"cuda": False, "output_dir": str(tmp_path)})
    assert delivered == [0, 1]
    assert _session.outcome() == _session.INTERRUPTED
    assert not _preemption.interrupted()  # a later loop outside the run is not affected


def test_the_first_ctrl_c_stops_a_loader_loop_after_its_batch_the_second_at_once(tmp_path):

    delivered, raised_at_once = [], []

    def body(params):
        ctx = pt.Context()
        ctx.loader = pt.SmartDataLoader(list(range(10)), batch_size=1, loading_bar=False)
        handler = signal.getsignal(signal.SIGINT)
        for batch in ctx.loader:
            delivered.append(int(batch))
            if len(delivered) == 2:
                handler(signal.SIGINT, None)  # the first Ctrl-C: noted, nothing raised here
                try:
                    handler(signal.SIGINT, None)  # the second: raised at once
                except KeyboardInterrupt:
                    raised_at_once.append(True)

    with pytest.raises(KeyboardInterrupt):
        make_experiment(body).run({"cuda": False, "output_dir": str(tmp_path)})
    assert delivered == [0, 1] and raised_at_once == [True]


def test_preemption_waits_for_an_accumulation_cycle_to_end(tmp_path):
    from pystematic_torch.distributed import _preemption

    seen = {"micro_steps": 0, "steps": 0}

    def body(params):
        ctx = pt.Context()
        ctx.model = torch.nn.Linear(2, 1)
        ctx.optimizer = torch.optim.SGD(ctx.model.parameters(), lr=0.1)
        ctx.loader = pt.SmartDataLoader(torch.randn(40, 2), batch_size=2, loading_bar=False)
        ctx.autotransform()
        ctx.accumulate(4)
        for x in ctx.loader:
            ctx.backward(ctx.model(x).pow(2).mean())
            seen["micro_steps"] += 1
            seen["steps"] += ctx.step_optimizer(ctx.optimizer)
            if seen["micro_steps"] == 2:
                _preemption._on_stop_signal(signal.SIGTERM, None)  # as the scheduler would

    with pytest.raises(SystemExit) as ended:
        make_experiment(body).run({"cuda": False, "output_dir": str(tmp_path)})
    assert ended.value.code == 143
    # Stopped after the cycle's 4th micro-step, not after the 2nd: no gradients were lost.
    assert seen == {"micro_steps": 4, "steps": 1}
    (checkpoint,) = tmp_path.glob("lifecycle-probe/*/checkpoint-preempted.pt")
    assert torch.load(checkpoint, weights_only=True)["loader"]["position"] == 4
