"""A small training run that uses every source of randomness exact resume must reproduce.

Dropout in the model; a random augmentation in the dataset drawing from torch, NumPy and
Python's ``random`` (in DataLoader workers with ``--workers 2`` or ``persistent``); AdamW;
a Recorder writing ``scalars.csv``, with one value recorded at each epoch's end, at the
step of the checkpoint that follows it. It saves the Context every ``--checkpoint-every``
steps (``checkpoint-step<S>.pt``) and after every epoch (``checkpoint-epoch<E>.pt``), and
prints ``READY step=S`` when it starts training.

``--pause-at S --pause-fifo PATH``: after step S, rank 0 prints ``PAUSED step=S`` and waits
until a line is written to the FIFO at PATH, so that a test can deliver a signal at a known
step without sleeping.
"""
import random

import numpy
import pystematic
import torch
from torch import nn

import pystematic_torch as pt


class Augmented(torch.utils.data.Dataset):
    """Fixed samples, randomly augmented every time they are read."""

    def __init__(self, size):
        generator = torch.Generator().manual_seed(1234)
        self.inputs = torch.randn(size, 8, generator=generator)
        self.labels = (self.inputs.sum(dim=1) > 0).long()

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        x = self.inputs[index] + 0.1 * torch.randn(8)
        if random.random() < 0.5:
            x = x.flip(0)
        x = x * float(numpy.random.uniform(0.9, 1.1))
        return x, self.labels[index]


def loader_options(workers):
    if workers == "persistent":
        return {"num_workers": 2, "persistent_workers": True}
    return {"num_workers": int(workers)}


@pystematic.parameter(name="epochs", type=int, default=3)
@pystematic.parameter(name="samples", type=int, default=96)
@pystematic.parameter(name="workers", type=str, default="0")
@pystematic.parameter(name="checkpoint_every", type=int, default=4)
@pystematic.parameter(name="pause_at", type=int, default=-1)
@pystematic.parameter(name="pause_fifo", type=str, default="")
@pystematic.experiment
def resume_job(params):
    torch.set_num_threads(1)
    ctx = pt.Context()
    ctx.epoch = 0
    ctx.step = 0
    ctx.epoch_loss = torch.zeros(())  # summed over the epoch's steps so far
    ctx.recorder = pt.Recorder(tensorboard=False)
    ctx.model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 2))
    ctx.optimizer = torch.optim.AdamW(ctx.model.parameters(), lr=0.01)
    ctx.loader = pt.SmartDataLoader(Augmented(params["samples"]), batch_size=4, shuffle=True,
                                    loading_bar=False, **loader_options(params["workers"]))
    ctx.autotransform()
    master = pt.is_master()
    if master:
        print(f"READY step={ctx.step} epoch={ctx.epoch}", flush=True)
    while ctx.epoch < params["epochs"]:
        for x, y in ctx.loader:
            loss = nn.functional.cross_entropy(ctx.model(x), y)
            ctx.optimizer.zero_grad()
            loss.backward()
            ctx.optimizer.step()
            ctx.epoch_loss.add_(loss.detach())
            ctx.recorder.scalar("train/loss", loss)
            ctx.recorder.step()
            ctx.step += 1
            if ctx.step % params["checkpoint_every"] == 0:
                pt.save_checkpoint(ctx.state_dict(), id=f"step{ctx.step}")
            if master and ctx.step == params["pause_at"]:
                print(f"PAUSED step={ctx.step}", flush=True)
                with open(params["pause_fifo"]) as fifo:
                    fifo.read()
        # At the step of the checkpoint below, before it is saved: a resumed run keeps it.
        ctx.recorder.scalar("epoch/loss", ctx.epoch_loss / len(ctx.loader))
        ctx.epoch_loss.zero_()
        ctx.epoch += 1
        pt.save_checkpoint(ctx.state_dict(), id=f"epoch{ctx.epoch}")
    if master:
        print(f"DONE step={ctx.step}", flush=True)


if __name__ == "__main__":
    resume_job.cli()
