"""A quick-start style training loop against the same loop written by hand, in one process.

    python benchmarks/loop.py                  # 15 alternating pairs of runs
    python benchmarks/loop.py --pairs 3        # a quick look

Ours: a :class:`Context` holding a tiny MLP, its optimizer, a :class:`SmartDataLoader` over
a ``TensorDataset`` (batch 64, shuffled, progress bar on) and a :class:`Recorder`
(TensorBoard and CSV) that records the loss tensor once per step; the run ends with the
recorder's ``close()``, so every value is on disk when the clock stops.

Plain: the same model and optimizer over batches sliced from the tensors in advance, with
``loss.item()`` once per step, the least a hand-written loop does to look at its loss.

Both run with one torch thread. Runs alternate (ours, plain, ours, ...) so that load from
other work on the machine hits both alike; the figure is the median of the ratios of each
pair. Target: at most 1.05.
"""
import argparse
import os
import platform
import statistics
import sys
import tempfile
import time

import torch
from torch import nn
from torch.utils.data import TensorDataset

from pystematic_torch import Context, Recorder, SmartDataLoader


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


def make_data(samples: int):
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(samples, 64, generator=generator)
    labels = torch.randint(0, 10, (samples,), generator=generator)
    return images, labels


def run_ours(images, labels, epochs: int, output_dir: str) -> float:
    start = time.perf_counter()
    ctx = Context()
    ctx.epoch = 0
    ctx.recorder = Recorder(output_dir)
    ctx.model = make_model()
    ctx.optimizer = torch.optim.SGD(ctx.model.parameters(), lr=0.05, momentum=0.9)
    ctx.loader = SmartDataLoader(TensorDataset(images, labels), batch_size=64, shuffle=True)
    loss_fn = nn.CrossEntropyLoss()
    while ctx.epoch < epochs:
        for x, y in ctx.loader:
            loss = loss_fn(ctx.model(x), y)
            ctx.optimizer.zero_grad()
            loss.backward()
            ctx.optimizer.step()
            ctx.recorder.scalar("train/loss", loss)
            ctx.recorder.step()
        ctx.epoch += 1
    ctx.recorder.close()
    return time.perf_counter() - start


def run_plain(images, labels, epochs: int) -> float:
    start = time.perf_counter()
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    batches = [(images[i : i + 64], labels[i : i + 64]) for i in range(0, len(labels), 64)]
    loss_fn = nn.CrossEntropyLoss()
    losses = []
    for _epoch in range(epochs):
        for x, y in batches:
            loss = loss_fn(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=15)
    parser.add_argument("--samples", type=int, default=8192)
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}, torch {torch.__version__}, 1 torch thread")
    images, labels = make_data(args.samples)
    steps = args.epochs * -(-args.samples // 64)
    ratios, ours_times, plain_times = [], [], []
    with tempfile.TemporaryDirectory() as root:
        run_ours(images, labels, 1, f"{root}/warm-up")  # imports, TensorBoard protos
        run_plain(images, labels, 1)
        for pair in range(args.pairs):
            ours = run_ours(images, labels, args.epochs, f"{root}/run{pair}")
            plain = run_plain(images, labels, args.epochs)
            ours_times.append(ours)
            plain_times.append(plain)
            ratios.append(ours / plain)
    print(f"{steps} steps per run, {args.pairs} alternating pairs", file=sys.stderr)
    for name, times in (("plain loop (pre-sliced tensors, loss.item())", plain_times),
                        ("ours (Context + SmartDataLoader + Recorder) ", ours_times)):
        median = statistics.median(times)
        print(f"{name}: median {median:.3f} s ({steps / median:,.0f} steps/s)")
    print(f"ratio ours / plain: median {statistics.median(ratios):.3f} "
          f"(min {min(ratios):.3f}, max {max(ratios):.3f}); target <= 1.05")


if __name__ == "__main__":
    main()
