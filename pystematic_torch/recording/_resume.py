"""The recorder's state in a checkpoint, and the resume point a loaded state gives.

The state is plain data (ints, strings, dicts), so checkpoints load with
``torch.load(weights_only=True)``::

    {"count": 96,
     "recorded_at_count": {"scalar": {"val/acc1": 1, "lr": 1}},
     "output_dir": "/abs/path/of/the/run"}

``recorded_at_count`` says how many values of each kind and tag had been recorded at
``count`` when the state was captured, so that a resumed run keeps exactly those and drops
what was recorded after the capture. A state of only ``{"count": n}`` (an older checkpoint)
is accepted; then nothing recorded at ``n`` is kept.
"""
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

from ..errors import StateDictError
from ._backend import ResumePoint

_KINDS = ("scalar", "image", "histogram", "text", "params", "array")
_EXAMPLE = "{'count': 12, 'recorded_at_count': {'scalar': {'loss': 1}}, 'output_dir': '/runs/a'}"


def capture(
    count: int, recorded: Optional[Dict[str, Dict[str, int]]], output_dir: Optional[Path]
) -> Dict[str, Any]:
    """The state to save; ``recorded`` is None when this process records nothing."""
    state: Dict[str, Any] = {"count": count}
    if recorded is not None:
        state["recorded_at_count"] = recorded
    if output_dir is not None:
        state["output_dir"] = str(Path(output_dir).resolve())
    return state


def resume_point(state: Any) -> ResumePoint:
    """Check ``state`` and turn it into a :class:`ResumePoint`.

    Raises:
        StateDictError: ``state`` is not a state from :meth:`Recorder.state_dict`; the
            message lists every problem.
    """
    if not isinstance(state, Mapping):
        raise StateDictError(
            f"Recorder.load_state_dict() got a {type(state).__name__}; expected a dict like "
            f"{_EXAMPLE} as returned by Recorder.state_dict()."
        )
    problems = []
    count = state.get("count")
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        problems.append(f"'count' must be an int >= 0, not {count!r}")
    recorded = state.get("recorded_at_count")
    if recorded is not None and not _is_tally(recorded):
        problems.append(
            "'recorded_at_count' must map kinds "
            f"({', '.join(_KINDS)}) to dicts of tag: count >= 0, not {recorded!r}"
        )
    output_dir = state.get("output_dir")
    if output_dir is not None and not isinstance(output_dir, str):
        problems.append(f"'output_dir' must be a str, not {output_dir!r}")
    unknown = sorted(set(state) - {"count", "recorded_at_count", "output_dir"}, key=str)
    if unknown:
        problems.append(f"unknown keys {unknown}")
    if problems:
        raise StateDictError(
            f"Recorder.load_state_dict() got {state!r}: {'; '.join(problems)}. Expected a "
            f"dict like {_EXAMPLE} as returned by Recorder.state_dict()."
        )
    return ResumePoint(count, recorded, Path(output_dir) if output_dir is not None else None)


def _is_tally(recorded: Any) -> bool:
    if not isinstance(recorded, Mapping):
        return False
    for kind, counts in recorded.items():
        if kind not in _KINDS or not isinstance(counts, Mapping):
            return False
        for tag, number in counts.items():
            if not isinstance(tag, str) or isinstance(number, bool):
                return False
            if not isinstance(number, int) or number < 0:
                return False
    return True
