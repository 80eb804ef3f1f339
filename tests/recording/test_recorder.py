"""The Recorder with its built-in backends, read back with each format's own reader."""
import csv
import gc
import io
import subprocess
import sys
import threading
import time
import weakref

import h5py
import matplotlib
import numpy as np
import pystematic
import pytest
import torch
from PIL import Image

from pystematic_torch import RecorderError, StateDictError
from pystematic_torch.recording import Recorder, RecorderBackend
from tests.recording.held_writer import HeldWriter
from tests.support.tensorboard import read_events, session_status

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


def test_scalars_reach_tensorboard_and_csv_at_their_steps(tmp_path):
    odd_tag = 'eval/"top,1"'
    with Recorder(tmp_path) as recorder:
        for step in range(3):
            recorder.scalar("train/loss", 1.0 / (step + 1))
            recorder.scalar("train/steps_seen", step * 10)
            recorder.scalar("train/t", torch.tensor([[0.5 + step]]))
            recorder.scalars({"train/np": np.float32(0.25), odd_tag: True})
            recorder.step()
        recorder.count = 100
        recorder.scalar("train/loss", 0.01)
        assert recorder.count == 100

    events = read_events(tmp_path)
    assert set(events.Tags()["scalars"]) == {
        "train/loss", "train/steps_seen", "train/t", "train/np", odd_tag
    }
    loss = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert [s for s, _ in loss] == [0, 1, 2, 100]
    assert np.allclose([v for _, v in loss], [1.0, 0.5, 1 / 3, 0.01])
    assert [e.value for e in events.Scalars("train/t")] == [0.5, 1.5, 2.5]

    rows = read_csv(tmp_path / "scalars.csv")
    assert rows[0] == ["step", "tag", "value"]
    assert ["2", "train/loss", repr(1 / 3)] in rows  # full precision in the CSV
    assert ["0", odd_tag, "1"] in rows
    assert ["100", "train/loss", "0.01"] in rows
    assert len(rows) == 1 + 3 * 5 + 1


def test_a_cpu_tensor_changed_in_place_later_keeps_the_recorded_value(tmp_path):
    running = torch.zeros(())
    with Recorder(tmp_path, tensorboard=False) as recorder:
        for _ in range(3):
            running += 1
            recorder.scalar("running", running)
            recorder.step()
    assert [row[2] for row in read_csv(tmp_path / "scalars.csv")[1:]] == ["1.0", "2.0", "3.0"]


def test_images_and_figures_become_pngs_and_tensorboard_images(tmp_path):
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    colour = np.random.default_rng(0).random((5, 6, 3))
    chw = torch.rand(3, 4, 7)
    pil = Image.fromarray(np.full((2, 3, 4), 200, dtype=np.uint8), mode="RGBA")
    fig, ax = plt.subplots(figsize=(2, 1.5), dpi=50)
    ax.plot([0, 1], [1, 0])
    fig_ref = weakref.ref(fig)
    with Recorder(tmp_path) as recorder:
        recorder.image("grey", grey)
        recorder.image("val/colour", colour)
        recorder.step()
        recorder.image("chw", chw)
        recorder.image("pil", pil)
        recorder.figure("val/curve", fig)
        assert fig.number not in plt.get_fignums()
        del fig, ax
        recorder.flush()
    gc.collect()
    assert fig_ref() is None, "the recorded figure is still alive after recording"

    def png(*parts):
        return np.asarray(Image.open(tmp_path.joinpath("images", *parts)))

    assert np.array_equal(png("grey", "00000000.png"), grey)
    assert np.array_equal(png("val", "colour", "00000000.png"), np.rint(colour * 255))
    assert np.array_equal(
        png("chw", "00000001.png"), np.rint(chw.permute(1, 2, 0).numpy() * 255)
    )
    assert np.array_equal(png("pil", "00000001.png"), np.asarray(pil))
    assert png("val", "curve", "00000001.png").shape == (75, 100, 4)

    events = read_events(tmp_path)
    assert set(events.Tags()["images"]) == {"grey", "val/colour", "chw", "pil", "val/curve"}
    (curve,) = events.Images("val/curve")
    assert (curve.step, curve.width, curve.height) == (1, 100, 75)
    encoded = events.Images("val/colour")[0].encoded_image_string
    decoded = np.asarray(Image.open(io.BytesIO(encoded)))
    assert np.array_equal(decoded, np.rint(colour * 255))


def test_histograms_text_and_hyperparameters_share_the_run(tmp_path):
    from tensorboard.plugins.hparams import metadata as hparams_metadata

    values = torch.tensor([0.0, 1.0, 1.0, 3.0, float("nan")])
    with Recorder(tmp_path) as recorder:
        recorder.histogram("weights", values, bins=3)
        recorder.text("notes", "lr *halved*, see 'run 2'")
        recorder.step()
        recorder.params({"lr": 0.1, "opt": "sgd", "nesterov": False, "path": None},
                        metrics={"val/accuracy": 0.75})

    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 1
    events = read_events(tmp_path)
    (histogram,) = events.Histograms("weights")
    h = histogram.histogram_value
    assert (histogram.step, h.min, h.max, h.num, h.sum) == (0, 0.0, 3.0, 4, 5.0)
    assert list(h.bucket) == [1, 2, 1]
    (note,) = events.Tensors("notes")
    assert note.tensor_proto.string_val == [b"lr *halved*, see 'run 2'"]
    assert [(e.step, e.value) for e in events.Scalars("val/accuracy")] == [(1, 0.75)]

    content = events.SummaryMetadata(hparams_metadata.SESSION_START_INFO_TAG).plugin_data.content
    session = hparams_metadata.parse_session_start_info_plugin_data(content)
    assert session.hparams["lr"].number_value == 0.1
    assert session.hparams["opt"].string_value == "sgd"
    assert session.hparams["nesterov"].bool_value is False
    assert "path" not in session.hparams  # None: an empty cell in TensorBoard
    # No experiment description: TensorBoard then builds the tab from all runs (see
    # test_tensorboard_server.py for what it shows).
    assert hparams_metadata.EXPERIMENT_TAG not in events.Tags()["tensors"]
    assert read_csv(tmp_path / "text.csv")[1] == ["0", "notes", "lr *halved*, see 'run 2'"]


def test_hdf5_has_a_growing_dataset_per_tag_with_steps_beside_it(tmp_path):
    with Recorder(tmp_path, tensorboard=False, file=False, hdf5=True) as recorder:
        for step in range(1500):  # more than one block of buffered values
            recorder.scalar("train/loss", step / 2)
            if step % 500 == 0:
                recorder.array("val/confusion", np.full((2, 3), step, dtype=np.int32))
            recorder.step()
    with h5py.File(tmp_path / "recordings.h5", "r") as f:
        assert np.array_equal(f["train/loss"][:], np.arange(1500) / 2)
        assert np.array_equal(f["train/loss.steps"][:], np.arange(1500))
        confusion = f["val/confusion"]
        assert confusion.shape == (3, 2, 3) and confusion.dtype == np.int32
        assert np.array_equal(confusion[:, 0, 0], [0, 500, 1000])
        assert np.array_equal(f["val/confusion.steps"][:], [0, 500, 1000])


def test_console_prints_the_scalars_of_each_finished_step(tmp_path, capsys):
    with Recorder(tensorboard=False, file=False, console=True) as recorder:
        recorder.scalar("loss", 0.5)
        recorder.scalar("acc", 0.25)
        recorder.step()
        recorder.step()
        recorder.scalar("loss", 0.125)
        recorder.flush()
        assert capsys.readouterr().out == "[step 0] loss=0.5 acc=0.25\n"
    assert capsys.readouterr().out == "[step 2] loss=0.125\n"


def test_a_resumed_run_continues_the_steps_without_duplicates(tmp_path):
    first = Recorder(tmp_path, hdf5=True)
    for step in range(10):
        if step == 6:
            torch.save({"recorder": first.state_dict()}, tmp_path / "checkpoint.pt")
        first.scalar("loss", float(step))
        first.step()
    first.close()  # the abandoned run recorded steps 6 to 9 after its checkpoint

    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["recorder"]
    with Recorder(tmp_path, hdf5=True) as resumed:
        resumed.load_state_dict(state)
        assert resumed.count == 6
        while resumed.count < 12:
            resumed.scalar("loss", resumed.count + 0.5)
            resumed.step()

    expected = [(s, float(s)) for s in range(6)] + [(s, s + 0.5) for s in range(6, 12)]
    rows = read_csv(tmp_path / "scalars.csv")
    assert rows[0] == ["step", "tag", "value"] and rows.count(rows[0]) == 1
    assert [(int(r[0]), float(r[2])) for r in rows[1:]] == expected
    events = read_events(tmp_path)
    assert [(e.step, e.value) for e in events.Scalars("loss")] == expected
    with h5py.File(tmp_path / "recordings.h5", "r") as f:
        assert list(zip(f["loss.steps"][:].tolist(), f["loss"][:].tolist())) == expected


def test_a_second_recorder_writing_into_an_open_ones_directory_is_refused(tmp_path):
    first = Recorder(tmp_path / "run")
    first.scalar("loss", 1.0)
    first.step()
    with pytest.raises(RecorderError, match="Another Recorder of this process still writes "
                       f"into {tmp_path / 'run'}: two recorders"):  # fmt: skip
        Recorder(tmp_path / "run" / ".." / "run", file=False)  # the same directory
    with Recorder(tmp_path / "run", tensorboard=False, file=False, console=True):
        pass  # writes no file there
    with Recorder(tmp_path / "other"):
        pass
    first.scalar("loss", 2.0)  # the refusal left the first recorder as it was
    first.close()
    with Recorder(tmp_path / "run") as after:  # once it is closed, the directory is free
        after.count = 1
        after.scalar("loss", 3.0)

    rows = read_csv(tmp_path / "run" / "scalars.csv")
    assert rows == [["step", "tag", "value"], ["0", "loss", "1.0"], ["1", "loss", "2.0"],
                    ["1", "loss", "3.0"]]  # fmt: skip
    assert [event.value for event in read_events(tmp_path / "run").Scalars("loss")] == [
        1.0, 2.0, 3.0]  # fmt: skip


def test_a_relative_directory_means_where_it_was_when_the_recorder_was_made(tmp_path,
                                                                          monkeypatch):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    first = Recorder("run")
    monkeypatch.chdir(tmp_path / "b")
    with Recorder("run"):  # b/run: another directory
        pass
    with pytest.raises(RecorderError, match=f"still writes into {tmp_path / 'a' / 'run'}:"):
        Recorder(tmp_path / "a" / "run")
    first.close()


def test_a_half_written_csv_row_from_a_crash_is_cut_off_on_append(tmp_path):
    (tmp_path / "scalars.csv").write_text("step,tag,value\r\n0,loss,1.0\r\n1,lo")
    with Recorder(tmp_path, tensorboard=False) as recorder:
        recorder.count = 1
        recorder.scalar("loss", 2.0)
    assert read_csv(tmp_path / "scalars.csv") == [
        ["step", "tag", "value"], ["0", "loss", "1.0"], ["1", "loss", "2.0"]
    ]


@pytest.mark.parametrize(
    "call, fragment",
    [
        (lambda r: r.scalar("loss", torch.ones(3)), "Recorder.scalar('loss') got a torch.float32"),
        (lambda r: r.scalar("loss", torch.ones(0)), "got a torch.float32 tensor of shape (0,)"),
        (lambda r: r.scalar("ok", torch.tensor(True)), "got a torch.bool tensor of shape ()"),
        (lambda r: r.scalar("z", torch.tensor(1j)), "got a torch.complex64 tensor of shape ()"),
        (lambda r: r.scalar("", torch.tensor(1.0)), "got the tag ''"),
        (lambda r: r.scalar("name", "abc"), "Recorder.scalar('name') got a str"),
        (lambda r: r.scalar(3, 1.0), "got the tag 3"),
        (lambda r: r.scalar("loss", 1.0, reduce="median"), "reduce='median'"),
        (lambda r: r.image("img", np.zeros((2, 3, 5))), "Recorder.image('img') got an image of"),
        (lambda r: r.image("img", np.zeros((2, 3), dtype=np.int64)), "dtype int64"),
        (lambda r: r.image("img", np.zeros((4, 4)), layout="WH"), "layout='WH'"),
        (lambda r: r.figure("fig", np.zeros((2, 2))), "Recorder.figure('fig') got"),
        (lambda r: r.histogram("h", []), "Recorder.histogram('h') got no values"),
        (lambda r: r.text("t", 3), "Recorder.text('t') got a int"),
        (lambda r: setattr(r, "count", -1), "count must be an int >= 0"),
    ],
)
def test_wrong_values_fail_at_the_call_naming_the_tag(tmp_path, call, fragment):
    with Recorder(tmp_path) as recorder:
        with pytest.raises(RecorderError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
            call(recorder)


def test_arrays_of_one_tag_must_keep_their_shape(tmp_path):
    with Recorder(tmp_path, hdf5=True) as recorder:
        recorder.array("a", np.zeros(3))
        with pytest.raises(RecorderError, match=r"got shape \(4,\).*had shape \(3,\)"):
            recorder.array("a", np.zeros(4))


def test_closed_recorder_refuses_values_and_close_is_idempotent(tmp_path):
    recorder = Recorder(tmp_path)
    recorder.scalar("loss", 1.0)
    recorder.close()
    recorder.close()
    recorder.flush()
    for call in (lambda: recorder.scalar("loss", 1.0), recorder.step,
                 lambda: recorder.text("t", "x")):
        with pytest.raises(RecorderError, match="closed"):
            call()
    assert read_csv(tmp_path / "scalars.csv")[1:] == [["0", "loss", "1.0"]]


def test_bad_state_dict_and_missing_output_dir_are_explained(tmp_path):
    with pytest.raises(RecorderError, match="no output_dir"):
        Recorder()
    with Recorder(tmp_path) as recorder:
        with pytest.raises(StateDictError, match="'count' must be an int >= 0, not None; "
                                                 r"unknown keys \['step'\]. Expected a dict"):
            recorder.load_state_dict({"step": 3})
        with pytest.raises(StateDictError, match="'recorded_at_count' must map kinds"):
            recorder.load_state_dict({"count": 3, "recorded_at_count": {"scalar": {"x": -1}}})
        with pytest.raises(StateDictError, match="got a list"):
            recorder.load_state_dict([3])
        assert recorder.count == 0  # nothing changed
        assert recorder.state_dict() == {
            "count": 0, "recorded_at_count": {}, "output_dir": str(tmp_path.resolve())
        }


class FailingBackend(RecorderBackend):
    name = "flaky-disk"

    def scalar(self, tag, value, step):
        if value < 0:
            raise OSError("No space left on device")


def test_a_failing_backend_is_reported_at_the_next_call_and_the_others_go_on(tmp_path):
    recorder = Recorder(tmp_path, tensorboard=False, backends=[FailingBackend()])
    recorder.scalar("x", -1.0)
    with pytest.raises(RecorderError, match="'flaky-disk' failed writing scalar 'x' at step 0: "
                                            "OSError: No space left on device") as raised:
        recorder.flush()
    assert isinstance(raised.value.__cause__, OSError)
    recorder.scalar("x", 2.0)  # the error was reported once; recording goes on
    recorder.scalar("x", -3.0)  # the failed backend is gone and cannot fail again
    recorder.close()
    assert [r[2] for r in read_csv(tmp_path / "scalars.csv")[1:]] == ["-1.0", "2.0", "-3.0"]

    recorder = Recorder(tmp_path / "b", tensorboard=False, backends=[FailingBackend()])
    recorder.scalar("x", -1.0)
    with pytest.raises(RecorderError, match="flaky-disk"):
        recorder.close()


class GateBackend(RecorderBackend):
    name = "gate"

    def __init__(self):
        self.gate = threading.Event()
        self.values = []

    def scalar(self, tag, value, step):
        self.gate.wait(10)
        self.values.append(value)


def test_a_full_queue_blocks_the_caller_and_drops_nothing(tmp_path):
    backend = GateBackend()
    recorder = Recorder(tensorboard=False, file=False, backends=[backend], max_pending=8)
    finished = threading.Event()

    def record():
        for i in range(40):
            recorder.scalar("v", i)
        finished.set()

    thread = threading.Thread(target=record, daemon=True)
    thread.start()
    time.sleep(0.5)
    assert not finished.is_set(), "recording went on although the writer was stuck"
    assert len(recorder._writer.items) <= 8
    backend.gate.set()
    assert finished.wait(10)
    recorder.close()
    assert backend.values == list(range(40))


class CountingBackend(RecorderBackend):
    name = "counting"

    def __init__(self, until):
        self.values = 0
        self.until = until
        self.reached = threading.Event()

    def scalar(self, tag, value, step):
        self.values += 1
        if self.values == self.until:
            self.reached.set()


def test_the_writer_is_woken_by_a_quarter_full_queue_not_before_its_poll(monkeypatch):
    from pystematic_torch.recording import _writer

    monkeypatch.setattr(_writer, "_POLL_SECONDS", 60.0)  # no poll within the test
    backend = CountingBackend(until=2000)
    recorder = Recorder(tensorboard=False, file=False, backends=[backend], max_pending=8000)
    for i in range(1999):
        recorder.scalar("v", i)
    # The writer thread has had time to run: nothing woke it, so it took nothing.
    assert not backend.reached.wait(0.3) and backend.values == 0
    recorder.scalar("v", 1999)  # the 2,000th value: a quarter of the queue
    assert backend.reached.wait(10), "a quarter-full queue did not wake the writer"
    recorder.close()
    assert backend.values == 2000


@pystematic.experiment
def crashing_experiment(params):
    recorder = pystematic.torch.Recorder(hdf5=True)
    for step in range(3):
        recorder.scalar("loss", step * 1.5)
        recorder.step()
    recorder.array("weights", np.arange(4.0))
    raise RuntimeError("the experiment broke")


def test_values_recorded_before_a_crash_are_on_disk(tmp_path):
    with pytest.raises(RuntimeError, match="the experiment broke"):
        crashing_experiment.run({"output_dir": str(tmp_path)})
    (run_dir,) = (tmp_path / "crashing-experiment").iterdir()
    assert [r[2] for r in read_csv(run_dir / "scalars.csv")[1:]] == ["0.0", "1.5", "3.0"]
    assert [e.value for e in read_events(run_dir).Scalars("loss")] == [0.0, 1.5, 3.0]
    with h5py.File(run_dir / "recordings.h5", "r") as f:
        assert np.array_equal(f["weights"][:], [np.arange(4.0)])


def test_recording_does_not_import_heavy_libraries():
    code = (
        "import sys\n"
        "from pystematic_torch.recording import Recorder\n"
        "with Recorder(tensorboard=False, file=False) as r:\n"
        "    r.scalar('x', 1.0); r.step()\n"
        "print(sorted(m for m in ('tensorboard', 'matplotlib', 'h5py', 'PIL') "
        "if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_scalars_are_read_on_the_writer_thread(tmp_path):
    value = torch.tensor(2.5, device="cuda")
    with Recorder(tmp_path, tensorboard=False) as recorder:
        recorder.scalar("cuda", value)
        value += 1  # the recorded clone keeps the value at the call
        recorder.scalar("cuda", value * 2)
    assert [r[2] for r in read_csv(tmp_path / "scalars.csv")[1:]] == ["2.5", "7.0"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_recording_cuda_scalars_never_synchronises_the_training_thread(tmp_path):
    held = HeldWriter()
    side = torch.cuda.Stream()
    with Recorder(tmp_path, tensorboard=False, backends=[held]) as recorder:
        recorder.scalar("start", 0.0)
        assert held.reached.wait(60)  # the writer reads nothing while we check
        torch.cuda.set_sync_debug_mode("error")  # any synchronising call raises
        try:
            with torch.cuda.stream(side):
                x = torch.ones(2048, 2048, device="cuda")
                for _ in range(5):
                    x = x @ x / 2048  # long work on a side stream, still ones
                    recorder.scalar("x", x[0, 0])
                    recorder.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        held.released.set()
    # Read on the stream they were queued on: after the work that produced them.
    assert [r[2] for r in read_csv(tmp_path / "scalars.csv")[1:]] == ["0.0"] + ["1.0"] * 5


def test_recorded_tensors_are_read_in_one_go_per_device_dtype_and_stream():
    from pystematic_torch.recording import _values

    values = [1.0, torch.tensor(2.5), torch.tensor(3), 4, torch.tensor(5.5, dtype=torch.float64)]
    assert _values.scalar_numbers(values) == [1.0, 2.5, 3, 4, 5.5]
    assert _values.scalar_number(torch.tensor(7)) == 7


class DyingBackend(RecorderBackend):
    name = "dying"

    def scalar(self, tag, value, step):
        raise SystemExit("the writer is gone")


def test_a_dead_writer_thread_is_reported_and_refuses_further_values(tmp_path):
    recorder = Recorder(tensorboard=False, file=False, backends=[DyingBackend()])
    recorder.scalar("x", 1.0)
    with pytest.raises(RecorderError, match="writer failed running the writer thread"):
        recorder.flush()
    with pytest.raises(RecorderError, match="writer thread has stopped"):
        recorder.scalar("x", 2.0)
    recorder.close()


def test_a_recorder_that_records_nothing_leaves_no_files(tmp_path):
    recorder = Recorder(tmp_path / "run", hdf5=True)
    recorder.flush()
    assert recorder.state_dict()["count"] == 0
    recorder.close()
    assert not (tmp_path / "run").exists()


def test_the_session_ends_with_how_the_recorder_was_left(tmp_path):
    from tensorboard.plugins.hparams import api_pb2

    before = time.time()
    with Recorder(tmp_path / "ok") as recorder:
        recorder.params({"lr": 0.1})
    status, end_time = session_status(tmp_path / "ok")
    assert status == api_pb2.STATUS_SUCCESS and before <= end_time <= time.time()

    with pytest.raises(ValueError):
        with Recorder(tmp_path / "raised") as recorder:
            recorder.params({"lr": 0.1})
            raise ValueError("diverged")
    assert session_status(tmp_path / "raised")[0] == api_pb2.STATUS_FAILURE

    code = (
        "import sys\n"
        "from pystematic_torch.recording import Recorder\n"
        "recorder = Recorder(sys.argv[1])\n"
        "recorder.params({'lr': 0.1})\n"
        "raise RuntimeError('nobody caught me')\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "uncaught")],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 1 and "nobody caught me" in result.stderr
    assert session_status(tmp_path / "uncaught")[0] == api_pb2.STATUS_FAILURE


def test_numpy_bools_and_ints_beyond_a_float_are_recorded_by_every_backend(tmp_path):
    huge = 10**400
    with Recorder(tmp_path, hdf5=True) as recorder:
        recorder.scalar("flag", np.bool_(True))
        recorder.scalar("count", huge)
        recorder.scalar("count", -huge)
        recorder.scalar("count", 3)
    assert read_csv(tmp_path / "scalars.csv")[1:] == [
        ["0", "flag", "1"], ["0", "count", str(huge)], ["0", "count", str(-huge)],
        ["0", "count", "3"],
    ]
    events = read_events(tmp_path)
    assert [e.value for e in events.Scalars("count")] == [float("inf"), float("-inf"), 3.0]
    with h5py.File(tmp_path / "recordings.h5", "r") as f:
        assert f["flag"][:].tolist() == [1.0]
        assert f["count"][:].tolist() == [float("inf"), float("-inf"), 3.0]


@pytest.mark.parametrize("torn", [b"s", b"step,ta", b"step,tag,value\r"])
def test_a_csv_cut_inside_its_header_starts_afresh(tmp_path, torn):
    (tmp_path / "scalars.csv").write_bytes(torn)
    (tmp_path / "text.csv").write_bytes(torn[:3])
    with Recorder(tmp_path, tensorboard=False) as recorder:
        recorder.scalar("loss", 1.0)
        recorder.text("note", "hello")
    assert read_csv(tmp_path / "scalars.csv") == [["step", "tag", "value"], ["0", "loss", "1.0"]]
    assert read_csv(tmp_path / "text.csv") == [["step", "tag", "text"], ["0", "note", "hello"]]
