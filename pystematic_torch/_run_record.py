"""``run.json``: a small status record in every run directory, for tools and sweeps.

Written atomically (a temporary file renamed into place) when the run starts and again when it
ends, however it ends, by rank 0 only. A process killed with SIGKILL cannot write its end, so
the record keeps saying "running"; readers tell a dead run from a live one with
:func:`status`, which checks the recorded process (pid, host and the process's start time,
so a reused pid is not mistaken for the run).

The fields::

    format        1
    experiment    the experiment's name
    status        "running", "finished", "failed", "preempted" or "interrupted"
    exit_code     0, 1, 143 (preempted), 130 (interrupted); null while running. A sweep
                  writes the code it observed, negative for a signal (-9: SIGKILL)
    pid, host     rank 0's process
    process_started  that process's start time (seconds since the epoch)
    started_at, ended_at  ISO 8601 times with the UTC offset
    resumed_from  the checkpoint file the run was started with, or null
    world_size    the number of ranks
    version       the pystematic-torch version
"""
import datetime
import json
import logging
import os
import pathlib
import socket
from typing import Any, Dict, Optional

from . import _session
from ._version import __version__

logger = logging.getLogger("pystematic.torch")

RECORD_NAME = "run.json"
RUNNING, FINISHED, FAILED = "running", "finished", "failed"
PREEMPTED, INTERRUPTED = "preempted", "interrupted"
#: A record that still says "running" while its process is gone (killed without warning).
DIED = "died"

_ENDINGS = {
    _session.SUCCESS: (FINISHED, 0),
    _session.FAILURE: (FAILED, 1),
    _session.PREEMPTED: (PREEMPTED, 143),
    _session.INTERRUPTED: (INTERRUPTED, 130),
}
_STATUS_OF_EXIT_CODE = {0: FINISHED, 130: INTERRUPTED, 143: PREEMPTED}
#: The run directory whose record this process started last (rank 0 only).
_run_dir: Optional[pathlib.Path] = None


def start(experiment: Any, params: dict) -> None:
    """Record that this run started, and have its end recorded; a no-op on ranks other than 0.

    A record that cannot be written is logged as a warning: it must never stop a training run.
    """
    global _run_dir
    _run_dir = None  # until this run's record exists: no earlier run's is corrected
    if params.get("distributed"):
        from .distributed import get_num_processes, is_master

        if not is_master():
            return
        world_size = get_num_processes()
    else:
        world_size = 1
    import pystematic

    run_dir = pathlib.Path(str(pystematic.output_dir))
    record = {
        "format": 1,
        "experiment": experiment.name,
        "status": RUNNING,
        "exit_code": None,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "process_started": _process_start_time(os.getpid()),
        "started_at": _now(),
        "ended_at": None,
        "resumed_from": _resolved_checkpoint(params.get("checkpoint")),
        "world_size": world_size,
        "version": __version__,
    }
    _write_logged(run_dir, record)

    _run_dir = run_dir

    def record_end() -> None:
        status, exit_code = _ENDINGS.get(_session.outcome(), (FAILED, 1))
        if _session.exit_code() is not None:
            exit_code = _session.exit_code()
        _write_logged(run_dir, {**record, "status": status, "exit_code": exit_code,
                                "ended_at": _now()})  # fmt: skip

    _session.call_at_exit(record_end)


def correct_the_ending(exit_code: int) -> None:
    """After the end was recorded: the run's process ends with ``exit_code`` after all (a
    clean-up failed, or Ctrl-C came while closing); a no-op where no record was started."""
    if _run_dir is None:
        return
    try:
        record_exit(_run_dir, exit_code)
    except OSError as error:
        logger.warning("Could not correct the run's status record %s: %s",
                       _run_dir / RECORD_NAME, error)  # fmt: skip


def read(run_dir: os.PathLike) -> Optional[Dict[str, Any]]:
    """The run's record, or None when there is none or it cannot be read."""
    try:
        with open(pathlib.Path(run_dir) / RECORD_NAME, encoding="utf-8") as file:
            record = json.load(file)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def status(record: Dict[str, Any]) -> str:
    """The record's status, with "running" checked: :data:`DIED` if its process is gone.

    A run on another host cannot be checked from here and is reported as running.
    """
    recorded = record.get("status", RUNNING)
    if recorded != RUNNING or record.get("host") != socket.gethostname():
        return recorded
    return RUNNING if _is_alive(record.get("pid"), record.get("process_started")) else DIED


def status_of_exit_code(exit_code: int) -> str:
    """The status a process's exit code means (negative: killed by that signal)."""
    return _STATUS_OF_EXIT_CODE.get(exit_code, FAILED)


def record_exit(
    run_dir: os.PathLike,
    exit_code: int,
    status: Optional[str] = None,
    fallback: Optional[Dict[str, Any]] = None,
) -> None:
    """Make the record agree with the exit code a parent observed, if it does not already.

    A run killed by a signal, or one whose clean-up failed after its record said "finished",
    left a record that disagrees with how the process really ended; one that failed before
    its record was written left none, and gets ``fallback`` completed with the ending.

    Raises:
        OSError: the record could not be written.
    """
    record = read(run_dir)
    if record is None:
        if fallback is None:
            return
        record = fallback
    status = status or status_of_exit_code(exit_code)
    if record.get("exit_code") == exit_code and record.get("status") == status:
        return
    ended = record.get("ended_at") or _now()
    write(run_dir, {**record, "status": status, "exit_code": exit_code, "ended_at": ended})


def write(run_dir: os.PathLike, record: Dict[str, Any]) -> None:
    """Replace the record atomically: readers see the old one or the new one, never a mix.

    Raises:
        OSError: the file could not be written; the previous record is left as it was.
    """
    run_dir = pathlib.Path(run_dir)
    temporary = run_dir / f".{RECORD_NAME}.tmp-{os.getpid()}"
    try:
        with open(temporary, "w", encoding="utf-8") as file:
            json.dump(record, file, indent=2)
            file.write("\n")
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, run_dir / RECORD_NAME)
    finally:
        temporary.unlink(missing_ok=True)


def _write_logged(run_dir: pathlib.Path, record: Dict[str, Any]) -> None:
    try:
        write(run_dir, record)
    except OSError as error:
        logger.warning("Could not write the run's status record %s: %s", run_dir / RECORD_NAME,
                       error)  # fmt: skip


def _resolved_checkpoint(value: Any) -> Optional[str]:
    if value is None:
        return None
    try:
        from .checkpoint import find_checkpoint

        return str(find_checkpoint(value).resolve())
    except Exception:  # noqa: BLE001 - loading the checkpoint reports the problem itself
        return str(value)


def _now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="milliseconds")


def _process_start_time(pid: int) -> Optional[float]:
    try:
        import psutil

        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:  # ended, not yet collected by its parent
            return None
        return process.create_time()
    except Exception:  # noqa: BLE001 - gone already, or not allowed to look
        return None


def _is_alive(pid: Any, started: Any) -> bool:
    if not isinstance(pid, int):
        return False
    actual = _process_start_time(pid)
    if actual is None:
        return False
    # A pid is reused only by a process started later: compare start times, with slack for
    # the clock-tick rounding of /proc.
    return not isinstance(started, (int, float)) or abs(actual - started) < 1.0
