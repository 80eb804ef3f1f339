"""TensorBoard event files: scalars encoded by hand, everything else with TensorBoard's protos."""
import itertools
import os
import socket
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from . import _event_history, _events, _hparams
from ._backend import RecordedImage, RecorderBackend, ResumePoint
from ._file_handles import sync_and_close

__all__ = ["TensorBoardBackend"]

_file_numbers = itertools.count()


class TensorBoardBackend(RecorderBackend):
    """Writes TensorBoard event files into the output directory.

    The directory is one run for ``tensorboard --logdir``: hyperparameters from
    :meth:`Recorder.params` are part of the same run, not a separate one, and the run's
    HParams session ends with its status when the recorder is closed. Each value's event
    carries the wall time of its recording call. Scalars recorded at the same step within a
    millisecond share one event (TensorBoard reads them as separate values). Scalars are
    stored as 32-bit floats, as TensorBoard does; ``scalars.csv`` keeps full precision.

    The backend's files end in ``.pystematic-torch``; on resume it rewrites only those (see
    :doc:`recording`).
    """

    name = "tensorboard"

    def __init__(self) -> None:
        self._dir: Optional[Path] = None
        self._file: Any = None
        self._has_own_history = False
        self._encoder = _events.ScalarEncoder()

    def open(self, output_dir: Optional[Path]) -> None:
        self._dir = Path(output_dir)
        _event_history.recover(self._dir, self._new_path)
        self._has_own_history = bool(_event_history.own_files(self._dir))

    # -- values ----------------------------------------------------------------------

    def _scalar_run(self, run: List[tuple]) -> None:
        self._write(self._encoder.encode(run))

    def scalar(self, tag: str, value: float, step: int) -> None:
        self._scalar_run([(0, tag, value, step, self.wall_time)])

    def image(self, tag: str, image: RecordedImage, step: int) -> None:
        from tensorboard.compat.proto import summary_pb2

        height, width, channels = image.pixels.shape
        picture = summary_pb2.Summary.Image(
            height=height, width=width, colorspace=channels, encoded_image_string=image.png
        )
        self._write_values(step, [summary_pb2.Summary.Value(tag=tag, image=picture)])

    def histogram(self, tag: str, values: np.ndarray, bins: int, step: int) -> None:
        from tensorboard.compat.proto import summary_pb2

        counts, edges = np.histogram(values, bins=bins)
        histo = summary_pb2.HistogramProto(
            min=float(values.min()) if values.size else 0.0,
            max=float(values.max()) if values.size else 0.0,
            num=float(values.size),
            sum=float(values.sum()),
            sum_squares=float(np.dot(values, values)),
            bucket_limit=edges[1:].tolist(),
            bucket=counts.astype(np.float64).tolist(),
        )
        self._write_values(step, [summary_pb2.Summary.Value(tag=tag, histo=histo)])

    def text(self, tag: str, text: str, step: int) -> None:
        from tensorboard.compat.proto import summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2
        from tensorboard.plugins.text import metadata

        tensor = tensor_pb2.TensorProto(
            dtype=types_pb2.DT_STRING,
            string_val=[text.encode("utf-8")],
            tensor_shape=tensor_shape_pb2.TensorShapeProto(
                dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=1)]
            ),
        )
        value = summary_pb2.Summary.Value(
            tag=tag, tensor=tensor, metadata=metadata.create_summary_metadata(tag, "")
        )
        self._write_values(step, [value])

    def params(self, params: Dict[str, Any], metric_tags: List[str], step: int) -> None:
        # No experiment description: TensorBoard then ranks the parameters by whether they
        # differ between runs and offers every scalar as a metric (see _hparams).
        self._write_values(step, [_hparams.session_start_value(params, self.wall_time)])

    def run_ended(self, outcome: str) -> None:
        self._write_values(0, [_hparams.session_end_value(outcome, self.wall_time)])

    # -- resuming ----------------------------------------------------------------------

    def resume(self, point: ResumePoint) -> None:
        self._close_file()
        sources = _event_history.source_files(point, self._dir, self._has_own_history)
        if not sources:
            return
        target = self._new_path()
        _event_history.rewrite(self._dir, sources, point, self._header(), target)
        self._file = open(target, "ab")
        self._has_own_history = True

    # -- files -------------------------------------------------------------------------

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())

    def close(self) -> None:
        self._close_file()

    def _close_file(self) -> None:
        if self._file is not None:
            handle, self._file = self._file, None
            sync_and_close([handle])

    def _new_path(self) -> Path:
        # TensorBoard's own naming, which its readers look for, then our suffix.
        host, pid, number = socket.gethostname(), os.getpid(), next(_file_numbers)
        name = f"events.out.tfevents.{int(time.time()):010d}.{host}.{pid}.{number}"
        return self._dir / (name + _event_history.SUFFIX)

    def _header(self) -> bytes:
        from tensorboard.compat.proto import event_pb2

        event = event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2")
        return _events.frame([event.SerializeToString()])

    def _write(self, data: bytes) -> None:
        if self._file is None:
            self._file = open(self._new_path(), "ab")
            self._file.write(self._header())
        self._file.write(data)

    def _write_values(self, step: int, values: List[Any]) -> None:
        from tensorboard.compat.proto import event_pb2, summary_pb2

        event = event_pb2.Event(
            wall_time=self.wall_time, step=step, summary=summary_pb2.Summary(value=values)
        )
        self._write(_events.frame([event.SerializeToString()]))
