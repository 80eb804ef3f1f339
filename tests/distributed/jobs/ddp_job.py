"""A small distributed job for the launch tests; prints what the tests check.

--mode train: a few steps, then a parameter checksum. --mode hang: train forever (with a
DataLoader worker), for the kill and interrupt tests. --fail_rank K raises on rank K (only
in torchrun's first attempt with --fail-once). --fail-at-end K: rank K, its training done,
waits until the other rank is in the job's closing barrier, then raises (--end-failure
raise) or prints HANGING and waits to be killed (--end-failure hang).
--ctrl-c-in-final-flush: Ctrl-C reaches rank 0 while it flushes before the closing barrier.
--fail-close-on K: a clean-up of rank K at the end of the run fails.
--stopped-in-del K: rank K is inside an object's __del__ when the job's failure reaches it
(which Python reports and drops there), then idles; the other rank raises once it is there.
--stuck-at-exit K: rank K leaves a thread that never ends (not a daemon), so its process
does not exit after its run; it prints STUCK_AT_EXIT when its run has ended.
DDP_JOB_DIE_AT_IMPORT=1 makes every rank the launch starts die while importing this script.
DDP_JOB_EXIT_SECONDS and DDP_JOB_NOTICE_SECONDS shorten how long the launching process
waits for a started rank to exit, and when it says that it waits.
"""
import os
import signal
import threading
import time

import pystematic
import torch

from pystematic_torch import _session

if os.environ.get("DDP_JOB_DIE_AT_IMPORT") and __name__ == "__mp_main__":
    raise SystemExit(3)
if os.environ.get("DDP_JOB_EXIT_SECONDS"):
    from pystematic_torch.distributed import _closing

    _closing.EXIT_SECONDS = float(os.environ["DDP_JOB_EXIT_SECONDS"])
    _closing.NOTICE_SECONDS = float(os.environ.get("DDP_JOB_NOTICE_SECONDS", "5"))


@pystematic.parameter(name="mode", type=str, default="train")
@pystematic.parameter(name="fail_rank", type=int, default=-1)
@pystematic.parameter(name="steps", type=int, default=5)
@pystematic.parameter(name="fail_once", type=bool, is_flag=True, default=False)
@pystematic.parameter(name="stop_queued_first", type=bool, is_flag=True, default=False)
@pystematic.parameter(name="fail_at_end", type=int, default=-1)
@pystematic.parameter(name="end_failure", type=str, default="raise")
@pystematic.parameter(name="ctrl_c_in_final_flush", type=bool, is_flag=True, default=False)
@pystematic.parameter(name="fail_close_on", type=int, default=-1)
@pystematic.parameter(name="stuck_at_exit", type=int, default=-1)
@pystematic.parameter(name="stopped_in_del", type=int, default=-1)
@pystematic.experiment
def ddp_job(params):
    if params["stop_queued_first"] and pystematic.torch.get_rank() == 1:
        queue_the_stop_before_teardown()
    if params["fail_at_end"] not in (-1, pystematic.torch.get_rank()) or (
        params["ctrl_c_in_final_flush"] and pystematic.torch.get_rank() != 0
    ):
        say_when_in_the_closing_barrier()
    if params["stopped_in_del"] != -1:
        stop_the_rank_inside_a_del(params["stopped_in_del"])
    torch.manual_seed(0)
    ctx = pystematic.torch.Context()
    ctx.model = torch.nn.Linear(4, 2)
    ctx.optimizer = torch.optim.SGD(ctx.model.parameters(), lr=0.1)
    if params["fail_at_end"] != -1 or params["ctrl_c_in_final_flush"]:
        # How the run ended, as rank 0's recorder writes it.
        backends = [CtrlCInFinalFlush()] if params["ctrl_c_in_final_flush"] else []
        ctx.recorder = pystematic.torch.Recorder(file=False, backends=backends, flush_secs=3600)
        ctx.recorder.params(params)
    if params["fail_close_on"] == pystematic.torch.get_rank():
        _session.call_at_exit(a_clean_up_that_fails)
    ctx.autotransform()
    rank, world = pystematic.torch.get_rank(), pystematic.torch.get_num_processes()
    batches = iter(torch.utils.data.DataLoader(range(10**6), batch_size=8, num_workers=1))
    print(f"READY rank={rank} world={world} pid={os.getpid()}", flush=True)
    step = 0
    while params["mode"] == "hang" or step < params["steps"]:
        generator = torch.Generator().manual_seed(1000 * rank + step)
        loss = ctx.model(torch.randn(8, 4, generator=generator)).pow(2).mean()
        ctx.optimizer.zero_grad()
        loss.backward()
        ctx.optimizer.step()
        first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
        if step == 2 and rank == params["fail_rank"] and (first_attempt or not params["fail_once"]):
            raise ValueError(f"deliberate failure on rank {rank}")
        next(batches)
        time.sleep(0.02)
        step += 1
    checksum = sum(p.detach().double().sum().item() for p in ctx.model.parameters())
    print(f"DONE rank={rank} world={world} checksum={checksum:.10f}", flush=True)
    CtrlCInFinalFlush.loop_done = params["ctrl_c_in_final_flush"]
    if rank == params["fail_at_end"]:
        fail_once_the_peer_is_in_the_closing_barrier(params["end_failure"])
    if rank == params["stuck_at_exit"]:
        _session.call_at_exit(lambda: print(f"STUCK_AT_EXIT pid={os.getpid()}", flush=True))
        threading.Thread(target=time.sleep, args=(3600,), daemon=False).start()


class CtrlCInFinalFlush(pystematic.torch.RecorderBackend):
    """A disk so slow that Ctrl-C comes while the run's last flush still writes: once the
    other rank waits in the closing barrier, the flush before it sends SIGINT to this
    process and holds until the main thread has begun ending the run with it."""

    name = "ctrl-c-in-final-flush"
    loop_done = False

    def flush(self):
        if not CtrlCInFinalFlush.loop_done:
            return
        CtrlCInFinalFlush.loop_done = False  # once
        print(f"FINAL_FLUSH pid={os.getpid()}", flush=True)
        deadline = time.monotonic() + 60
        while not _marker("in-closing-barrier").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGINT)
        while _session.outcome() is None and time.monotonic() < deadline:
            time.sleep(0.01)


class SlowToFree:
    def __del__(self):
        _marker("in-del").touch()
        time.sleep(60)  # the job's failure reaches this rank here


def stop_the_rank_inside_a_del(rank):
    if pystematic.torch.get_rank() == rank:
        print(f"READY rank={rank} pid={os.getpid()}", flush=True)
        SlowToFree()  # freed at once: this rank waits in its __del__
        print(f"LEFT_DEL rank={rank}", flush=True)
        while True:
            time.sleep(0.05)
    deadline = time.monotonic() + 60
    while not _marker("in-del").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    raise ValueError(f"deliberate failure on rank {pystematic.torch.get_rank()}")


def _marker(name):
    """A file in the run directory, which both ranks see: how one tells the other it is there."""
    return pystematic.output_dir / name


def a_clean_up_that_fails():
    raise OSError(28, "No space left on device (a clean-up at the end of the run)")


def say_when_in_the_closing_barrier():
    """Leave a file for the other rank when this one enters the job's closing barrier."""
    import torch.distributed as dist

    barrier = dist.barrier

    def marked_barrier(*args, **kwargs):
        _marker("in-closing-barrier").touch()
        return barrier(*args, **kwargs)

    dist.barrier = marked_barrier


def fail_once_the_peer_is_in_the_closing_barrier(how):
    deadline = time.monotonic() + 60
    while not _marker("in-closing-barrier").exists():
        if time.monotonic() > deadline:
            raise TimeoutError("the other rank never reached the closing barrier")
        time.sleep(0.05)
    if how == "hang":
        print(f"HANGING rank={pystematic.torch.get_rank()} pid={os.getpid()}", flush=True)
        time.sleep(600)
    raise ValueError(f"deliberate failure at the end on rank {pystematic.torch.get_rank()}")


def queue_the_stop_before_teardown():
    """Make rank 1's monitor stop the main thread just as that thread starts its teardown.

    The order the race between them can take: the monitor checks that the main thread is
    not ending yet, the main thread starts its teardown, then the monitor's stop lands.
    """
    import sys
    import threading

    from pystematic_torch.distributed import _supervise

    in_teardown, queued = threading.Event(), threading.Event()
    raise_in_main_thread, main_thread_ending = (
        _supervise._raise_in_main_thread, _supervise.Supervisor.main_thread_ending
    )  # fmt: skip

    def raise_once_in_teardown(main, reason):  # on the monitor thread
        if in_teardown.wait(timeout=60):
            raise_in_main_thread(main, reason)
            sys.stdout.write("STOP QUEUED DURING TEARDOWN\n")
            sys.stdout.flush()
        queued.set()

    def ending_once_queued(supervisor):  # on the main thread, as its teardown begins
        in_teardown.set()
        queued.wait(timeout=60)
        main_thread_ending(supervisor)

    _supervise._raise_in_main_thread = raise_once_in_teardown
    _supervise.Supervisor.main_thread_ending = ending_once_queued


if __name__ == "__main__":
    ddp_job.cli()
