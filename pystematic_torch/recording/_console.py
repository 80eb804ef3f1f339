"""Printing each step's scalars."""
import sys
from typing import Dict, Optional, TextIO

from ._backend import RecorderBackend

__all__ = ["ConsoleBackend"]


class ConsoleBackend(RecorderBackend):
    """Prints one line per step with the scalars recorded at it, when the step finishes.

    For example ``[step 12] train/loss=0.4213 train/accuracy=0.91``. A step without
    scalars prints nothing; scalars of the step that is open when the recorder closes are
    printed at close.

    Args:
        stream: Where to print; ``sys.stdout`` (looked up at each print) when None.
    """

    name = "console"

    def __init__(self, stream: Optional[TextIO] = None) -> None:
        self._stream = stream
        self._values: Dict[str, float] = {}
        self._step: Optional[int] = None

    def scalar(self, tag: str, value: float, step: int) -> None:
        if step != self._step:
            self._print()
            self._step = step
        self._values[tag] = value

    def step_finished(self, step: int) -> None:
        if step == self._step:
            self._print()

    def close(self) -> None:
        self._print()

    def _print(self) -> None:
        if self._values:
            shown = " ".join(f"{tag}={value:.6g}" for tag, value in self._values.items())
            print(f"[step {self._step}] {shown}", file=self._stream or sys.stdout, flush=True)
            self._values = {}
