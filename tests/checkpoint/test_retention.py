"""keep_last: what it deletes, when, and what it never deletes."""
import pytest
import torch

import pystematic_torch as pt
from pystematic_torch.checkpoint import ContextState, _atomic


def names(directory):
    return sorted(p.name for p in directory.iterdir())


def save(directory, checkpoint_id, **kwargs):
    state = ContextState(epoch=checkpoint_id, w=torch.zeros(3))
    return pt.save_checkpoint(state, id=checkpoint_id, directory=directory, **kwargs)


@pytest.mark.parametrize("blocking", [True, False])
def test_keep_last_keeps_the_newest_numeric_checkpoints_and_every_named_one(tmp_path, blocking):
    save(tmp_path, 1, keep_last=2, blocking=blocking)
    save(tmp_path, "best", keep_last=2, blocking=blocking)
    for epoch in (2, 3, 4):
        save(tmp_path, epoch, keep_last=2, blocking=blocking)
    save(tmp_path, "preempted", keep_last=2, blocking=blocking)
    pt.wait_for_checkpoints()
    assert names(tmp_path) == ["checkpoint-3.pt", "checkpoint-4.pt", "checkpoint-best.pt",
                               "checkpoint-preempted.pt"]  # fmt: skip


def test_older_checkpoints_go_by_sequence_not_by_id(tmp_path):
    # A run restarted from epoch 1 writes a new epoch 2 after an old epoch 9.
    save(tmp_path, 9)
    save(tmp_path, 1)
    save(tmp_path, 2, keep_last=2)
    assert names(tmp_path) == ["checkpoint-1.pt", "checkpoint-2.pt"]


def test_nothing_is_deleted_when_the_new_checkpoint_could_not_be_written(tmp_path, monkeypatch):
    save(tmp_path, 1, keep_last=1)
    save(tmp_path, 2, keep_last=1)

    def disk_full(obj, file):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_atomic.torch, "save", disk_full)
    with pytest.raises(pt.CheckpointError, match="No space left"):
        save(tmp_path, 3, keep_last=1)
    monkeypatch.undo()
    assert names(tmp_path) == ["checkpoint-2.pt"]
    assert pt.load_checkpoint(tmp_path)["epoch"] == 2


def test_checkpoints_written_without_metadata_are_never_deleted(tmp_path):
    torch.save({"epoch": 0}, tmp_path / "checkpoint-0.pt")
    for epoch in (1, 2, 3):
        save(tmp_path, epoch, keep_last=1)
    assert names(tmp_path) == ["checkpoint-0.pt", "checkpoint-3.pt"]


def test_the_checkpoint_a_run_resumed_from_is_kept_while_it_runs(tmp_path, run_experiment):
    checkpoints = tmp_path / "checkpoints"
    for epoch in (1, 2, 3):
        save(checkpoints, epoch)

    def resume_and_train(params):
        assert pt.load_checkpoint(checkpoints / "checkpoint-2.pt")["epoch"] == 2
        for epoch in (3, 4, 5):
            save(checkpoints, epoch, keep_last=1)

    run_experiment(resume_and_train)
    assert names(checkpoints) == ["checkpoint-2.pt", "checkpoint-5.pt"]

    run_experiment(lambda params: save(checkpoints, 6, keep_last=1))  # a later run may
    assert names(checkpoints) == ["checkpoint-6.pt"]
