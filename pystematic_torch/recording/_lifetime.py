"""Where a recorder writes, and making sure every recorder is closed in the end."""
import atexit
import logging
import sys
import weakref
from pathlib import Path
from typing import Any, Optional, Union

from .. import _session
from ..errors import RecorderError

logger = logging.getLogger("pystematic.torch.recording")

_open_recorders: "weakref.WeakSet[Any]" = weakref.WeakSet()


def resolve_output_dir(output_dir: Union[str, Path, None], needed: bool) -> Optional[Path]:
    """``output_dir``, else the running experiment's output directory."""
    if output_dir is not None:
        return Path(output_dir)
    if _session.current_params() is not None:
        import pystematic

        return Path(str(pystematic.output_dir))
    if needed:
        raise RecorderError(
            "Recorder() got no output_dir and no pystematic experiment is running; pass "
            "output_dir='some/dir', create the recorder inside an experiment, or turn the "
            "file backends off (tensorboard=False, file=False, hdf5=False)."
        )
    return None


def claim_directory(output_dir: Optional[Path], writes_files: bool) -> Optional[Path]:
    """Refuse a second recorder writing files into a directory an open one writes into.

    Two would each write a CSV header and their rows into one ``scalars.csv``, and two
    TensorBoard event streams that TensorBoard merges into one run showing every step twice.

    Returns:
        The directory, resolved now (a later ``os.chdir`` must not change what a relative
        path means), for the recorder to keep; None when it writes no file.

    Raises:
        RecorderError: a recorder of this process still writes files into ``output_dir``.
    """
    if not writes_files or output_dir is None:
        return None
    claimed = output_dir.resolve()
    for other in list(_open_recorders):
        if getattr(other, "_claimed_dir", None) == claimed:
            raise RecorderError(
                f"Another Recorder of this process still writes into {claimed}: two recorders "
                "writing one directory would mix two CSV headers and two TensorBoard event "
                "streams in it. Record through that one (one Recorder, registered on the "
                "Context, serves the whole run), close it first (a recorder stays open until "
                "closed, or until its experiment ends, even when nothing refers to it any "
                "more), or give this one its own output_dir."
            )
    return claimed


def register(recorder: Any) -> None:
    """Close ``recorder`` when the experiment ends (also when it raised), else at exit."""
    _open_recorders.add(recorder)
    _session.call_at_exit(recorder.close)


def outcome_at_exit() -> str:
    """How a recorder closed outside an experiment's end ended: success, unless the program
    is ending because of an exception nobody caught (Python keeps it in ``sys.last_value``).
    """
    last = getattr(sys, "last_value", None)
    if last is None:
        return _session.SUCCESS
    return _session.INTERRUPTED if isinstance(last, KeyboardInterrupt) else _session.FAILURE


def unregister(recorder: Any) -> None:
    _open_recorders.discard(recorder)


@atexit.register
def _close_open_recorders() -> None:
    for recorder in list(_open_recorders):
        try:
            recorder.close()
        except Exception:
            logger.exception("Closing a recorder at interpreter exit failed.")
