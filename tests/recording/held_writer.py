"""A backend that holds the recorder's writer thread, so tests control when values are written."""
import threading

from pystematic_torch.recording import RecorderBackend


class HeldWriter(RecorderBackend):
    """Holds the writer thread at its first scalar until :attr:`released` is set."""

    name = "held"

    def __init__(self):
        self.reached, self.released = threading.Event(), threading.Event()

    def scalar(self, tag, value, step):
        self.reached.set()
        assert self.released.wait(60)
