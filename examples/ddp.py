"""Distributed data-parallel training that survives preemption and resumes exactly.

    python examples/ddp.py --distributed --nproc_per_node 2           # 2 local ranks
    torchrun --nproc-per-node 2 examples/ddp.py --distributed          # the same, via torchrun
    srun -n 2 python examples/ddp.py --distributed                     # a SLURM job step
    python examples/ddp.py --distributed --nnodes 2 --node_rank 0 \\
        --master_addr HOST0 --master_port 29500                        # on machine 0 ...
    python examples/ddp.py --distributed --nnodes 2 --node_rank 1 \\
        --master_addr HOST0 --master_port 29500                        # ... and machine 1

The loop holds no preemption code. When the scheduler sends SIGTERM (SLURM does, some time
before it kills a job), every rank stops after the same batch, the Context's whole state is
saved as ``checkpoint-preempted.pt`` and the run exits with code 143. The same command with
``--checkpoint <run directory>`` (or ``--checkpoint latest``) continues from there.
"""
import logging
import time

import pystematic
import torch
from torch import nn

logger = logging.getLogger("ddp-example")


def synthetic_regression(samples: int = 4096, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(samples, 16, generator=generator)
    true_weights = torch.randn(16, 1, generator=generator)
    targets = inputs @ true_weights + 0.01 * torch.randn(samples, 1, generator=generator)
    return torch.utils.data.TensorDataset(inputs, targets)


@pystematic.parameter(name="epochs", type=int, default=20, help="Epochs to train for.")
@pystematic.parameter(name="step_delay", type=float, default=0.0,
                      help="Seconds to sleep per step, to watch preemption by hand.")  # fmt: skip
@pystematic.experiment
def ddp_example(params):
    ctx = pystematic.torch.Context()
    ctx.epoch = 0
    ctx.model = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 1))
    ctx.optimizer = torch.optim.Adam(ctx.model.parameters(), lr=0.01)
    ctx.loader = pystematic.torch.SmartDataLoader(
        synthetic_regression(), batch_size=128, shuffle=True, loading_bar=False
    )
    ctx.autotransform()  # --checkpoint -> load, --cuda -> move, --distributed -> DDP

    while ctx.epoch < params["epochs"]:
        for x, y in ctx.loader:  # stops here, on every rank alike, when preempted
            loss = nn.functional.mse_loss(ctx.model(x), y)
            ctx.optimizer.zero_grad()
            loss.backward()
            ctx.optimizer.step()
            time.sleep(params["step_delay"])
        ctx.epoch += 1
        mean_loss = pystematic.torch.all_reduce(loss.item())
        if pystematic.torch.is_master():
            logger.info(
                f"epoch {ctx.epoch}: loss {mean_loss:.5f} "
                f"({pystematic.torch.get_num_processes()} ranks)"
            )
    pystematic.torch.save_checkpoint(ctx.state_dict(), id=ctx.epoch)


if __name__ == "__main__":
    ddp_example.cli()
