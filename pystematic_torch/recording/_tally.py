"""Counting, on the writer thread, what reached the backends at the latest step.

A checkpoint taken in the middle of a step has recorded some of that step's values and not
yet the others. The recorder's state therefore says how many values of each kind and tag
reached the backends at its count; a resumed run keeps exactly those and drops what the
abandoned continuation recorded after them (see :class:`ResumePoint`).

Counting every scalar as it passes would cost the writer a dictionary update per value.
Instead the tally keeps references to the runs of scalars handed over at the latest step
and counts them only when asked; when the step moves on, they are simply dropped.
"""
from collections import Counter
from typing import Dict, List, Optional

# Past this many held values at one step (a count that is never advanced), they are counted
# and let go, so memory stays bounded.
_MAX_HELD = 1 << 16


class Tally:
    """How many values of each kind and tag reached the backends at the latest step."""

    def __init__(self) -> None:
        self.step: Optional[int] = None
        self._runs: List[list] = []
        self._held = 0
        self._counts: Dict[str, Counter] = {}

    def add_run(self, run: list) -> None:
        """A run of ``(kind, tag, value, step, wall_time)`` scalars handed to the backends."""
        last = run[-1][3]
        if last != self.step:
            self._restart(last)
        self._runs.append(run)
        self._held += len(run)
        if self._held > _MAX_HELD:
            self._count_held()

    def add(self, kind: str, tag: str, step: int) -> None:
        """One value of another kind handed to the backends."""
        if step != self.step:
            self._restart(step)
        self._counts.setdefault(kind, Counter())[tag] += 1

    def resume(self, step: int, recorded: Optional[Dict[str, Dict[str, int]]]) -> None:
        """Start from a loaded checkpoint: at ``step``, ``recorded`` values are already kept.

        A run resumed at a count and checkpointed again at the same count must say that
        these values are there, or the next resume would drop them.
        """
        self._restart(step)
        for kind, tags in (recorded or {}).items():
            self._counts[kind] = Counter(tags)

    def counts_at(self, step: int) -> Dict[str, Dict[str, int]]:
        """``{kind: {tag: n}}`` of the values at ``step``; empty when none arrived there."""
        if step != self.step:
            return {}
        self._count_held()
        return {kind: dict(counts) for kind, counts in self._counts.items() if counts}

    def _restart(self, step: int) -> None:
        self.step = step
        self._runs = []
        self._held = 0
        self._counts = {}

    def _count_held(self) -> None:
        # A run can start with values of the previous step; only this step's count.
        step = self.step
        scalars = self._counts.setdefault("scalar", Counter())
        for run in self._runs:
            scalars.update(item[1] for item in run if item[3] == step)
        self._runs = []
        self._held = 0
