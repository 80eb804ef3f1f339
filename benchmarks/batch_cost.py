"""What the SmartDataLoader costs per batch over an in-memory TensorDataset, against the
same shuffled batches gathered by hand, with no model in the way.

    python benchmarks/batch_cost.py            # 15 alternating rounds of 10 epochs

Ours: a SmartDataLoader (batch 64, shuffled) registered on a Context, with and without its
progress bar. By hand: a new ``randperm`` per epoch and two ``index_select`` per batch,
the least a shuffling loop can do. Pre-sliced: batches cut in advance, the floor of a loop
that does not shuffle. 8,192 samples of 64 floats, one torch thread; the figure per batch
is the median over the rounds.
"""
import argparse
import statistics
import time

import torch
from torch.utils.data import TensorDataset

from pystematic_torch import Context, SmartDataLoader


def ours(images, labels, epochs: int, bar: bool) -> None:
    ctx = Context()
    ctx.loader = SmartDataLoader(TensorDataset(images, labels), batch_size=64, shuffle=True,
                                 loading_bar=bar)  # fmt: skip
    for _epoch in range(epochs):
        for _batch in ctx.loader:
            pass


def by_hand(images, labels, epochs: int) -> None:
    for _epoch in range(epochs):
        order = torch.randperm(len(labels))
        for start in range(0, len(labels), 64):
            index = order[start : start + 64]
            _batch = images.index_select(0, index), labels.index_select(0, index)


def pre_sliced(images, labels, epochs: int) -> None:
    batches = [(images[i : i + 64], labels[i : i + 64]) for i in range(0, len(labels), 64)]
    for _epoch in range(epochs):
        for _batch in batches:
            pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(8192, 64, generator=generator)
    labels = torch.randint(0, 10, (8192,), generator=generator)
    batches = args.epochs * 8192 // 64
    kinds = {
        "SmartDataLoader, bar on": lambda: ours(images, labels, args.epochs, True),
        "SmartDataLoader, bar off": lambda: ours(images, labels, args.epochs, False),
        "by hand, shuffled": lambda: by_hand(images, labels, args.epochs),
        "pre-sliced": lambda: pre_sliced(images, labels, args.epochs),
    }
    times = {name: [] for name in kinds}
    for _round in range(args.rounds):
        for name, run in kinds.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    per_batch = {name: statistics.median(found) / batches * 1e6 for name, found in times.items()}
    print(f"{batches} batches per run, median of {args.rounds} rounds:")
    for name, micros in per_batch.items():
        print(f"  {name:26s} {micros:6.1f} us per batch")
    ratio = per_batch["SmartDataLoader, bar on"] / per_batch["by hand, shuffled"]
    print(f"  ratio SmartDataLoader (bar on) / by hand, shuffled: {ratio:.2f}")


if __name__ == "__main__":
    main()
