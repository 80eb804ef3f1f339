"""HDF5Dataset and HDF5Writer on real h5py files, with DataLoader workers and two ranks."""
import os
import pickle
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

from pystematic_torch.data import HDF5Dataset, HDF5Writer, SmartDataLoader
from pystematic_torch.errors import DataError
from tests.support.ranks import run_on_ranks


@pytest.fixture
def sample_file(tmp_path):
    path = tmp_path / "samples.h5"
    with h5py.File(path, "w") as handle:
        handle["image"] = np.arange(40 * 6, dtype=np.float32).reshape(40, 2, 3)
        handle["label"] = np.arange(40, dtype=np.int64) * 10
        handle["group/nested"] = np.ones(40, dtype=np.int8)
        handle["short"] = np.zeros(5)
        handle["scalar"] = 3.0
    return path


def test_dataset_reads_rows_in_the_shape_asked_for(sample_file):
    pair = HDF5Dataset(sample_file, keys=["image", "label"])
    assert len(pair) == 40
    image, label = pair[7]
    assert torch.equal(image, torch.arange(42, 48, dtype=torch.float32).reshape(2, 3))
    assert label.item() == 70 and label.dtype == torch.int64
    assert pair[-1][1].item() == 390
    assert HDF5Dataset(sample_file, keys="label")[2].item() == 20
    nested = HDF5Dataset(sample_file, keys=["group/nested"])
    assert nested[0][0].item() == 1
    with pytest.raises(IndexError):
        pair[40]


def test_batched_reads_keep_the_requested_order_with_repeats(sample_file):
    dataset = HDF5Dataset(sample_file, keys=["image", "label"])
    indices = [12, 3, 12, 39, 0]
    batched = dataset.__getitems__(indices)
    assert [label.item() for _, label in batched] == [i * 10 for i in indices]
    for (image, _), index in zip(batched, indices):
        assert torch.equal(image, dataset[index][0])
    contiguous = dataset.__getitems__([5, 6, 7])
    assert [label.item() for _, label in contiguous] == [50, 60, 70]


@pytest.mark.timeout(60)
def test_workers_open_their_own_handle_and_read_correctly(sample_file):
    class Traced(HDF5Dataset):
        def __getitems__(self, indices):
            samples = super().__getitems__(indices)
            return [(*sample, os.getpid(), id(self._file)) for sample in samples]

    dataset = Traced(sample_file, keys=["image", "label"])
    dataset[0]  # the parent opens a handle before the workers fork
    parent_handle = id(dataset._file)
    loader = SmartDataLoader(dataset, batch_size=4, shuffle=True, random_seed=1, num_workers=2,
                             loading_bar=False, multiprocessing_context="fork")  # fmt: skip
    labels, pids = [], set()
    for image, label, pid, handle in loader:
        for row, value in zip(image, label.tolist()):
            assert torch.equal(row.flatten(), torch.arange(value // 10 * 6, value // 10 * 6 + 6.0))
        labels += label.tolist()
        pids |= set(pid.tolist())
        assert parent_handle not in handle.tolist()
    assert sorted(labels) == [i * 10 for i in range(40)]
    assert len(pids) == 2 and os.getpid() not in pids
    plain = HDF5Dataset(sample_file, keys=["image", "label"])
    plain[0]
    revived = pickle.loads(pickle.dumps(plain))  # what spawned workers receive
    assert plain._file is not None and revived._file is None and revived[1][1].item() == 10


def test_default_keys_give_dicts_of_the_root_datasets(tmp_path):
    path = tmp_path / "two.h5"
    with h5py.File(path, "w") as handle:
        handle["b"] = np.arange(3)
        handle["a"] = np.arange(3) + 1
        handle.create_group("extra")
    sample = HDF5Dataset(path)[1]
    assert list(sample) == ["a", "b"] and sample["a"].item() == 2


def test_dataset_errors_name_the_problem(sample_file, tmp_path):
    with pytest.raises(DataError, match="no file at"):
        HDF5Dataset(tmp_path / "nothing.h5", keys="x")
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(DataError, match="cannot open"):
        HDF5Dataset(tmp_path / "text.h5")
    with pytest.raises(DataError, match=r"missing keys \['labels'\]; its datasets are"):
        HDF5Dataset(sample_file, keys=["image", "labels"])
    with pytest.raises(DataError, match=r"\['group'\] are groups"):
        HDF5Dataset(sample_file, keys=["group"])
    with pytest.raises(DataError, match="different lengths.*image: 40, short: 5"):
        HDF5Dataset(sample_file, keys=["image", "short"])
    with pytest.raises(DataError, match="scalars"):
        HDF5Dataset(sample_file, keys=["scalar"])


def test_writer_appends_chunked_compressed_rows(tmp_path):
    path = tmp_path / "out" / "results.h5"
    with HDF5Writer(path, compression="gzip", compression_opts=4, chunk_rows=16) as writer:
        for step in range(5):
            logits = torch.full((3, 4), float(step))
            writer.append({"logits": logits}, step=torch.tensor([step] * 3))
        writer.append(logits=np.zeros((1, 4)), step=7)
        assert writer.rows == 16
    with h5py.File(path, "r") as handle:
        assert handle["logits"].shape == (16, 4) and handle["logits"].chunks == (16, 4)
        assert handle["logits"].compression == "gzip" and handle["logits"].maxshape == (None, 4)
        assert handle["step"][:].tolist() == [s for s in range(5) for _ in range(3)] + [7]
    read_back = HDF5Dataset(path, keys=["logits", "step"])
    assert read_back[4][0].tolist() == [1.0] * 4
    read_back.close()  # HDF5 refuses to open a file for writing that is open for reading

    with HDF5Writer(path, mode="a") as writer:
        assert writer.rows == 16
        writer.append(logits=torch.ones(2, 4, dtype=torch.bfloat16), step=[8, 9])
    assert len(HDF5Dataset(path, keys=["logits", "step"])) == 18


def test_a_writer_with_mode_w_never_replaces_a_file_that_is_still_open(tmp_path):
    # A new file appears only once whole (created under another name); an existing one is
    # truncated in place, so a handle still open on it cannot be left writing into nothing.
    path = tmp_path / "rows.h5"
    first = HDF5Writer(path)
    assert [p.name for p in tmp_path.iterdir()] == ["rows.h5"]
    with pytest.raises(DataError, match="rows.h5 with mode='w' .*already open.*close that one"):
        HDF5Writer(path)
    first.append(step=[5, 6])
    first.close()
    with HDF5Writer(path) as again:  # closed now: "w" starts it afresh
        again.append(step=[7])
    with h5py.File(path, "r") as handle:
        assert handle["step"][:].tolist() == [7]


def test_writer_errors_name_the_problem(tmp_path):
    with pytest.raises(DataError, match="mode='r' is not.*compression='zstd' is not"):
        HDF5Writer(tmp_path / "x.h5", mode="r", compression="zstd")
    writer = HDF5Writer(tmp_path / "x.h5")
    writer.append(a=torch.zeros(2, 3), b=[1, 2])
    with pytest.raises(DataError, match="row counts differ"):
        writer.append(a=torch.zeros(2, 3), b=[1, 2, 3])
    with pytest.raises(DataError, match=r"keys are \['a'\], earlier rows have \['a', 'b'\]"):
        writer.append(a=torch.zeros(1, 3))
    with pytest.raises(DataError, match=r"'a' rows have shape \[4\], the file has \[3\]"):
        writer.append(a=torch.zeros(1, 4), b=[1])
    writer.close()
    with pytest.raises(DataError, match="closed"):
        writer.append(a=torch.zeros(1, 3), b=[1])
    with h5py.File(tmp_path / "uneven.h5", "w") as handle:
        handle.create_dataset("a", data=np.zeros(2), maxshape=(None,))
        handle.create_dataset("b", data=np.zeros(3), maxshape=(None,))
    with pytest.raises(DataError, match="different lengths"):
        HDF5Writer(tmp_path / "uneven.h5", mode="a")


def _write_per_rank(rank, directory):
    with HDF5Writer(os.path.join(directory, "preds.h5")) as writer:
        writer.append(rank=torch.full((rank + 2,), rank))
        return writer.path


@pytest.mark.timeout(90)
def test_each_rank_writes_its_own_file(tmp_path):
    paths = run_on_ranks(_write_per_rank, args=(str(tmp_path),), timeout=80)
    assert [os.path.basename(p) for p in paths] == ["preds.rank0.h5", "preds.rank1.h5"]
    for rank, path in enumerate(paths):
        with h5py.File(path, "r") as handle:
            assert handle["rank"][:].tolist() == [rank] * (rank + 2)
            assert (handle.attrs["rank"], handle.attrs["num_processes"]) == (rank, 2)


def test_importing_the_module_loads_neither_h5py_nor_tensorboard():
    code = (
        "import sys, pystematic_torch.data\n"
        "print(sorted({'h5py', 'tensorboard'} & set(sys.modules)))"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert output.returncode == 0, output.stderr
    assert output.stdout.strip() == "[]"


def test_writer_round_trips_string_columns_through_the_dataset(tmp_path):
    path = tmp_path / "names.h5"
    with HDF5Writer(path) as writer:
        writer.append(name=["cat", "dog"], score=[0.5, 0.25])
        writer.append(name=np.array(["emu"]), score=[1.0])
    dataset = HDF5Dataset(path, keys=["name", "score"])
    rows = [dataset[i] for i in range(3)]
    assert [name for name, _ in rows] == ["cat", "dog", "emu"]
    assert [float(score) for _, score in rows] == [0.5, 0.25, 1.0]


def test_writer_failures_name_the_problem_and_keep_the_columns_even(tmp_path, monkeypatch):
    with pytest.raises(DataError, match=r"flush_secs=0 is not a positive number"):
        HDF5Writer(tmp_path / "x.h5", flush_secs=0)
    writer = HDF5Writer(tmp_path / "x.h5")
    writer.append(score=[0.5], weight=[1.0])
    with pytest.raises(DataError, match="could not write the rows.*no row of this call was kept"):
        writer.append(score=[0.25], weight=["heavy"])  # a string into a float column
    assert writer.rows == 1
    writer.append(score=[0.75], weight=[2.0])

    from pystematic_torch import _hdf5_durable

    def full_disk(handle):
        raise OSError("No space left on device")

    monkeypatch.setattr(_hdf5_durable, "flush", full_disk)
    writer.flush_secs = 1e-9
    writer.flush_if_due()  # what the background flusher calls; the failure waits for us
    with pytest.raises(DataError, match="could not write .*x.h5.*No space left on device"):
        writer.append(score=[1.0], weight=[3.0])
    monkeypatch.undo()
    writer.close()
    with h5py.File(tmp_path / "x.h5", "r") as handle:
        assert handle["score"][:].tolist() == [0.5, 0.75]
        assert handle["weight"][:].tolist() == [1.0, 2.0]


IDLE_WRITER = """
import sys, time
from pystematic_torch.data import HDF5Writer, _hdf5_writer

flushed = _hdf5_writer.HDF5Writer._flush_locked
def reporting_flush(self):
    had_rows = self._dirty
    flushed(self)
    if had_rows:
        print(f"FLUSHED {self.rows}", flush=True)
_hdf5_writer.HDF5Writer._flush_locked = reporting_flush

writer = HDF5Writer(sys.argv[1], flush_secs=0.5, compression="gzip")
writer.append(step=list(range(10)))
print(f"APPENDED {writer.rows} {time.monotonic()}", flush=True)
sys.stdin.read()  # idle: no more appends, no explicit flush
"""


@pytest.mark.timeout(120)
def test_an_idle_writer_is_flushed_within_flush_secs_and_survives_a_kill(tmp_path):
    import signal
    import time

    path = tmp_path / "idle.h5"
    child = subprocess.Popen([sys.executable, "-c", IDLE_WRITER, str(path)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        lines = iter(child.stdout.readline, "")
        appended = next(line for line in lines if line.startswith("APPENDED"))
        flushed = next(line for line in lines if line.startswith("FLUSHED"))
        seen_at = time.monotonic()
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=60) == -signal.SIGKILL
    finally:
        child.kill()
        child.wait()
        child.stdin.close()
        child.stdout.close()
    assert int(flushed.split()[1]) == 10
    # Flushed by the background thread within flush_secs (plus its polling), not at exit.
    assert seen_at - float(appended.split()[2]) < 30  # generous: the machine may be loaded
    with h5py.File(path, "r") as handle:
        assert handle["step"][:].tolist() == list(range(10))


def test_a_resumed_writer_holds_the_checkpoints_rows_once_in_its_own_or_a_new_file(tmp_path):
    from pystematic_torch import Context

    ctx = Context()
    ctx.predictions = HDF5Writer(tmp_path / "run" / "preds.h5")
    ctx.predictions.append(step=np.arange(5), name=[f"r{i}" for i in range(5)])
    torch.save(ctx.state_dict(), tmp_path / "checkpoint.pt")
    ctx.predictions.append(step=[5, 6, 7], name=["lost", "lost", "lost"])  # abandoned
    ctx.predictions.close()
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)

    resumed = Context()  # requeued into the same directory
    resumed.predictions = HDF5Writer(tmp_path / "run" / "preds.h5", mode="a")
    resumed.load_state_dict(state)
    resumed.predictions.append(step=[5], name=["again"])
    resumed.predictions.close()
    dataset = HDF5Dataset(tmp_path / "run" / "preds.h5", keys=["step", "name"])
    assert [(int(s), n) for s, n in (dataset[i] for i in range(len(dataset)))] == [
        *((i, f"r{i}") for i in range(5)), (5, "again")
    ]
    dataset.close()

    elsewhere = Context()  # resumed into a new run directory
    elsewhere.predictions = HDF5Writer(tmp_path / "new" / "preds.h5")
    elsewhere.load_state_dict(state)
    elsewhere.predictions.close()
    with h5py.File(tmp_path / "new" / "preds.h5", "r") as handle:
        assert handle["step"][:].tolist() == list(range(5))

    truncated = HDF5Writer(tmp_path / "run" / "preds.h5")  # mode "w" emptied it
    with pytest.raises(DataError, match=r"holds 0 rows, but the checkpoint was taken after 5; "
                                        "open the file with mode='a'"):
        truncated.load_state_dict(state["predictions"])
    with pytest.raises(DataError, match="expected a dict like"):
        truncated.load_state_dict({"rows": -1})
    truncated.close()


def test_a_context_checks_a_writers_state_first_and_loads_it_after_every_other_item(tmp_path):
    import pystematic_torch as pt

    ctx = pt.Context()
    ctx.rows = HDF5Writer(tmp_path / "rows.h5")
    ctx.rows.append(x=[1.0, 2.0])
    ctx.model = torch.nn.Linear(2, 1)
    state = ctx.state_dict()
    state["rows"]["rows"] = 5  # more rows than the file holds: refused before any change
    weight = ctx.model.weight.detach().clone()
    state["model"]["weight"] = torch.zeros(1, 2)
    with pytest.raises(pt.StateDictError, match="rows: .*holds 2 rows, but the checkpoint"):
        ctx.load_state_dict(state)
    assert torch.equal(ctx.model.weight, weight) and ctx.rows.rows == 2
    state["rows"]["rows"] = 1
    ctx.load_state_dict(state)
    assert ctx.rows.rows == 1 and torch.equal(ctx.model.weight, torch.zeros(1, 2))
