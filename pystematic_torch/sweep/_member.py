"""One sweep member's process: ``python -m pystematic_torch.sweep._member REPORT_FD``.

The sweep writes what to run to our stdin (a length-prefixed pickle) and keeps the pipe open
while it lives; when it goes away, even killed without warning, the pipe closes and this run
interrupts itself, so no member outlives its sweep. We report the run directory and, on
failure, the error line on the file descriptor named in ``argv``.
"""
import json
import multiprocessing.spawn
import os
import pickle
import signal
import struct
import sys
import threading
import traceback
from typing import Any, Dict

LENGTH = struct.Struct(">Q")
INTERRUPTED_EXIT_CODE = 130
_MAX_ERROR_CHARS = 2000  # one pipe write, far below the pipe's buffer: never blocks


def encode(payload: Dict[str, Any]) -> bytes:
    data = pickle.dumps(payload)
    return LENGTH.pack(len(data)) + data


def main() -> int:
    report_fd = int(sys.argv[1])
    # The raw descriptor, not sys.stdin: a daemon thread blocked in a buffered read holds its
    # lock and makes the interpreter's shutdown abort.
    stdin = sys.stdin.fileno()
    (length,) = LENGTH.unpack(_read_exactly(stdin, LENGTH.size))
    payload = pickle.loads(_read_exactly(stdin, length))
    threading.Thread(target=_interrupt_when_sweep_ends, args=(stdin,), daemon=True).start()
    sys.path[:] = payload["sys_path"]
    experiment = _find_experiment(payload)
    params = pickle.loads(payload["params"])  # after the import: values may be its classes

    import pystematic.core

    def report_run_dir(_experiment, _params) -> None:
        import pystematic

        _report(report_fd, {"run_dir": str(pystematic.output_dir)})

    # After the standard plugin (priority 10) has created the run directory.
    pystematic.core.app.on_before_experiment(report_run_dir, priority=15)
    try:
        experiment.run(params)
    except KeyboardInterrupt:
        _report(report_fd, {"error": "interrupted"})
        return INTERRUPTED_EXIT_CODE
    except SystemExit:
        raise
    except BaseException as error:  # noqa: BLE001 - reported to the sweep, then exit 1
        traceback.print_exc()
        message = f"{type(error).__name__}: {error}".splitlines()[0]
        _report(report_fd, {"error": message[:_MAX_ERROR_CHARS]})
        return 1
    return 0


def _find_experiment(payload: Dict[str, Any]) -> Any:
    if payload["module"] is not None:
        import importlib

        module = importlib.import_module(payload["module"])
    else:
        # As multiprocessing does for a spawned child: the file becomes __main__ without
        # running its `if __name__ == "__main__"` block, and processes this run starts (the
        # ranks of a distributed run) find the experiment there again.
        multiprocessing.spawn.import_main_path(payload["path"])
        module = sys.modules["__main__"]
    return getattr(module, payload["name"])


def _interrupt_when_sweep_ends(fd: int) -> None:
    while os.read(fd, 65536):
        pass
    os.kill(os.getpid(), signal.SIGINT)


def _read_exactly(fd: int, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = os.read(fd, size - len(data))
        if not chunk:
            raise SystemExit("pystematic_torch.sweep._member is started by run_parameter_sweep.")
        data += chunk
    return data


def _report(fd: int, message: Dict[str, str]) -> None:
    try:
        os.write(fd, (json.dumps(message) + "\n").encode())
    except OSError:
        pass  # the sweep has gone; nobody is left to tell


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # before the experiment started, or after it ended
        sys.exit(INTERRUPTED_EXIT_CODE)
