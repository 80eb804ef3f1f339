"""Train a small classifier on scikit-learn's bundled handwritten digits.

The quick start from the README: a plain training loop, with pystematic-torch taking care
of devices, checkpoints, resuming and logging.

    python examples/quickstart.py                         # CPU, or the GPU if there is one
    python examples/quickstart.py --epochs 20 --lr 0.1
    python examples/quickstart.py --checkpoint output/train-digits/<run>   # resume

Each run writes to ``output/train-digits/<date>_<id>/``: its parameters, a log, a
checkpoint per epoch, TensorBoard event files and ``scalars.csv``.
"""
import logging

import pystematic
import torch
from sklearn.datasets import load_digits
from torch import nn

logger = logging.getLogger("digits")


def digits_datasets(seed: int = 0):
    """The 1,797 8x8 digit images as a (train, validation) pair of TensorDatasets."""
    digits = load_digits()
    images = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    labels = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    train, val = order[:1500], order[1500:]
    dataset = torch.utils.data.TensorDataset
    return dataset(images[train], labels[train]), dataset(images[val], labels[val])


@pystematic.parameter(name="epochs", type=int, default=10, help="Epochs to train for.")
@pystematic.parameter(name="batch_size", type=int, default=64, help="Samples per batch.")
@pystematic.parameter(name="lr", type=float, default=0.05, help="SGD learning rate.")
@pystematic.experiment
def train_digits(params):
    train_set, val_set = digits_datasets()

    ctx = pystematic.torch.Context()
    ctx.epoch = 0
    ctx.recorder = pystematic.torch.Recorder()
    ctx.model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    ctx.optimizer = torch.optim.SGD(ctx.model.parameters(), lr=params["lr"], momentum=0.9)
    ctx.loader = pystematic.torch.SmartDataLoader(
        train_set, batch_size=params["batch_size"], shuffle=True
    )
    ctx.val_loader = pystematic.torch.SmartDataLoader(
        val_set, batch_size=256, even_shards=False, loading_bar=False
    )
    ctx.autotransform()  # --checkpoint -> load, --cuda -> move, --distributed -> DDP

    loss_fn = nn.CrossEntropyLoss()
    while ctx.epoch < params["epochs"]:
        ctx.model.train()
        total_loss, batches = torch.zeros((), device=ctx.device), 0
        for x, y in ctx.loader:  # batches arrive on the context's device
            loss = loss_fn(ctx.model(x), y)
            ctx.optimizer.zero_grad()
            loss.backward()
            ctx.optimizer.step()
            ctx.recorder.scalar("train/loss", loss)
            ctx.recorder.step()
            total_loss += loss.detach()
            batches += 1

        ctx.model.eval()
        correct, seen = 0, 0
        with torch.no_grad():
            for x, y in ctx.val_loader:
                correct += (ctx.model(x).argmax(dim=1) == y).sum().item()
                seen += len(y)
        train_loss = pystematic.torch.all_reduce(total_loss.item() / batches, weight=batches)
        accuracy = pystematic.torch.all_reduce(correct, "sum") / pystematic.torch.all_reduce(
            seen, "sum"
        )
        ctx.recorder.scalar("val/accuracy", accuracy)
        ctx.epoch += 1
        if pystematic.torch.is_master():
            logger.info(
                f"epoch {ctx.epoch}/{params['epochs']}: train loss {train_loss:.4f}, "
                f"validation accuracy {accuracy:.3f}"
            )
        pystematic.torch.save_checkpoint(ctx.state_dict(), id=ctx.epoch)


if __name__ == "__main__":
    train_digits.cli()
