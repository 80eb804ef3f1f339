"""Event files written by the Recorder, read back by TensorBoard's own readers."""
import math
import random
import time

import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader
from tensorboard.compat.proto import event_pb2

from pystematic_torch.recording import Recorder, _events
from tests.recording.held_writer import HeldWriter


def raw_scalars(directory):
    values = []
    for path in sorted(directory.glob("*tfevents*")):
        for event in LegacyEventFileLoader(str(path)).Load():
            values += [(event.step, v.tag, v.simple_value, event.wall_time)
                       for v in event.summary.value if v.HasField("simple_value")]  # fmt: skip
    return values


def as_float32(number):
    if isinstance(number, int) and abs(number) > 1e308:
        return math.inf if number > 0 else -math.inf
    with np.errstate(over="ignore"):
        return float(np.float32(float(number)))


def test_many_scalars_in_regular_and_irregular_steps_read_back_exactly(tmp_path):
    generator = random.Random(0)
    recorded = []
    with Recorder(tmp_path, file=False, max_pending=10_000) as recorder:
        recorder.count = 120  # varints of one, two and three bytes
        for _ in range(30_000):
            for tag in ("train/loss", "train/accuracy", "lr"):  # the same tags every step
                value = generator.random()
                before = time.time()
                recorder.scalar(tag, value)
                recorded.append((recorder.count, tag, value, before, time.time()))
            if generator.random() < 0.02:  # now and then a tag of its own, or odd values
                value = generator.choice([1e300, -1e300, 3, 10**400, float("nan"), 1e-45])
                before = time.time()
                recorder.scalar("val/odd, \"tag\"", value)
                recorded.append((recorder.count, "val/odd, \"tag\"", value, before, time.time()))
            recorder.step()
            if recorder.count == 16_000:
                recorder.count = 2_097_100  # across the four-byte varint boundary

    read = raw_scalars(tmp_path)
    assert len(read) == len(recorded)
    for (step, tag, value, wall), (r_step, r_tag, r_value, before, after) in zip(read, recorded):
        assert (step, tag) == (r_step, r_tag)
        expected = as_float32(r_value)
        assert value == expected or (math.isnan(value) and math.isnan(expected))
        # The event's wall time is that of its first value's call, within a millisecond.
        assert before - _events.SHARED_EVENT_SECONDS <= wall <= after

    # TensorBoard's Python loader sees the same series.
    accumulator = event_accumulator.EventAccumulator(
        str(tmp_path), size_guidance={event_accumulator.SCALARS: 0}
    )
    accumulator.Reload()
    loss = [(e.step, e.value) for e in accumulator.Scalars("train/loss")]
    assert loss == [(s, as_float32(v)) for s, t, v, _, _ in recorded if t == "train/loss"]


def test_wall_time_is_the_time_of_the_call_not_of_the_write(tmp_path):
    gate = HeldWriter()
    with Recorder(tmp_path, file=False, backends=[gate]) as recorder:
        recorder.scalar("first", 0.0)
        assert gate.reached.wait(30)  # the writer is stuck; what follows waits in the queue
        before = time.time()
        recorder.scalar("late", 1.0)
        after = time.time()
        recorder.image("late/image", np.zeros((2, 2)))
        time.sleep(0.3)  # the clock moves on: the write happens well after the call
        written_after = time.time()
        gate.released.set()
    late = [wall for _, tag, _, wall in raw_scalars(tmp_path) if tag == "late"]
    assert len(late) == 1 and before <= late[0] <= after < written_after
    accumulator = event_accumulator.EventAccumulator(str(tmp_path))
    accumulator.Reload()
    (image,) = accumulator.Images("late/image")
    assert after <= image.wall_time < written_after


def test_a_torn_last_record_ends_the_file_for_our_reader_as_for_tensorboard(tmp_path):
    with Recorder(tmp_path, file=False) as recorder:
        for _ in range(5):
            recorder.scalar("loss", float(recorder.count))
            recorder.step()
    (path,) = tmp_path.glob("*tfevents*")
    data = path.read_bytes()
    path.write_bytes(data[:-3])  # a kill in the middle of the last record
    ours = [event_pb2.Event.FromString(data) for data in _events.read_records(path)]
    theirs = list(LegacyEventFileLoader(str(path)).Load())
    assert ours == theirs
    assert [e.step for e in ours if e.summary.value] == [0, 1, 2, 3, 4]  # the end was cut


@pytest.mark.parametrize("value", [float("inf"), -1e39, 2**70])
def test_values_beyond_float32_are_stored_as_tensorboard_stores_them(tmp_path, value):
    with Recorder(tmp_path) as recorder:
        recorder.scalar("x", value)
    ((_, _, read, _),) = raw_scalars(tmp_path)
    assert read == as_float32(value)
