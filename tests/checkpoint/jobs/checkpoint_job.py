"""A job for the checkpoint kill tests; prints what the tests wait for and check.

--mode recorder: record scalars, save a checkpoint every 5 steps; after --steps steps print
    SAVED and wait to be killed.
--mode kill-in-fsync: save checkpoint 1, then save checkpoint 2 in the background and hold
    its write just before the fsync (printing IN_FSYNC) until the process is killed.
--mode kill-mid-write: save checkpoint 1, then a large checkpoint 2 in the background;
    print RETURNED and wait to be killed while it is written.
--mode end: save in the background with a slow disk, then end as --end says (normal, raise,
    or wait for SIGINT after printing SAVED); an exit callback prints whether the file was
    complete when the experiment's teardown reached it.
"""
import os
import threading
import time

import pystematic
import torch

import pystematic_torch as pt
from pystematic_torch import _session
from pystematic_torch.checkpoint import _atomic

_real_fsync = os.fsync


def fsync_held_in_background(release: threading.Event, delay: float = 0.0):
    """Make the background writer's fsync wait for ``release``: a disk that hangs or is slow."""

    def fsync(fd):
        if threading.current_thread() is not threading.main_thread():
            print("IN_FSYNC", flush=True)
            release.wait()
            time.sleep(delay)  # the slow disk itself, not a synchronisation
        _real_fsync(fd)

    _atomic.os.fsync = fsync


def wait_to_be_killed():
    print("WAITING", flush=True)
    threading.Event().wait()


@pystematic.parameter(name="mode", type=str, default="recorder")
@pystematic.parameter(name="end", type=str, default="normal")
@pystematic.parameter(name="steps", type=int, default=23)
@pystematic.parameter(name="megabytes", type=int, default=256)
@pystematic.experiment
def checkpoint_job(params):
    ctx = pt.Context()
    ctx.step = 0
    ctx.weights = torch.zeros(16)
    if params["mode"] == "recorder":
        # No periodic flush: only the checkpoint's flush can put rows on disk.
        ctx.recorder = pt.Recorder(tensorboard=False, file=True, flush_secs=3600)
        _session.register_durable(ctx.recorder)  # idempotent once recorders register themselves
        while ctx.step < params["steps"]:
            for index in range(50):
                ctx.recorder.scalar(f"value/{index}", float(ctx.step))
            ctx.recorder.step()
            ctx.step += 1
            if ctx.step % 5 == 0:
                pt.save_checkpoint(ctx.state_dict(), id=ctx.step)
                last_saved = ctx.step
        # Values recorded after the last checkpoint may be lost; those before may not.
        print(f"SAVED step={last_saved}", flush=True)
        wait_to_be_killed()
    elif params["mode"] == "kill-in-fsync":
        pt.save_checkpoint(ctx.state_dict(), id=1)
        fsync_held_in_background(threading.Event())  # never released
        ctx.step = 2
        pt.save_checkpoint(ctx.state_dict(), id=2, keep_last=1, blocking=False)
        wait_to_be_killed()
    elif params["mode"] == "kill-mid-write":
        pt.save_checkpoint(ctx.state_dict(), id=1)
        ctx.step = 2
        ctx.weights = torch.ones(params["megabytes"] * 2**20 // 4)
        pt.save_checkpoint(ctx.state_dict(), id=2, keep_last=1, blocking=False)
        print("RETURNED", flush=True)
        wait_to_be_killed()
    elif params["mode"] == "end":
        path = pystematic.output_dir / "checkpoint-1.pt"
        _session.call_at_exit(lambda: print(f"AT_TEARDOWN complete={path.exists()}", flush=True))
        body_done = threading.Event()
        fsync_held_in_background(body_done, delay=0.5)
        pt.save_checkpoint(ctx.state_dict(), id=1, blocking=False)
        try:
            if params["end"] == "raise":
                raise ValueError("the loop broke after a background save")
            if params["end"] == "sigint":
                print("SAVED", flush=True)
                wait_to_be_killed()
        finally:
            body_done.set()


if __name__ == "__main__":
    checkpoint_job.cli()
