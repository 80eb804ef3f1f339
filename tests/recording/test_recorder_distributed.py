"""The Recorder on two real gloo ranks: only rank 0 writes, and reduce= combines ranks."""
import csv
from unittest import mock

import torch

from pystematic_torch.recording import Recorder, _recorder
from tests.support.ranks import run_on_ranks


def record_on_two_ranks(rank, root):
    # Created while the group exists: rank 1 is silent from the start.
    with Recorder(f"{root}/rank{rank}-a", hdf5=True) as recorder:
        recorder.scalar("loss", torch.tensor(float(rank + 1)), reduce="mean")
        recorder.scalar("count", rank + 1, reduce="sum")
        recorder.scalars({"worst": rank * 10.0, "best": torch.tensor([rank * 10.0])},
                         reduce="max")
        recorder.scalar("mine", rank)
        recorder.image("img", torch.zeros(3, 2, 2))
        recorder.array("arr", torch.ones(2))
        recorder.step()
        state = recorder.state_dict()

    # Created before the group was known (as before Context.ddp()), then told about it.
    with mock.patch.object(_recorder, "is_master", return_value=True):
        late = Recorder(f"{root}/rank{rank}-b")
    late.setup_distributed()
    late.scalar("loss", float(rank + 1), reduce="mean")
    late.step()
    late.close()
    return state


def test_only_rank_0_writes_and_reduce_combines_the_ranks(tmp_path):
    states = run_on_ranks(record_on_two_ranks, args=(str(tmp_path),), timeout=90)

    # Rank 0 says what reached its files at count 1 (nothing yet); silent rank 1 has no
    # files to say anything about.
    assert states == [
        {"count": 1, "recorded_at_count": {}, "output_dir": str(tmp_path / "rank0-a")},
        {"count": 1, "output_dir": str(tmp_path / "rank1-a")},
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rank0-a", "rank0-b"]
    with open(tmp_path / "rank0-a" / "scalars.csv", newline="") as handle:
        rows = {tag: float(value) for _, tag, value in list(csv.reader(handle))[1:]}
    assert rows == {"loss": 1.5, "count": 3.0, "worst": 10.0, "best": 10.0, "mine": 0.0}
    with open(tmp_path / "rank0-b" / "scalars.csv", newline="") as handle:
        assert list(csv.reader(handle))[1:] == [["0", "loss", "1.5"]]
