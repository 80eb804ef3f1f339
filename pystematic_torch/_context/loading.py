"""Loading a state into a Context's items: all of them, or none.

1. Every item's saved state is checked without changing anything (see ``_state``); all
   problems, with their paths, go into one error.
2. Items are loaded one by one, each after a snapshot of its state, in the order of
   ``_state.load_order``: objects whose check cannot see every failure first, so a load
   that fails at all most likely fails before a model was touched; objects with their own
   ``check_state_dict`` last, since what their loading does may not be undoable.
3. If a load raises anyway, every item loaded so far, and the one that raised, is put
   back from its snapshot, and the error says so.
4. Last, the global random number generators are put into their saved states (the reserved
   entry ``randomness.KEY``, checked in step 1 with the items).

``capture_items``, the other way, makes the state that ``ctx.state_dict()`` returns.
"""
import logging
from typing import Any, Dict, List, Mapping, Optional, Tuple

from .. import _state
from ..checkpoint import ContextState
from ..checkpoint._format import METADATA_KEY
from ..errors import StateDictError
from . import precision, randomness

logger = logging.getLogger("pystematic.torch")

_UNEXPECTED_HINT = (
    "the context has no item of that name: register every item before ctx.autotransform() "
    "or ctx.load_state_dict(), or pass strict=False to leave such entries out"
)
_MISSING_HINT = (
    "the context has these items but the checkpoint has no state for them; pass strict=False "
    "to keep their current state"
)


def capture_items(items: Dict[str, Any], ranks_diverged: bool) -> ContextState:
    """The state of every item that has one, and of the global random generators."""
    state = {}
    for name, value in items.items():
        captured = _state.capture(value)
        if captured is not _state.OPAQUE:
            state[name] = captured
    state[randomness.KEY] = randomness.capture(ranks_diverged)
    return ContextState(state)


def load_items(
    items: Dict[str, Any], state: Any, strict: bool
) -> Tuple[List[str], Optional[bool]]:
    """Load ``state`` into ``items`` (name -> item, updated in place) atomically.

    Returns:
        The names in ``state`` that no item took (only when not strict; logged as a
        warning), and whether the restored generators are per-rank streams (None when
        ``state`` holds no random state).

    Raises:
        StateDictError: ``state`` does not fit, listing every problem; or an item's own
            loader raised, after every item was put back as it was.
    """
    if not isinstance(state, Mapping):
        raise StateDictError(
            f"Context.load_state_dict needs a dict from Context.state_dict(), "
            f"got {type(state).__name__}."
        )
    # Not items: what wrote the file (a checkpoint read with torch.load directly), and the
    # global generators.
    random_state = state.get(randomness.KEY)
    state = {
        name: value for name, value in state.items()
        if name not in (METADATA_KEY, randomness.KEY)
    }  # fmt: skip
    state, may_miss = precision.reconcile(items, state)
    stateful = [name for name, value in items.items() if _state.has_state(value)]
    to_load = [name for name in stateful if name in state]
    problems: List[str] = []
    if strict:
        missing = [name for name in stateful if name not in state and name not in may_miss]
        unexpected = [name for name in state if name not in items]
        if missing:
            problems.append(f"missing from the checkpoint: {', '.join(missing)} ({_MISSING_HINT})")
        if unexpected:
            problems.append(
                f"unexpected in the checkpoint: {', '.join(map(str, unexpected))} "
                f"({_UNEXPECTED_HINT})"
            )
    for name in to_load:
        _state.check(name, items[name], state[name], strict, problems)
    if random_state is not None:
        problems.extend(randomness.problems(random_state))
    if problems:
        raise StateDictError(
            "The state does not fit this Context; nothing was loaded:\n  - "
            + "\n  - ".join(problems)
        )
    to_load.sort(key=lambda name: _state.load_order(items[name]))
    _apply(items, state, to_load, strict)
    skipped = [name for name in state if name not in items]
    ranks_diverged = None if random_state is None else randomness.restore(random_state)
    if skipped:
        logger.warning("Ignored checkpoint entries the context has no item for: %s.", skipped)
    return skipped, ranks_diverged


def _apply(items: Dict[str, Any], state: Mapping, names: List[str], strict: bool) -> None:
    before: List[Tuple[str, Any]] = []
    for name in names:
        before.append((name, _state.snapshot(items[name])))
        try:
            items[name] = _state.restore(name, items[name], state[name], strict)
        except Exception as error:
            stuck = _roll_back(items, before)
            outcome = (
                "every item was put back as it was"
                if not stuck
                else "these items could not be put back and may be partly loaded: "
                + "; ".join(stuck)
            )
            raise StateDictError(
                f"{name}: its load_state_dict raised {type(error).__name__}: {error}; "
                f"{outcome}."
            ) from error


def _roll_back(items: Dict[str, Any], before: List[Tuple[str, Any]]) -> List[str]:
    stuck = []
    for name, snapshot in reversed(before):
        try:
            items[name] = _state.restore(name, items[name], snapshot, strict=False)
        except Exception as error:  # noqa: BLE001 - put back every other item regardless
            logger.debug("Could not put %s back after a failed load.", name, exc_info=True)
            stuck.append(f"{name} ({type(error).__name__}: {error})")
    return stuck
