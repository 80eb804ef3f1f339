"""A SmartDataLoader's saved place: the form of its state, and resuming under a new layout.

A state counts the batches delivered in the epoch. Resumed with another world size or batch
size, that count is rescaled to the same number of samples when the next iteration starts,
and the continuation is approximate.
"""
import logging
from typing import Any

from ..distributed import get_num_processes
from ..errors import StateDictError

logger = logging.getLogger("pystematic.torch.data")

STATE_KEYS = ("epoch", "position", "seed", "num_processes", "batch_size")


def check_state(state: Any) -> None:
    """Raise if ``state`` is not a state a SmartDataLoader made.

    Raises:
        StateDictError: ``state`` is not a dict, lacks a key or holds a wrong type.
    """
    if not isinstance(state, dict):
        raise StateDictError(
            f"SmartDataLoader.load_state_dict got a {type(state).__name__}; pass a dict "
            "made by SmartDataLoader.state_dict()."
        )
    problems = []
    for key in STATE_KEYS:
        if key not in state:
            problems.append(f"missing {key!r}")
        elif key != "batch_size" and (
            isinstance(state[key], bool) or not isinstance(state[key], int)
        ):
            problems.append(f"{key!r} is {state[key]!r}, not an int")
    if problems:
        raise StateDictError(
            f"SmartDataLoader.load_state_dict got a state with {'; '.join(problems)}; "
            "pass a dict made by SmartDataLoader.state_dict()."
        )


def rescale_position(loader: Any) -> None:
    """Turn a loaded position saved under another layout into this one's, once."""
    if loader._saved_layout is None:
        return
    saved_processes, saved_batch_size = loader._saved_layout
    loader._saved_layout = None
    processes, batch_size = get_num_processes(), loader.batch_size
    if (saved_processes, saved_batch_size) == (processes, batch_size) or not loader._position:
        return
    samples = loader._position * saved_processes * (saved_batch_size or 1)
    position = samples // (processes * (batch_size or 1))
    logger.warning(
        "SmartDataLoader resumes with %d processes and batch size %s, saved with %d and "
        "%s: continuing at batch %d of epoch %d, an approximate continuation.",
        processes, batch_size, saved_processes, saved_batch_size, position, loader._epoch,
    )  # fmt: skip
    loader._position = position
