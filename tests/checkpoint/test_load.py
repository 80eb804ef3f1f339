"""Loading: the warnings when a run differs from the one that wrote the checkpoint."""
import logging

import pytest
import torch

import pystematic_torch as pt
from pystematic_torch import _session
from pystematic_torch.checkpoint import ContextState
from tests.support.ranks import run_on_ranks


def written_by(path, world_size=1, params=None, format=1, **state):
    metadata = {"format": format, "version": "9.9.9", "kind": "context", "sequence": 1,
                "id": "1", "world_size": world_size, "saved_at": "2026-12-02T10:00:00+00:00",
                "params": params}  # fmt: skip
    torch.save({**state, "_pystematic_torch": metadata}, path)
    return path


class Warnings(logging.Handler):
    """Collects our warnings; pystematic rearranges the root logger's handlers during a run."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def warnings():
    handler = Warnings()
    logger = logging.getLogger("pystematic.torch.checkpoint")
    logger.addHandler(handler)
    yield handler.messages
    logger.removeHandler(handler)


def test_a_parameter_that_sets_shapes_is_named_when_it_changed(run_experiment, warnings):
    def train(params):
        ctx = pt.Context()
        ctx.model = torch.nn.Linear(params["hidden"], 3)
        pt.save_checkpoint(ctx.state_dict(), id=1)

    run_dir = run_experiment(train, hidden=16)

    def resume(params):
        pt.load_checkpoint(run_dir)

    warnings.clear()
    run_experiment(resume, hidden=16)
    assert warnings == []
    run_experiment(resume, hidden=32)
    (warning,) = warnings
    assert f"Checkpoint {run_dir / 'checkpoint-1.pt'} was written with other values" in warning
    assert "may set tensor shapes" in warning and "hidden was 16, now 32" in warning
    assert "run with the recorded values" in warning


def test_other_parameter_changes_do_not_warn(tmp_path, run_experiment, warnings):
    # hidden=10 is recorded, but no tensor has a size of 10: more epochs, say.
    path = written_by(tmp_path / "c.pt", params={"hidden": 10, "random_seed": 3, "lr": 0.1},
                      w=torch.zeros(3, 4))  # fmt: skip
    run_experiment(lambda params: pt.load_checkpoint(path), hidden=20)
    assert warnings == []
    # The generators' states are no item a parameter shapes (torch's CPU state has 5056 bytes).
    path = written_by(tmp_path / "d.pt", params={"hidden": 5056}, w=torch.zeros(3, 4),
                      _random_state={"torch": torch.zeros(5056, dtype=torch.uint8)})  # fmt: skip
    run_experiment(lambda params: pt.load_checkpoint(path), hidden=20)
    assert warnings == []


def test_a_different_world_size_is_warned_about(tmp_path, run_experiment, warnings):
    path = written_by(tmp_path / "c.pt", world_size=4, w=torch.zeros(2))
    run_experiment(lambda params: pt.load_checkpoint(path))
    (warning,) = warnings
    assert "was written by a run of 4 processes and this run has 1" in warning
    assert "global batch size" in warning


def test_a_newer_format_is_warned_about(tmp_path, run_experiment, warnings):
    path = written_by(tmp_path / "c.pt", format=2, w=torch.zeros(2))
    run_experiment(lambda params: pt.load_checkpoint(path))
    (warning,) = warnings
    assert "written by pystematic-torch 9.9.9, which records more than this version" in warning


def test_outside_an_experiment_nothing_is_compared(tmp_path, warnings):
    path = written_by(tmp_path / "c.pt", world_size=4, params={"hidden": 2}, w=torch.zeros(2))
    assert torch.equal(pt.load_checkpoint(path)["w"], torch.zeros(2))
    assert warnings == []


class Flushes:
    def __init__(self, marker):
        self.marker = marker

    def flush(self):
        self.marker.write_text("flushed")


def save_on_two_ranks(rank, directory):
    durable = Flushes(directory / f"flushed-by-rank-{rank}")
    _session.register_durable(durable)
    state = ContextState(rank=rank, w=torch.full((2,), float(rank)))
    path = pt.save_checkpoint(state, id=1, directory=directory / "run", keep_last=1)
    pt.wait_for_checkpoints()
    return None if path is None else str(path)


@pytest.mark.timeout(120)
def test_every_rank_flushes_and_rank_0_writes(tmp_path, run_experiment, warnings):
    paths = run_on_ranks(save_on_two_ranks, args=(tmp_path,))
    assert paths == [str(tmp_path / "run" / "checkpoint-1.pt"), None]
    assert (tmp_path / "flushed-by-rank-0").exists() and (tmp_path / "flushed-by-rank-1").exists()
    info = pt.checkpoint_info(tmp_path / "run")
    assert info.world_size == 2 and info.kind == "context"
    assert pt.load_checkpoint(tmp_path / "run")["rank"] == 0
    run_experiment(lambda params: pt.load_checkpoint(tmp_path / "run"))
    assert any("run of 2 processes and this run has 1" in w for w in warnings)
