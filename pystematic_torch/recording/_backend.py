"""The base class every recorder backend derives from, and the image record they share."""
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

__all__ = ["RecorderBackend", "RecordedImage"]


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


class RecorderBackend:
    """Receives recorded values on the recorder's writer thread and stores them.

    Subclass it and override the methods for the kinds of values your backend stores; the
    default methods do nothing, so a backend that only wants scalars overrides only
    :meth:`scalar`. Every method is called on the recorder's single background writer
    thread, in the order the values were recorded, so a backend needs no locking of its
    own. An exception raised by a method is reported to the user at the next recorder call
    (naming the backend by :attr:`name`) and the backend is then closed and left out.

    Values arrive converted: scalars as Python ``int`` or ``float``, images and figures as
    a :class:`RecordedImage`, histograms and arrays as NumPy arrays, on the CPU.

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
        """Store the run's hyperparameters (bool, int, float or str values).

        ``metric_tags`` name the scalars that hold the run's results; their values arrive
        through :meth:`scalar` right after this call.
        """

    def array(self, tag: str, array: np.ndarray, step: int) -> None:
        """Store an array. Only backends that override this method receive arrays."""

    def step_finished(self, step: int) -> None:
        """Called when :meth:`Recorder.step` moves the counter on from ``step``.

        Only backends that override this method are told, so steps cost nothing otherwise.
        """

    def resume(self, step: int) -> None:
        """Called when the counter is restored to ``step`` from a checkpoint.

        Anything a backend already holds at ``step`` or later belongs to an abandoned
        continuation of the run; backends that append to existing files drop it here so a
        resumed run has no duplicated steps.
        """

    def flush(self) -> None:
        """Make everything received so far readable by other processes."""

    def close(self) -> None:
        """Flush and release files. Called once; no other method is called afterwards."""


def overrides(backend: RecorderBackend, method: str) -> bool:
    """Whether ``backend`` implements ``method`` itself instead of inheriting the no-op."""
    return getattr(type(backend), method) is not getattr(RecorderBackend, method)
