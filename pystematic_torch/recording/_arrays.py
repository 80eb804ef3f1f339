"""What a recorder remembers about its array tags, for ``Recorder.array``.

Backends stack a tag's arrays along a new first axis, so every array of a tag must have
the shape of its first; and an array that no backend stores is worth one warning per tag,
not one per call.
"""
import logging
from typing import Dict, Set

from ..errors import RecorderError

logger = logging.getLogger("pystematic.torch.recording")


class ArrayTags:
    """The shape of each tag's first array, and the tags already warned about."""

    def __init__(self) -> None:
        self._shapes: Dict[str, tuple] = {}
        self._unstored: Set[str] = set()

    def check(self, tag: str, shape: tuple, unstored: bool) -> None:
        """Raise if ``shape`` is not the tag's; warn once per tag when ``unstored``."""
        if self._shapes.setdefault(tag, shape) != shape:
            raise RecorderError(
                f"Recorder.array({tag!r}) got shape {shape}, but earlier arrays of this tag "
                f"had shape {self._shapes[tag]}; use a new tag for a new shape."
            )
        if unstored and tag not in self._unstored:
            self._unstored.add(tag)
            logger.warning("Array %r is not stored: no backend stores arrays (use hdf5=True).",
                           tag)
