"""TensorBoard event files, written with the ``tensorboard`` package's protos and records."""
import itertools
import os
import socket
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from ._backend import RecordedImage, RecorderBackend

__all__ = ["TensorBoardBackend"]

_file_numbers = itertools.count()
# Scalars of one step travel in one event; this bounds the size of such an event.
_MAX_VALUES_PER_EVENT = 512


class TensorBoardBackend(RecorderBackend):
    """Writes one TensorBoard event file into the output directory.

    The directory is one run for ``tensorboard --logdir``: hyperparameters from
    :meth:`Recorder.params` are part of the same run, not a separate one. Scalars recorded
    at the same step are written as one event, which TensorBoard reads as separate values.
    Scalars are stored as 32-bit floats, as TensorBoard does; ``scalars.csv`` keeps full
    precision.
    """

    name = "tensorboard"

    def __init__(self) -> None:
        self._writer: Any = None
        self._pending: List[Any] = []
        self._pending_step: Optional[int] = None

    def open(self, output_dir: Optional[Path]) -> None:
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.summary.writer.record_writer import RecordWriter

        self._event_pb2, self._summary_pb2 = event_pb2, summary_pb2
        self._value_type = summary_pb2.Summary.Value
        # The name follows TensorBoard's own pattern; readers look for "tfevents" in it.
        host, pid, number = socket.gethostname(), os.getpid(), next(_file_numbers)
        name = f"events.out.tfevents.{int(time.time()):010d}.{host}.{pid}.{number}"
        self.path = Path(output_dir) / name
        self._writer = RecordWriter(open(self.path, "wb"))
        self._write_event(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

    def scalar(self, tag: str, value: float, step: int) -> None:
        if step != self._pending_step or len(self._pending) >= _MAX_VALUES_PER_EVENT:
            self._write_pending()
            self._pending_step = step
        self._pending.append(self._value_type(tag=tag, simple_value=value))

    def image(self, tag: str, image: RecordedImage, step: int) -> None:
        height, width, channels = image.pixels.shape
        picture = self._summary_pb2.Summary.Image(
            height=height, width=width, colorspace=channels, encoded_image_string=image.png
        )
        self._write_values(step, [self._value_type(tag=tag, image=picture)])

    def histogram(self, tag: str, values: np.ndarray, bins: int, step: int) -> None:
        counts, edges = np.histogram(values, bins=bins)
        histo = self._summary_pb2.HistogramProto(
            min=float(values.min()) if values.size else 0.0,
            max=float(values.max()) if values.size else 0.0,
            num=float(values.size),
            sum=float(values.sum()),
            sum_squares=float(np.dot(values, values)),
            bucket_limit=edges[1:].tolist(),
            bucket=counts.astype(np.float64).tolist(),
        )
        self._write_values(step, [self._value_type(tag=tag, histo=histo)])

    def text(self, tag: str, text: str, step: int) -> None:
        from tensorboard.compat.proto import tensor_pb2, tensor_shape_pb2, types_pb2
        from tensorboard.plugins.text import metadata

        tensor = tensor_pb2.TensorProto(
            dtype=types_pb2.DT_STRING,
            string_val=[text.encode("utf-8")],
            tensor_shape=tensor_shape_pb2.TensorShapeProto(
                dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=1)]
            ),
        )
        value = self._value_type(
            tag=tag, tensor=tensor, metadata=metadata.create_summary_metadata(tag, "")
        )
        self._write_values(step, [value])

    def params(self, params: Dict[str, Any], metric_tags: List[str], step: int) -> None:
        # Built from the hparams plugin's own protos and metadata; its summary helpers
        # need TensorFlow.
        from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

        types = {bool: api_pb2.DATA_TYPE_BOOL, str: api_pb2.DATA_TYPE_STRING}
        experiment = api_pb2.Experiment(
            time_created_secs=time.time(),
            hparam_infos=[
                api_pb2.HParamInfo(name=name, type=types.get(type(v), api_pb2.DATA_TYPE_FLOAT64))
                for name, v in params.items()
            ],
            metric_infos=[api_pb2.MetricInfo(name=api_pb2.MetricName(tag=t)) for t in metric_tags],
        )
        session = plugin_data_pb2.SessionStartInfo(start_time_secs=time.time())
        for name, value in params.items():
            field = {bool: "bool_value", str: "string_value"}.get(type(value), "number_value")
            setattr(session.hparams[name], field, value)
        values = [
            self._value_type(
                tag=tag, tensor=metadata.NULL_TENSOR,
                metadata=metadata.create_summary_metadata(plugin_data),
            )
            for tag, plugin_data in (
                (metadata.EXPERIMENT_TAG, plugin_data_pb2.HParamsPluginData(experiment=experiment)),
                (metadata.SESSION_START_INFO_TAG,
                 plugin_data_pb2.HParamsPluginData(session_start_info=session)),
            )
        ]
        self._write_values(step, values)

    def resume(self, step: int) -> None:
        # TensorBoard drops the events at this step and later that it read before a
        # SessionLog.START event, as it does for any restarted job.
        self._write_pending()
        session_log = self._event_pb2.SessionLog(status=self._event_pb2.SessionLog.START)
        self._write_event(
            self._event_pb2.Event(wall_time=time.time(), step=step, session_log=session_log)
        )

    def flush(self) -> None:
        self._write_pending()
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self.flush()
            self._writer.close()
            self._writer = None

    def _write_pending(self) -> None:
        if self._pending:
            self._write_values(self._pending_step, self._pending)
            self._pending = []

    def _write_values(self, step: int, values: List[Any]) -> None:
        if values is not self._pending:
            self._write_pending()
        summary = self._summary_pb2.Summary(value=values)
        self._write_event(self._event_pb2.Event(wall_time=time.time(), step=step, summary=summary))

    def _write_event(self, event: Any) -> None:
        self._writer.write(event.SerializeToString())
