import pytest
import torch

import pystematic_torch as pt
from tests.support.ranks import run_on_ranks


def test_helpers_describe_a_world_of_one_without_a_process_group():
    assert not pt.is_distributed()
    assert (pt.get_rank(), pt.get_num_processes(), pt.is_master()) == (0, 1, True)
    pt.distributed_barrier()
    assert pt.broadcast_from_master({"a": 1}) == {"a": 1}
    assert pt.gather_to_master("x") == ["x"]
    assert pt.all_reduce(3, "mean") == 3.0 and isinstance(pt.all_reduce(3, "mean"), float)
    assert pt.all_reduce(3, "sum") == 3 and isinstance(pt.all_reduce(3, "sum"), int)
    assert pt.all_reduce(2.0, weight=5) == 2.0


def test_all_reduce_refuses_unknown_ops_and_values():
    with pytest.raises(ValueError, match="allowed ops are mean, sum, max, min"):
        pt.all_reduce(1, "avg")
    with pytest.raises(ValueError, match="weight only with op='mean'"):
        pt.all_reduce(1, "sum", weight=2)
    with pytest.raises(TypeError, match="gather_to_master"):
        pt.all_reduce("text")


def _collectives_body(rank):
    value = torch.tensor([1.0, 2.0]) * (rank + 1)
    original = value.clone()
    out = {
        "rank": pt.get_rank(),
        "world": pt.get_num_processes(),
        "master": pt.is_master(),
        "mean": pt.all_reduce(rank + 1, "mean"),
        "sum": pt.all_reduce(rank + 1, "sum"),
        "max": pt.all_reduce(float(rank), "max"),
        "min": pt.all_reduce(float(rank), "min"),
        "tensor_mean": pt.all_reduce(value, "mean"),
        "int_tensor_mean": pt.all_reduce(torch.tensor([rank]), "mean"),
        # rank 0 saw 3 batches with mean loss 1.0, rank 1 saw 1 batch with mean loss 5.0
        "weighted": pt.all_reduce([1.0, 5.0][rank], weight=[3, 1][rank]),
        "broadcast": pt.broadcast_from_master({"from": rank}),
        "broadcast_tensor": pt.broadcast_from_master(torch.full((2,), float(rank))),
        "gathered": pt.gather_to_master(rank * 10),
    }
    pt.distributed_barrier()
    out["input_untouched"] = torch.equal(value, original)
    return out


@pytest.mark.timeout(120)
def test_helpers_and_collectives_on_two_gloo_ranks():
    results = run_on_ranks(_collectives_body, timeout=90)
    for rank, out in enumerate(results):
        assert (out["rank"], out["world"], out["master"]) == (rank, 2, rank == 0)
        assert out["mean"] == 1.5
        assert out["sum"] == 3
        assert (out["max"], out["min"]) == (1.0, 0.0)
        assert torch.equal(out["tensor_mean"], torch.tensor([1.5, 3.0]))
        assert out["int_tensor_mean"].dtype == torch.float64
        assert out["int_tensor_mean"].item() == 0.5
        assert out["weighted"] == pytest.approx(2.0)
        assert out["broadcast"] == {"from": 0}
        assert torch.equal(out["broadcast_tensor"], torch.zeros(2))
        assert out["input_untouched"]
    assert results[0]["gathered"] == [0, 10]
    assert results[1]["gathered"] is None
