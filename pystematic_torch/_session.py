"""What the plugin knows about the experiment running in this process.

Kept apart from ``plugin`` so that library modules can ask "is an experiment running, and
with which parameters?" without importing the plugin (arrows point one way).

Three registries live here:

* exit callbacks (:func:`call_at_exit`): run once when the experiment ends, however it ends;
* durables (:func:`register_durable`): objects with a ``flush()`` that puts what they hold
  on disk, flushed by :func:`make_durable` before a checkpoint is written, so a kill right
  after a checkpoint loses nothing recorded before it;
* the outcome (:func:`outcome`): how the run is ending, for whoever writes it down
  (recorders, the run's status record) while the exit callbacks run.
"""
import logging
import threading
import weakref
from typing import Any, Callable, List, Optional

logger = logging.getLogger("pystematic.torch")

#: The ways a run ends, as :func:`outcome` reports them.
SUCCESS, FAILURE, PREEMPTED, INTERRUPTED = "success", "failure", "preempted", "interrupted"

_lock = threading.RLock()
_params: Optional[dict] = None
_outcome: Optional[str] = None
_exit_code: Optional[int] = None
_ending = False
_exit_callbacks: List[Callable[[], None]] = []
_durables: "weakref.WeakSet[Any]" = weakref.WeakSet()
_contexts: "weakref.WeakSet[Any]" = weakref.WeakSet()


class TeardownError(RuntimeError):
    """One or more exit callbacks failed; every callback still ran."""


def current_params() -> Optional[dict]:
    """The running experiment's parameters, or None outside an experiment."""
    return _params


def is_ending() -> bool:
    """Whether :func:`end` has begun for the current experiment (read by other threads)."""
    return _ending


def exit_code() -> Optional[int]:
    """The exit code the ending run's process will have, when the plugin knows it."""
    return _exit_code


def outcome() -> Optional[str]:
    """How the run is ending (SUCCESS, FAILURE, PREEMPTED, INTERRUPTED); None while it runs."""
    return _outcome


def start(params: dict) -> None:
    global _params, _outcome, _ending, _exit_code
    with _lock:
        _params = params
        _outcome = _exit_code = None
        _ending = False
        _exit_callbacks.clear()


def call_at_exit(callback: Callable[[], None]) -> None:
    """Run ``callback`` when the current experiment ends, also when it raised.

    Outside an experiment the callback is not kept: there is no end to wait for.
    """
    with _lock:
        if _params is not None:
            _exit_callbacks.append(callback)


def register_durable(obj: Any) -> None:
    """Have :func:`make_durable` call ``obj.flush()``; held weakly, inside or outside a run."""
    _durables.add(obj)


def unregister_durable(obj: Any) -> None:
    _durables.discard(obj)


def register_context(context: Any) -> None:
    """Remember a live Context (weakly), so a loader can find the one it is registered on."""
    _contexts.add(context)


def contexts() -> List[Any]:
    """The live Contexts of this process."""
    return list(_contexts)


def make_durable() -> None:
    """Flush every registered durable (recorders, HDF5 writers), so their data is on disk.

    Raises:
        Exception: the first flush that failed, after every durable has been flushed.
    """
    errors = []
    for obj in list(_durables):
        try:
            obj.flush()
        except Exception as error:  # noqa: BLE001 - every durable gets its flush first
            errors.append(error)
    if errors:
        raise errors[0]


def end(how: str = SUCCESS, code: Optional[int] = None) -> None:
    """Run the exit callbacks, newest first, and forget the experiment.

    Safe to call from several threads and several times: each callback runs exactly once,
    and a later call finds nothing left to do. A failing callback does not keep the others
    from running; once all have run, the failures are raised together.

    Args:
        how: The run's outcome, readable through :func:`outcome` while the callbacks run.
        code: The process's exit code to come, readable through :func:`exit_code`.

    Raises:
        TeardownError: one or more callbacks raised; the message lists each.
        KeyboardInterrupt: Ctrl-C during a callback, raised once every callback has run;
            the outcome the later callbacks read is then INTERRUPTED.
    """
    global _params, _outcome, _ending, _exit_code
    failures = []
    interrupted: Optional[KeyboardInterrupt] = None
    _ending = True
    with _lock:
        if _outcome is None:
            _outcome, _exit_code = how, code
        while True:
            try:
                callback = _exit_callbacks.pop()
            except IndexError:
                break
            try:
                callback()
            except KeyboardInterrupt as interrupt:
                # Ctrl-C during the clean-up: the other clean-ups still run (files closed,
                # run.json written, as interrupted), then the interrupt goes on.
                interrupted = interrupted or interrupt
                if _outcome in (SUCCESS, PREEMPTED):
                    _outcome, _exit_code = INTERRUPTED, 130
            except Exception as error:  # noqa: BLE001 - collected and raised below
                logger.debug("Cleanup at experiment end failed in %r.", callback, exc_info=True)
                failures.append((callback, error))
        _params = None
    if interrupted is not None:
        for callback, error in failures:
            logger.error("Cleanup at experiment end failed in %s: %s: %s", _describe(callback),
                         type(error).__name__, error)  # fmt: skip
        raise interrupted
    if failures:
        lines = [f"{_describe(callback)}: {type(error).__name__}: {error}"
                 for callback, error in failures]  # fmt: skip
        raise TeardownError(
            "Ending the experiment failed; every other clean-up still ran:\n  - "
            + "\n  - ".join(lines)
        ) from failures[0][1]


def reset_outcome() -> None:
    """Forget the last run's outcome; the next :func:`start` does this too."""
    global _outcome
    _outcome = None


def _describe(callback: Callable[[], None]) -> str:
    owner = getattr(callback, "__self__", None)
    if owner is not None:
        return f"{type(owner).__name__}.{getattr(callback, '__name__', 'callback')}()"
    return getattr(callback, "__qualname__", repr(callback))
