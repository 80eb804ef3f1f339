"""What the plugin knows about the experiment running in this process.

Kept apart from ``plugin`` so that library modules can ask "is an experiment running, and
with which parameters?" without importing the plugin (arrows point one way).
"""
import logging
from typing import Callable, List, Optional

logger = logging.getLogger("pystematic.torch")

_params: Optional[dict] = None
_exit_callbacks: List[Callable[[], None]] = []


def current_params() -> Optional[dict]:
    """The running experiment's parameters, or None outside an experiment."""
    return _params


def start(params: dict) -> None:
    global _params
    _params = params
    _exit_callbacks.clear()


def call_at_exit(callback: Callable[[], None]) -> None:
    """Run ``callback`` when the current experiment ends, also when it raised.

    Outside an experiment the callback is not kept: there is no end to wait for.
    """
    if _params is not None:
        _exit_callbacks.append(callback)


def end() -> None:
    """Run the exit callbacks, newest first, and forget the experiment.

    A failing callback is logged and the others still run, so one broken object cannot
    keep another from flushing its data.
    """
    global _params
    while _exit_callbacks:
        callback = _exit_callbacks.pop()
        try:
            callback()
        except Exception:
            logger.exception("Cleanup at experiment end failed in %r.", callback)
    _params = None
