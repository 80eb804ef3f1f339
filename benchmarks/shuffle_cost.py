"""What shuffling costs a small model's loop, and where: the gather, or the data it makes.

    python benchmarks/shuffle_cost.py              # 60 rounds
    python benchmarks/shuffle_cost.py --rounds 200

``loop.py`` finds our loop 1.06-1.10x a hand-written one over batches sliced before the
clock starts, and the same as a hand-written loop that shuffles. This script splits that
difference. It trains loop.py's model (one torch thread) for one epoch at a time over:

- pre-sliced: batches sliced from the tensors in advance, the same ones every epoch;
- gathered before the clock: the epoch's shuffled batches, taken from a SmartDataLoader
  (progress off) before the epoch's clock starts, so only training on them is timed;
- loader: the same SmartDataLoader iterated inside the timed epoch, as a loop does;
- by hand: ``randperm`` and one ``index_select`` per tensor per batch inside the epoch;
- with ``--blocks 32,128``: for each number, blocks of that many batches gathered by hand
  (one ``index_select`` per tensor per block) inside the epoch, which tells the price of
  a gather in the middle of the loop from the price of the rows it copies.

The four take turns, an epoch each, in an order that rotates from round to round (this
machine's speed drifts within seconds). Printed: the median time per step of each, its
median ratio to pre-sliced over the rounds, and what gathering an epoch costs on its own,
timed in a tight loop with nothing else running, against what it costs inside the loop
(loader minus gathered before the clock).
"""

import argparse
import os
import statistics
import time
from typing import Callable, Dict, List

import torch
from loop import make_data, make_model
from torch import nn
from torch.utils.data import TensorDataset

from pystematic_torch import SmartDataLoader

BATCH = 64


def train_epoch(model: nn.Module, optimizer, batches) -> None:
    loss_fn = nn.CrossEntropyLoss()
    for x, y in batches:
        loss = loss_fn(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss.item()


def by_hand(images: torch.Tensor, labels: torch.Tensor):
    order = torch.randperm(len(labels))
    for start in range(0, len(labels), BATCH):
        rows = order[start : start + BATCH]
        yield images.index_select(0, rows), labels.index_select(0, rows)


def in_blocks(images: torch.Tensor, labels: torch.Tensor, batches: int):
    order = torch.randperm(len(labels))
    rows = batches * BATCH
    for start in range(0, len(labels), rows):
        block = order[start : start + rows]
        yield from zip(images.index_select(0, block).split(BATCH),
                       labels.index_select(0, block).split(BATCH))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--samples", type=int, default=8192)
    parser.add_argument("--blocks", default="", help="block sizes in batches, e.g. 32,128")
    args = parser.parse_args()
    torch.set_num_threads(1)
    images, labels = make_data(args.samples)
    loader = SmartDataLoader(TensorDataset(images, labels), batch_size=BATCH, shuffle=True,
                             loading_bar=False)  # fmt: skip
    pre_sliced = [(images[i : i + BATCH], labels[i : i + BATCH])
                  for i in range(0, len(labels), BATCH)]  # fmt: skip
    # Each kind: what to do before the clock starts, returning what to train on.
    kinds: Dict[str, Callable[[], object]] = {
        "pre-sliced": lambda: pre_sliced,
        "gathered before the clock": lambda: list(loader),
        "loader": lambda: loader,
        "by hand": lambda: by_hand(images, labels),
    }
    for size in filter(None, args.blocks.split(",")):
        kinds[f"blocks of {int(size)} by hand"] = (
            lambda size=int(size): in_blocks(images, labels, size)
        )
    names = list(kinds)
    trainers = {}
    for name in names:
        model = make_model()
        trainers[name] = (model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9))
    seconds: Dict[str, List[float]] = {name: [] for name in names}
    for name in names:  # warm-up
        train_epoch(*trainers[name], kinds[name]())
    for index in range(args.rounds):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            batches = kinds[name]()
            start = time.perf_counter()
            train_epoch(*trainers[name], batches)
            seconds[name].append(time.perf_counter() - start)
    steps = len(pre_sliced)
    alone = min(_time_alone(lambda: list(loader)) for _ in range(5)) / steps
    print(f"{args.rounds} rounds of one epoch ({steps} steps of batch {BATCH}), one torch "
          f"thread, load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    for name in names:
        ratios = [t / p for t, p in zip(seconds[name], seconds["pre-sliced"])]
        per_step = statistics.median(seconds[name]) / steps * 1e6
        print(
            f"  {name:26s} {per_step:7.1f} us/step, ratio to pre-sliced: median "
            f"{statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f})"
        )
    inside = [(loaded - gathered) / steps for loaded, gathered
              in zip(seconds["loader"], seconds["gathered before the clock"])]  # fmt: skip
    print(
        f"gathering an epoch with the loader: {alone * 1e6:.1f} us/batch on its own, "
        f"{statistics.median(inside) * 1e6:.1f} us/step inside the loop (median of the "
        "per-round difference loader - gathered before the clock)"
    )


def _time_alone(work: Callable[[], object]) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
