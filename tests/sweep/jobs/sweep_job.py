"""An experiment for the sweep, run-record and command-line tests; --mode picks its behaviour.

ok: record "train/loss" = value * step and "val/score" = value for --steps steps. raise,
exit (os._exit(3)), kill (SIGKILL itself), exit143 (sys.exit(143)), keyboard (raise
KeyboardInterrupt), preempt (end the session as preempted), hang (print READY, wait),
ignore_sigint (hang, ignoring SIGINT, with a
child process that ignores it too), sigterm (hang until SIGTERM, then exit 143).
With --report DIR each process writes DIR/<value>-<rank>.json: its pid, environment and
parameters. Runs the same under --distributed.
"""
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pystematic


@pystematic.parameter(name="mode", type=str, default="ok")
@pystematic.parameter(name="value", type=float, default=1.0)
@pystematic.parameter(name="steps", type=int, default=5)
@pystematic.parameter(name="report", type=str, default="")
@pystematic.parameter(name="tensorboard_only", type=bool, is_flag=True, default=False)
@pystematic.experiment
def sweep_job(params):
    import pystematic_torch

    rank = pystematic_torch.get_rank()
    if params["report"]:
        report = pathlib.Path(params["report"]) / f"{params['value']:g}-{rank}.json"
        report.write_text(json.dumps({
            "pid": os.getpid(), "rank": rank, "world": pystematic_torch.get_num_processes(),
            "environ": dict(os.environ), "output_dir": str(pystematic.output_dir),
        }))  # fmt: skip
    mode = params["mode"]
    if mode == "ok":
        recorder = pystematic_torch.Recorder(file=not params["tensorboard_only"])
        for step in range(params["steps"]):
            recorder.scalar("train/loss", params["value"] * step)
            recorder.scalar("val/score", params["value"])
            recorder.step()
    elif mode == "raise":
        raise ValueError(f"deliberate failure with value {params['value']:g}")
    elif mode == "exit":
        os._exit(3)
    elif mode == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif mode == "exit143":
        sys.exit(143)
    elif mode == "keyboard":
        raise KeyboardInterrupt
    elif mode == "preempt":
        from pystematic_torch import _session

        _session.end(_session.PREEMPTED)
    elif mode in ("hang", "ignore_sigint", "sigterm"):
        _hang(mode, rank, params)


def _hang(mode, rank, params):
    terms = []
    if mode == "ignore_sigint":
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        # A process of its own that also ignores SIGINT, outside its process group: only
        # killing the whole process tree ends it.
        subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal("
                          "signal.SIGINT, signal.SIG_IGN); time.sleep(120)"],
                         start_new_session=True)  # fmt: skip
    if mode == "sigterm":
        signal.signal(signal.SIGTERM, lambda signum, frame: terms.append(signum))
    print(f"READY value={params['value']:g} rank={rank} pid={os.getpid()}", flush=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not terms:
        time.sleep(0.05)
    if terms:
        (pathlib.Path(str(pystematic.output_dir)) / "sigterms").write_text(str(len(terms)))
        sys.exit(143)
    raise TimeoutError("nobody stopped this run within 120 s")


if __name__ == "__main__":
    sweep_job.cli()
