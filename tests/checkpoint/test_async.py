"""blocking=False: a snapshot in host memory, written by a background thread."""
import os
import threading

import pytest
import torch
from torch import nn

import pystematic_torch as pt
from pystematic_torch import _session
from pystematic_torch.checkpoint import ContextState, _atomic, _snapshot
from tests.checkpoint.test_weights_only import ACCEPTED, same


class GatedSave:
    """Replaces torch.save in the writer: records each write and holds it until released."""

    def __init__(self, monkeypatch, fail=None):
        self.real = torch.save
        self.gate = threading.Event()
        self.events = []
        self.niceness = []
        self.fail = fail
        monkeypatch.setattr(_atomic.torch, "save", self)

    def __call__(self, obj, file):
        checkpoint_id = obj["_pystematic_torch"]["id"]
        self.events.append(("start", checkpoint_id))
        self.niceness.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        assert self.gate.wait(60), "the test never released the write"
        if self.fail:
            raise self.fail
        self.real(obj, file)
        self.events.append(("end", checkpoint_id))


def test_the_call_returns_before_the_write_and_the_file_holds_the_state_of_the_call(
    tmp_path, monkeypatch
):
    writes = GatedSave(monkeypatch)
    weights = torch.zeros(4)
    state = {"w": weights, "history": [1.0], "inner": {"step": 1}}
    path = pt.save_checkpoint(state, id=1, directory=tmp_path, blocking=False)
    assert path == tmp_path / "checkpoint-1.pt" and not path.exists()  # still being written
    weights.add_(5)  # training goes on and changes everything in place
    state["history"].append(2.0)
    state["inner"]["step"] = 2
    writes.gate.set()
    pt.wait_for_checkpoints()
    loaded = pt.load_checkpoint(path)
    assert torch.equal(loaded["w"], torch.zeros(4))
    # The writer yields the CPU to the training loop.
    assert writes.niceness == [min(os.getpriority(os.PRIO_PROCESS, 0) + 10, 19)]
    assert loaded["history"] == [1.0] and loaded["inner"] == {"step": 1}


class Entered:
    """A durable whose flush signals that a save_checkpoint call has begun."""

    def __init__(self):
        self.event = threading.Event()

    def flush(self):
        self.event.set()


@pytest.mark.timeout(60)
def test_the_next_save_waits_for_the_write_in_flight(tmp_path, monkeypatch):
    writes = GatedSave(monkeypatch)
    pt.save_checkpoint({"v": 1}, id=1, directory=tmp_path, blocking=False)
    entered = Entered()
    _session.register_durable(entered)
    try:
        second = threading.Thread(
            target=pt.save_checkpoint, args=({"v": 2},), kwargs={"id": 2, "directory": tmp_path}
        )
        second.start()
        assert entered.event.wait(30)  # the second save has begun while the first is held
        writes.gate.set()
        second.join(30)
    finally:
        _session.unregister_durable(entered)
    assert writes.events == [("start", "1"), ("end", "1"), ("start", "2"), ("end", "2")]


def test_a_failed_background_write_is_raised_by_the_next_save(tmp_path, monkeypatch):
    pt.save_checkpoint({"v": 0}, id=0, directory=tmp_path)
    writes = GatedSave(monkeypatch, fail=OSError(28, "No space left on device"))
    writes.gate.set()
    pt.save_checkpoint({"v": 1}, id=1, directory=tmp_path, blocking=False)
    with pytest.raises(pt.CheckpointError, match=r"Writing checkpoint .*checkpoint-1\.pt in the "
                       r"background failed: OSError: .*No space left.* are intact") as info:
        pt.save_checkpoint({"v": 2}, id=2, directory=tmp_path)
    assert isinstance(info.value.__cause__, OSError)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-0.pt"]  # nothing new
    monkeypatch.undo()
    pt.save_checkpoint({"v": 2}, id=2, directory=tmp_path)  # reported once, then cleared
    assert pt.load_checkpoint(tmp_path / "checkpoint-0.pt") == {"v": 0}


def test_a_failed_background_write_is_raised_by_wait_for_checkpoints(
    tmp_path, monkeypatch, caplog
):
    writes = GatedSave(monkeypatch, fail=PermissionError(13, "Permission denied"))
    pt.save_checkpoint({"v": 1}, id=1, directory=tmp_path, blocking=False)
    writes.gate.set()
    with pytest.raises(pt.CheckpointError, match="PermissionError: .*Permission denied"):
        pt.wait_for_checkpoints()
    assert "checkpoint-1.pt in the background failed: PermissionError" in caplog.text  # at once
    pt.wait_for_checkpoints()  # nothing left to report


def test_the_end_of_the_experiment_waits_for_the_write(tmp_path, monkeypatch, run_experiment):
    writes = GatedSave(monkeypatch)
    seen_at_teardown = []

    def body(params):
        run_dir = tmp_path / "run"
        # Registered first, so it runs after the checkpoint's own wait (newest first).
        _session.call_at_exit(lambda: seen_at_teardown.append(writes.events[:]))
        pt.save_checkpoint({"v": 1}, id=1, directory=run_dir, blocking=False)
        threading.Thread(target=writes.gate.set).start()

    run_experiment(body)
    assert seen_at_teardown == [[("start", "1"), ("end", "1")]]
    assert pt.load_checkpoint(tmp_path / "run" / "checkpoint-1.pt") == {"v": 1}


def test_a_write_that_fails_at_the_end_of_the_experiment_fails_the_run(
    tmp_path, monkeypatch, run_experiment
):
    writes = GatedSave(monkeypatch, fail=OSError(5, "Input/output error"))
    writes.gate.set()

    def body(params):
        pt.save_checkpoint({"v": 1}, id=1, blocking=False)

    with pytest.raises(_session.TeardownError, match=r"Writing checkpoint .*checkpoint-1\.pt in "
                                                     r"the background failed: OSError"):
        run_experiment(body)


@pytest.mark.filterwarnings("ignore:.*(Sparse CSR|quantize|TypedStorage):UserWarning")
@pytest.mark.parametrize("kind", ACCEPTED)
def test_the_snapshot_saves_what_a_blocking_save_saves(tmp_path, kind):
    value = ACCEPTED[kind]()
    pt.save_checkpoint({"value": value}, id="now", directory=tmp_path)
    pt.save_checkpoint({"value": value}, id="later", directory=tmp_path, blocking=False)
    pt.wait_for_checkpoints()
    blocking = torch.load(tmp_path / "checkpoint-now.pt", weights_only=True)["value"]
    background = torch.load(tmp_path / "checkpoint-later.pt", weights_only=True)["value"]
    same(blocking, background)


def test_the_snapshot_keeps_shared_storage_tied_weights_and_module_metadata():
    base = torch.arange(12.0)
    tied = nn.Parameter(torch.ones(3))
    model_state = nn.BatchNorm1d(2).state_dict()
    state = ContextState(base=base, view=base[2:8].view(2, 3), a=tied, b=tied, bn=model_state)
    copied = _snapshot.snapshot(state)
    assert type(copied) is ContextState and copied["a"] is copied["b"]
    assert type(copied["a"]) is nn.Parameter and copied["a"].requires_grad
    shared = copied["view"].untyped_storage().data_ptr()
    assert shared == copied["base"].untyped_storage().data_ptr() != base.data_ptr()
    assert torch.equal(copied["view"], base[2:8].view(2, 3))
    assert copied["bn"]._metadata == model_state._metadata


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_tensors_are_copied_into_pinned_host_memory(tmp_path):
    weights = torch.randn(1024, 1024, device="cuda")
    expected = weights.cpu()
    copied = _snapshot.snapshot({"w": weights, "view": weights[0]})
    weights.zero_()  # queued after the copy on the same stream
    assert copied["w"].device.type == "cpu" and copied["w"].is_pinned()
    assert torch.equal(copied["w"], expected) and torch.equal(copied["view"], expected[0])
    assert copied["view"].untyped_storage().data_ptr() == copied["w"].untyped_storage().data_ptr()
    weights.copy_(expected.cuda())
    pt.save_checkpoint({"w": weights}, id=1, directory=tmp_path, blocking=False)
    weights.zero_()
    pt.wait_for_checkpoints()
    loaded = pt.load_checkpoint(tmp_path / "checkpoint-1.pt")
    assert loaded["w"].device.type == "cpu" and torch.equal(loaded["w"], expected)
