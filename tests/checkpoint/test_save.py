import collections
import copy
import datetime
import os

import pytest
import torch

import pystematic_torch as pt
from pystematic_torch import _session
from pystematic_torch._version import __version__
from pystematic_torch.checkpoint import ContextState, _atomic

METADATA = "_pystematic_torch"


def test_save_writes_atomically_and_loads_weights_only(tmp_path):
    state = {"epoch": 3, "weights": torch.arange(4.0), "nested": [1, (2, "x"), {"k": None}]}
    path = pt.save_checkpoint(state, id=3, directory=tmp_path)
    assert path == tmp_path / "checkpoint-3.pt"
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-3.pt"]  # no temporary file left
    raw = torch.load(path, weights_only=True)
    assert sorted(raw) == [METADATA, "epoch", "nested", "weights"]
    loaded = pt.load_checkpoint(path)
    assert sorted(loaded) == ["epoch", "nested", "weights"]  # the metadata is taken out
    assert loaded["epoch"] == 3 and torch.equal(loaded["weights"], torch.arange(4.0))
    assert loaded["nested"] == [1, (2, "x"), {"k": None}]
    assert METADATA not in state  # the caller's dict is untouched


def test_saving_an_existing_id_replaces_it(tmp_path):
    for value in (1, 2, 3):  # the best-model pattern: the same id at every improvement
        pt.save_checkpoint({"v": value}, id="best", directory=tmp_path)
    assert pt.load_checkpoint(tmp_path / "checkpoint-best.pt") == {"v": 3}
    assert os.listdir(tmp_path) == ["checkpoint-best.pt"]


def test_overwrite_false_refuses_to_replace(tmp_path):
    pt.save_checkpoint({"v": 1}, id="final", directory=tmp_path, overwrite=False)
    with pytest.raises(pt.CheckpointError, match="already exists and overwrite=False; use "):
        pt.save_checkpoint({"v": 2}, id="final", directory=tmp_path, overwrite=False)
    assert pt.load_checkpoint(tmp_path / "checkpoint-final.pt") == {"v": 1}


def test_a_write_that_fails_halfway_leaves_the_previous_file(tmp_path, monkeypatch):
    pt.save_checkpoint({"v": torch.ones(1000)}, id="best", directory=tmp_path)

    def half_a_file_then_disk_full(obj, file):
        file.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_atomic.torch, "save", half_a_file_then_disk_full)
    with pytest.raises(pt.CheckpointError, match=r"Could not write checkpoint .*checkpoint-best"
                       r"\.pt: OSError: .*No space left.*written before it are intact"):
        pt.save_checkpoint({"v": torch.zeros(1000)}, id="best", directory=tmp_path)
    monkeypatch.undo()
    assert torch.equal(pt.load_checkpoint(tmp_path / "checkpoint-best.pt")["v"], torch.ones(1000))
    assert os.listdir(tmp_path) == ["checkpoint-best.pt"]


def test_a_checkpoint_records_the_run_that_wrote_it(run_experiment):
    def body(params):
        ctx = pt.Context()
        ctx.epoch = 1
        ctx.model = torch.nn.Linear(params["hidden"], 2)
        pt.save_checkpoint(ctx.state_dict(), id=1)
        pt.save_checkpoint(ctx.model.state_dict(), id="deploy")

    run_dir = run_experiment(body, hidden=16)
    context = pt.checkpoint_info(run_dir / "checkpoint-1.pt")
    model_only = pt.checkpoint_info(run_dir / "checkpoint-deploy.pt")
    assert (context.kind, context.sequence, context.id) == ("context", 1, "1")
    assert (model_only.kind, model_only.sequence, model_only.id) == ("state", 2, "deploy")
    assert context.version == __version__ and context.world_size == 1
    assert context.params["hidden"] == 16
    assert context.params["output_dir"] == str(run_dir.parents[1])  # paths become strings
    saved_at = datetime.datetime.fromisoformat(context.saved_at)
    assert abs(datetime.datetime.now(datetime.timezone.utc) - saved_at).total_seconds() < 600
    # Readers that do not use pystematic-torch find it under the reserved key.
    raw = torch.load(run_dir / "checkpoint-1.pt", weights_only=True)[METADATA]
    assert {"version", "params", "world_size", "sequence", "kind", "saved_at"} <= set(raw)
    assert pt.checkpoint_info(run_dir) == context  # the directory means its Context checkpoint


def test_outside_an_experiment_no_parameters_are_recorded(tmp_path):
    pt.save_checkpoint({"v": 1}, id=1, directory=tmp_path)
    info = pt.checkpoint_info(tmp_path / "checkpoint-1.pt")
    assert info.params is None and info.kind == "state" and info.sequence == 1


def test_files_without_metadata_still_load(tmp_path):
    torch.save({"a": torch.ones(2)}, tmp_path / "plain.pt")
    torch.save(torch.arange(3), tmp_path / "tensor.pt")
    assert torch.equal(pt.load_checkpoint(tmp_path / "plain.pt")["a"], torch.ones(2))
    assert torch.equal(pt.load_checkpoint(tmp_path / "tensor.pt"), torch.arange(3))
    info = pt.checkpoint_info(tmp_path / "plain.pt")
    assert info.kind is None and info.sequence is None and info.params is None


def test_a_module_state_dict_keeps_its_version_metadata(tmp_path):
    model = torch.nn.BatchNorm1d(3)
    pt.save_checkpoint(model.state_dict(), id="bn", directory=tmp_path)
    loaded = pt.load_checkpoint(tmp_path / "checkpoint-bn.pt")
    assert type(loaded) is collections.OrderedDict
    assert loaded._metadata == model.state_dict()._metadata
    torch.nn.BatchNorm1d(3).load_state_dict(loaded)


def test_a_context_state_saved_by_hand_still_loads_weights_only(tmp_path):
    ctx = pt.Context()
    ctx.model = torch.nn.Linear(2, 2)
    torch.save(ctx.state_dict(), tmp_path / "by-hand.pt")
    loaded = torch.load(tmp_path / "by-hand.pt", weights_only=True)
    assert list(loaded) == ["model", "_random_state"]
    pt.save_checkpoint(ctx.state_dict(), id=1, directory=tmp_path)
    assert type(pt.load_checkpoint(tmp_path / "checkpoint-1.pt")) is dict


def test_a_copy_of_a_context_state_is_still_one(tmp_path):
    ctx = pt.Context()
    ctx.model = torch.nn.Linear(2, 2)
    best = copy.deepcopy(ctx.state_dict())  # the keep-the-best-in-memory pattern
    assert type(best) is ContextState and type(copy.copy(best)) is ContextState
    ctx.model.weight.data.zero_()
    pt.save_checkpoint(best, id="best", directory=tmp_path)
    assert pt.checkpoint_info(tmp_path).id == "best"  # resumable, unlike a plain dict
    assert not torch.equal(pt.load_checkpoint(tmp_path)["model"]["weight"], torch.zeros(2, 2))


def test_the_state_must_be_a_dict_without_the_reserved_key(tmp_path):
    with pytest.raises(pt.CheckpointError, match="needs a dict .* got Tensor; wrap it"):
        pt.save_checkpoint(torch.ones(2), id=1, directory=tmp_path)
    with pytest.raises(pt.CheckpointError, match="'_pystematic_torch', a name reserved"):
        pt.save_checkpoint({METADATA: 1}, id=1, directory=tmp_path)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("bad_id", ["../escape", "a b", "", True])
def test_bad_ids_are_refused(tmp_path, bad_id):
    with pytest.raises(pt.CheckpointError, match="is not allowed; use an int .* or a string"):
        pt.save_checkpoint({}, id=bad_id, directory=tmp_path)


@pytest.mark.parametrize("keep_last", [0, -1, 1.5, "2", True])
def test_bad_keep_last_is_refused(tmp_path, keep_last):
    with pytest.raises(pt.CheckpointError, match="give an int >= 1, or None"):
        pt.save_checkpoint({}, id=1, directory=tmp_path, keep_last=keep_last)
    assert not any(tmp_path.iterdir())


def test_outside_an_experiment_a_directory_is_needed():
    with pytest.raises(pt.CheckpointError, match="pass directory="):
        pt.save_checkpoint({}, id=1)


class Durable:
    """Stands in for a recorder: notes whether the checkpoint existed when it was flushed."""

    def __init__(self, checkpoint, error=None):
        self.checkpoint, self.error, self.flushes = checkpoint, error, []

    def flush(self):
        self.flushes.append(self.checkpoint.exists())
        if self.error:
            raise self.error


@pytest.mark.parametrize("blocking", [True, False])
def test_recordings_are_flushed_before_the_checkpoint_is_written(tmp_path, blocking):
    durable = Durable(tmp_path / "checkpoint-1.pt")
    _session.register_durable(durable)
    try:
        pt.save_checkpoint({"v": 1}, id=1, directory=tmp_path, blocking=blocking)
        pt.wait_for_checkpoints()
    finally:
        _session.unregister_durable(durable)
    assert durable.flushes == [False]


def test_a_failed_flush_still_saves_the_checkpoint_then_raises(tmp_path, caplog):
    durable = Durable(tmp_path / "checkpoint-1.pt", error=pt.RecorderError("disk full"))
    _session.register_durable(durable)
    try:
        with pytest.raises(pt.RecorderError, match="disk full"):
            pt.save_checkpoint({"v": 1}, id=1, directory=tmp_path)
    finally:
        _session.unregister_durable(durable)
    assert pt.load_checkpoint(tmp_path / "checkpoint-1.pt") == {"v": 1}
    assert "was saved, but flushing the recordings failed" in caplog.text
