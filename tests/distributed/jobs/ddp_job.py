"""A small distributed job for the launch tests; prints what the tests check.

--mode train: a few steps, then a parameter checksum. --mode hang: train forever (with a
DataLoader worker), for the kill and interrupt tests. --fail_rank K raises on rank K (only
in torchrun's first attempt with --fail-once). DDP_JOB_DIE_AT_IMPORT=1 makes every rank the
launch starts die while importing this script.
"""
import os
import time

import pystematic
import torch

if os.environ.get("DDP_JOB_DIE_AT_IMPORT") and __name__ == "__mp_main__":
    raise SystemExit(3)


@pystematic.parameter(name="mode", type=str, default="train")
@pystematic.parameter(name="fail_rank", type=int, default=-1)
@pystematic.parameter(name="steps", type=int, default=5)
@pystematic.parameter(name="fail_once", type=bool, is_flag=True, default=False)
@pystematic.parameter(name="stop_queued_first", type=bool, is_flag=True, default=False)
@pystematic.experiment
def ddp_job(params):
    if params["stop_queued_first"] and pystematic.torch.get_rank() == 1:
        queue_the_stop_before_teardown()
    torch.manual_seed(0)
    ctx = pystematic.torch.Context()
    ctx.model = torch.nn.Linear(4, 2)
    ctx.optimizer = torch.optim.SGD(ctx.model.parameters(), lr=0.1)
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
