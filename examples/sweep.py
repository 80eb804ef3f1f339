"""A parameter sweep on the CPU: two learning rates times two batch sizes, two runs at a time.

    python examples/sweep.py                            # runs the grid into ./output
    pystematic-torch runs output --metric train/loss    # what each run did
    pystematic-torch plot output/sweep-regression --tag train/loss -o losses.png

The same grid without the ``__main__`` block below, from the command line:

    pystematic-torch sweep examples/sweep.py --grid lr=0.1,0.01 --grid batch_size=32,128 -j 2

Each run is a separate process with its own run directory (parameters, log, checkpoints,
``scalars.csv``, TensorBoard files and ``run.json``); on a machine with GPUs each run gets
one of its own.
"""
import argparse
import logging

import pystematic
import torch
from torch import nn

logger = logging.getLogger("sweep-example")


def noisy_line(samples: int = 1024, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(samples, 8, generator=generator)
    targets = inputs @ torch.arange(1.0, 9.0).unsqueeze(1)
    targets += 0.1 * torch.randn(samples, 1, generator=generator)
    return torch.utils.data.TensorDataset(inputs, targets)


@pystematic.parameter(name="lr", type=float, default=0.05, help="SGD learning rate.")
@pystematic.parameter(name="batch_size", type=int, default=64, help="Samples per batch.")
@pystematic.parameter(name="epochs", type=int, default=3, help="Epochs to train for.")
@pystematic.experiment
def sweep_regression(params):
    torch.manual_seed(params["random_seed"])
    ctx = pystematic.torch.Context()
    ctx.epoch = 0
    ctx.recorder = pystematic.torch.Recorder()
    ctx.model = nn.Linear(8, 1)
    ctx.optimizer = torch.optim.SGD(ctx.model.parameters(), lr=params["lr"])
    ctx.loader = pystematic.torch.SmartDataLoader(
        noisy_line(), batch_size=params["batch_size"], shuffle=True, loading_bar=False
    )
    ctx.autotransform()
    while ctx.epoch < params["epochs"]:
        for x, y in ctx.loader:
            loss = nn.functional.mse_loss(ctx.model(x), y)
            ctx.optimizer.zero_grad()
            loss.backward()
            ctx.optimizer.step()
            ctx.recorder.scalar("train/loss", loss)
            ctx.recorder.step()
        ctx.epoch += 1
        logger.info(f"epoch {ctx.epoch}: loss {loss.item():.4f}")
        pystematic.torch.save_checkpoint(ctx.state_dict(), id=ctx.epoch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default="./output", help="Where the runs go.")
    parser.add_argument("-j", "--max-processes", type=int, default=2, help="Runs at once.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    grid = pystematic.param_matrix(
        lr=[0.1, 0.01], batch_size=[32, 128], output_dir=args.output_dir, random_seed=1
    )
    results = pystematic.torch.run_parameter_sweep(
        sweep_regression, grid, max_num_processes=args.max_processes
    )
    for result in results:
        print(f"lr={result.params['lr']:<5} batch_size={result.params['batch_size']:<4} "
              f"{result.status} in {result.duration_s:.1f} s: {result.run_dir}")  # fmt: skip


if __name__ == "__main__":
    main()
