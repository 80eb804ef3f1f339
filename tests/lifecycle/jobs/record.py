"""A training run that records a lot, for the failure-path tests.

Every step records one ``train/step`` scalar (its value is the step) plus ``--backlog``
filler scalars, so the recorder's queue holds a backlog when the run ends, and appends one
row to a per-rank HDF5Writer. After a step's values are handed over it prints
``STEP rank=R step=S``; the tests compare what is on disk afterwards with those lines.

--pause-at S: rank 0 waits after step S until a stop signal has arrived (so a test can
signal it there, whatever the machine's speed). --event raise: rank --fail-rank raises at
step --at. --event teardown: a recorder backend
fails when it is closed. --checkpoint-every N saves the Context every N steps and prints
``SAVED step=S``. --dataset samples: a map-style dataset, whose samples the DataLoader
workers fetch (a TensorDataset is gathered in the training process).
"""
import os
import time

import pystematic
import torch
from torch import nn

import pystematic_torch as pt


class BrokenDisk(pt.RecorderBackend):
    name = "broken-disk"

    def close(self):
        raise OSError(28, "No space left on device")


def wait_for_a_stop_signal(seconds=60):
    from pystematic_torch.distributed import _preemption

    deadline = time.monotonic() + seconds
    while not _preemption.requested_here() and time.monotonic() < deadline:
        time.sleep(0.01)


class Samples(torch.utils.data.Dataset):
    """A map-style dataset: unlike a TensorDataset, which the loader gathers itself, its
    samples are fetched by the DataLoader's worker processes."""

    def __init__(self, tensors):
        self.tensors = tensors

    def __len__(self):
        return len(self.tensors)

    def __getitem__(self, index):
        return self.tensors[index]


@pystematic.parameter(name="dataset", type=str, default="tensors")
@pystematic.parameter(name="event", type=str, default="none")
@pystematic.parameter(name="fail_rank", type=int, default=0)
@pystematic.parameter(name="at", type=int, default=5)
@pystematic.parameter(name="steps", type=int, default=10**6)
@pystematic.parameter(name="backlog", type=int, default=200)
@pystematic.parameter(name="checkpoint_every", type=int, default=0)
@pystematic.parameter(name="pause_at", type=int, default=-1)
@pystematic.experiment
def record_job(params):
    torch.manual_seed(0)
    rank = pt.get_rank() if pt.is_distributed() else 0
    ctx = pt.Context()
    ctx.step = 0
    backends = [BrokenDisk()] if params["event"] == "teardown" else []
    ctx.recorder = pt.Recorder(hdf5=True, backends=backends, flush_secs=3600)
    ctx.model = nn.Linear(4, 1)
    ctx.optimizer = torch.optim.SGD(ctx.model.parameters(), lr=0.01)
    data = torch.utils.data.TensorDataset(torch.randn(64, 4), torch.randn(64, 1))
    if params["dataset"] == "samples":
        data = Samples(data)  # fetched sample by sample, in the worker process
    ctx.loader = pt.SmartDataLoader(data, batch_size=4, shuffle=True, loading_bar=False,
                                    num_workers=1, persistent_workers=True)  # fmt: skip
    ctx.autotransform()
    rows = pt.HDF5Writer(os.path.join(str(pystematic.output_dir), "rows.h5"), mode="a")
    print(f"READY rank={rank} pid={os.getpid()} step={ctx.step}", flush=True)
    while ctx.step < params["steps"]:
        for x, y in ctx.loader:
            loss = nn.functional.mse_loss(ctx.model(x), y)
            ctx.optimizer.zero_grad()
            loss.backward()
            ctx.optimizer.step()
            step = ctx.step
            if params["event"] == "raise" and rank == params["fail_rank"] and step == params["at"]:
                raise ValueError(f"deliberate failure on rank {rank} at step {step}")
            ctx.recorder.scalar("train/step", step)
            for index in range(params["backlog"]):
                ctx.recorder.scalar(f"filler/{index % 10}", float(index))
            ctx.recorder.step()
            rows.append(step=[step], rank=[rank])
            print(f"STEP rank={rank} step={step}", flush=True)
            if step == params["pause_at"] and rank == 0:
                wait_for_a_stop_signal()
            ctx.step += 1
            every = params["checkpoint_every"]
            if every and ctx.step % every == 0:
                pt.save_checkpoint(ctx.state_dict(), id=ctx.step)
                print(f"SAVED step={step}", flush=True)
            if ctx.step >= params["steps"]:
                break
    print(f"DONE rank={rank}", flush=True)


if __name__ == "__main__":
    record_job.cli()
