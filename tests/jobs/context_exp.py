"""An experiment for the Context's end-to-end tests; prints what they check.

--mode train: register the items, ctx.autotransform(), train, save a checkpoint.
--mode no-autotransform: the same without ctx.autotransform().
--mode late-scheduler: the scheduler is registered after ctx.autotransform().

SEEDED is what the run draws first (Python, NumPy, torch, a dropout mask), before
anything is created; RANKED the same after ctx.autotransform().
"""
import random

import numpy as np
import pystematic
import torch
from torch import nn


def draws() -> str:
    mask = nn.functional.dropout(torch.ones(12), 0.5).int().tolist()
    values = (random.random(), np.random.random_sample(), torch.rand(1).item())
    return " ".join(f"{value:.12f}" for value in values) + " mask=" + "".join(map(str, mask))


@pystematic.parameter(name="mode", type=str, default="train")
@pystematic.parameter(name="steps", type=int, default=3)
@pystematic.experiment
def context_exp(params):
    rank = pystematic.torch.get_rank()
    print(f"SEEDED rank={rank} {draws()}", flush=True)
    ctx = pystematic.torch.Context()
    ctx.model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 1))
    ctx.optimizer = torch.optim.SGD(ctx.model.parameters(), lr=0.1)
    if params["mode"] != "late-scheduler":
        ctx.scheduler = torch.optim.lr_scheduler.StepLR(ctx.optimizer, step_size=1, gamma=0.5)
    if params["mode"] != "no-autotransform":
        ctx.autotransform()
    if params["mode"] == "late-scheduler":
        ctx.scheduler = torch.optim.lr_scheduler.StepLR(ctx.optimizer, step_size=1, gamma=0.5)
    print(f"RANKED rank={rank} {draws()}", flush=True)
    generator = torch.Generator().manual_seed(rank)
    for _ in range(params["steps"]):
        loss = ctx.model(torch.randn(8, 4, generator=generator)).pow(2).mean()
        ctx.optimizer.zero_grad()
        loss.backward()
        ctx.optimizer.step()
        ctx.scheduler.step()
    checksum = sum(p.detach().double().sum().item() for p in ctx.model.parameters())
    lr = ctx.scheduler.get_last_lr()[0]
    print(f"DONE rank={rank} lr={lr:.7f} checksum={checksum:.10f}", flush=True)
    pystematic.torch.save_checkpoint(ctx.state_dict(), id="end")


if __name__ == "__main__":
    context_exp.cli()
