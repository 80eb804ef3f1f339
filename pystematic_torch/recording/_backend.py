"""The base class every recorder backend derives from, and the records they receive."""
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional

import numpy as np

__all__ = ["RecorderBackend", "RecordedImage", "ResumePoint"]


class RecordedImage:
    """An image (or rendered figure) as backends receive it.

    Attributes:
        pixels: A ``uint8`` array of shape ``(height, width, channels)`` with 1 (grey),
            3 (RGB) or 4 (RGBA) channels.
    """

    __slots__ = ("pixels", "_png")

    def __init__(self, pixels: np.ndarray) -> None:
        self.pixels = pixels
        self._png: Optional[bytes] = None

    @property
    def png(self) -> bytes:
        """The image encoded as PNG; encoded once and shared by every backend."""
        if self._png is None:
            from io import BytesIO

            from PIL import Image

            pixels = self.pixels[:, :, 0] if self.pixels.shape[2] == 1 else self.pixels
            buffer = BytesIO()
            Image.fromarray(pixels).save(buffer, format="PNG")
            self._png = buffer.getvalue()
        return self._png


class ResumePoint:
    """Where a resumed run continues, and which earlier recordings belong to its history.

    A checkpoint captures the recorder's count and how many values of each kind and tag had
    been recorded at that count. Everything recorded before the capture is the resumed
    run's history; everything after it belongs to an abandoned continuation.

    Attributes:
        step: The count the run continues from.
        recorded: ``{kind: {tag: n}}``: how many values of each kind (``"scalar"``,
            ``"image"``, ``"histogram"``, ``"text"``, ``"params"``, ``"array"``; the tag
            of params is ``""``) had been recorded at ``step`` when the checkpoint was
            taken. None for a checkpoint that does not say; then nothing at ``step`` is
            kept.
        source_dir: The directory the checkpointed run recorded into, or None when the
            checkpoint does not say. When it differs from the resumed recorder's own
            directory and that directory holds no recordings of its own yet, backends copy
            the history from here, so the new directory holds the whole run.
    """

    def __init__(
        self,
        step: int,
        recorded: Optional[Mapping[str, Mapping[str, int]]] = None,
        source_dir: Optional[Path] = None,
    ) -> None:
        self.step = step
        self.recorded = recorded
        self.source_dir = source_dir

    def keeper(self) -> Callable[[str, str, int], bool]:
        """A function ``keep(kind, tag, step)`` for stored values, asked in recording order.

        It answers True for values before :attr:`step` and for the first ``n`` values of a
        kind and tag at :attr:`step` (``n`` from :attr:`recorded`), False for the rest.
        """
        limit, recorded = self.step, self.recorded or {}
        seen: Dict[tuple, int] = {}

        def keep(kind: str, tag: str, step: int) -> bool:
            if step != limit:
                return step < limit
            key = (kind, tag)
            index = seen.get(key, 0)
            seen[key] = index + 1
            return index < recorded.get(kind, {}).get(tag, 0)

        return keep

    def source_for(self, own_dir: Optional[Path]) -> Optional[Path]:
        """:attr:`source_dir` when it is another existing directory than ``own_dir``."""
        if self.source_dir is None or own_dir is None or not Path(self.source_dir).is_dir():
            return None
        if os.path.samefile(self.source_dir, own_dir):
            return None
        return Path(self.source_dir)


class RecorderBackend:
    """Receives recorded values on the recorder's writer thread and stores them.

    Subclass it and override the methods for the kinds of values your backend stores; the
    default methods do nothing, so a backend that only wants scalars overrides only
    :meth:`scalar`. Every method is called on the recorder's single background writer
    thread, in the order the values were recorded, so a backend needs no locking of its
    own. An exception raised by a method is reported to the user at the next recorder call
    (naming the backend by :attr:`name`) and the backend is then closed and left out.

    Values arrive converted: scalars as Python ``int`` or ``float``, images and figures as
    a :class:`RecordedImage`, histograms and arrays as NumPy arrays, on the CPU. While a
    method runs, :attr:`wall_time` holds the time (``time.time()``) of the recording call
    that made the value, which can be well before the backend receives it.

    Example:
        >>> class PrintLoss(RecorderBackend):
        ...     name = "print-loss"
        ...
        ...     def scalar(self, tag, value, step):
        ...         if tag == "loss":
        ...             print(step, value)
        >>> recorder = Recorder(output_dir="runs/demo", backends=[PrintLoss()])
    """

    #: Names the backend in error messages and logs.
    name: str = "custom"
    #: The wall-clock time of the recording call whose value is being delivered.
    wall_time: float = 0.0

    def open(self, output_dir: Optional[Path]) -> None:
        """Called once on the writer thread, before the first value reaches the backend.

        Backends create their files here rather than in ``__init__``, so a recorder that
        records nothing (on a rank other than 0, for example) leaves no files behind.

        Args:
            output_dir: The recorder's output directory (it exists), or None when the
                recorder was created without one.
        """

    def scalar(self, tag: str, value: float, step: int) -> None:
        """Store one number recorded with :meth:`Recorder.scalar` at ``step``."""

    def image(self, tag: str, image: RecordedImage, step: int) -> None:
        """Store an image; figures arrive here too, rendered to pixels."""

    def histogram(self, tag: str, values: np.ndarray, bins: int, step: int) -> None:
        """Store the distribution of ``values`` (a flat float64 array, finite values only)."""

    def text(self, tag: str, text: str, step: int) -> None:
        """Store a string."""

    def params(self, params: Dict[str, Any], metric_tags: List[str], step: int) -> None:
        """Store the run's hyperparameters (bool, int, float, str or None values).

        ``metric_tags`` name the scalars that hold the run's results; their values arrive
        through :meth:`scalar` right after this call.
        """

    def array(self, tag: str, array: np.ndarray, step: int) -> None:
        """Store an array. Only backends that override this method receive arrays."""

    def step_finished(self, step: int) -> None:
        """Called when :meth:`Recorder.step` moves the counter on from ``step``.

        Only backends that override this method are told, so steps cost nothing otherwise.
        """

    def resume(self, point: ResumePoint) -> None:
        """Called when the counter is restored from a checkpoint.

        What a backend's files hold beyond ``point`` (see :meth:`ResumePoint.keeper`)
        belongs to an abandoned continuation of the run; backends that append to existing
        files drop it here, so a resumed run has no duplicated and no missing step. A
        backend whose directory holds nothing yet may copy the history from
        :meth:`ResumePoint.source_for`.
        """

    def run_ended(self, outcome: str) -> None:
        """Called once when the recorder is closed, before :meth:`close`.

        ``outcome`` is how the run ended: ``"success"``, ``"failure"``, ``"preempted"``
        (stopped to be resumed later) or ``"interrupted"`` (Ctrl-C).
        """

    def flush(self) -> None:
        """Put everything received so far on disk (not only in the operating system's cache).

        Called by :meth:`Recorder.flush`, before every checkpoint is written, and every
        ``flush_secs`` seconds.
        """

    def close(self) -> None:
        """Flush and release files. Called once; no other method is called afterwards."""


def overrides(backend: RecorderBackend, method: str) -> bool:
    """Whether ``backend`` implements ``method`` itself instead of inheriting the no-op."""
    return getattr(type(backend), method) is not getattr(RecorderBackend, method)
