"""A quick-start style training loop against the same loop written by hand, in one process.

    python benchmarks/loop.py                  # 21 alternating rounds of runs, on the CPU
    python benchmarks/loop.py --pairs 3        # a quick look
    python benchmarks/loop.py --device cuda    # steps/s on a GPU, recording a CUDA loss

Ours: a :class:`Context` holding a tiny MLP, its optimizer, a :class:`SmartDataLoader` over
a ``TensorDataset`` (batch 64, shuffled, progress bar on) and a :class:`Recorder`
(TensorBoard and CSV) that records the loss tensor once per step; the run ends with the
recorder's ``close()``, so every value is on disk when the clock stops.

Plain: the same model and optimizer over batches sliced from the tensors in advance, with
``loss.item()`` once per step, the least a hand-written loop does to look at its loss.

Plain shuffled: plain, but each epoch's batches gathered by hand (``index_select``) in a
new random order, as any shuffling loader must: the fair baseline for ours, which shuffles.

No recorder: ours without the Recorder, which tells the loader's and Context's share of
the difference from the recorder's. On the CPU it reads the loss with ``loss.item()`` per
step, as plain does. On a GPU it keeps ``loss.detach()`` instead, which waits for nothing,
so ours against no recorder is the cost of recording a CUDA loss every step, which should
be none: the Recorder never waits for the GPU on the training thread.

Both run with one torch thread. Runs alternate (ours, plain, ours, ...) so that load from
other work on the machine hits both alike; the figure is the median of the ratios of each
pair. Target: at most 1.05. Besides wall time, the CPU time of the whole process (every
thread, the recorder's writer included) is compared the same way: on a machine shared with
other work it varies far less than wall time. The ratio of the fastest runs of each kind
(the least disturbed ones) is printed too.

Differences between whole runs stay noisy on a shared machine, so the recorder's own cost is
also measured directly, in each run of ours: the CPU time of its calls on the training
thread (creating it, ``scalar()``, ``step()``, ``close()``) plus the CPU time of its writer
thread, as a share of the run's CPU time.
"""
import argparse
import os
import platform
import statistics
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


def timed(run, *args):
    """(wall seconds, CPU seconds of the process, what ``run`` returned) of ``run(*args)``."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = run(*args)
    return time.perf_counter() - wall, time.process_time() - cpu, result


def run_ours(images, labels, epochs: int, output_dir: str, record: bool = True) -> float:
    """Train; return the CPU seconds the recorder cost (its calls and its writer thread)."""
    device = images.device
    ctx = Context()
    ctx.epoch = 0
    spent = time.thread_time()
    ctx.recorder = Recorder(output_dir) if record else None
    spent = time.thread_time() - spent
    losses = []
    ctx.model = make_model()
    ctx.optimizer = torch.optim.SGD(ctx.model.parameters(), lr=0.05, momentum=0.9)
    ctx.loader = SmartDataLoader(TensorDataset(images.cpu(), labels.cpu()), batch_size=64,
                                 shuffle=True)  # fmt: skip
    ctx.to(device)
    loss_fn = nn.CrossEntropyLoss()
    while ctx.epoch < epochs:
        for x, y in ctx.loader:
            loss = loss_fn(ctx.model(x), y)
            ctx.optimizer.zero_grad()
            loss.backward()
            ctx.optimizer.step()
            if record:
                start = time.thread_time()
                ctx.recorder.scalar("train/loss", loss)
                ctx.recorder.step()
                spent += time.thread_time() - start
            else:
                losses.append(loss.item() if loss.is_cpu else loss.detach())
        ctx.epoch += 1
    if record:
        writer = ctx.recorder._writer._thread  # the writer's CPU clock, read before it ends
        spent += time.clock_gettime(time.pthread_getcpuclockid(writer.ident))
        start = time.thread_time()
        ctx.recorder.close()
        spent += time.thread_time() - start
    return spent


def run_plain(images, labels, epochs: int, shuffle: bool = False) -> None:
    model = make_model().to(images.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    batches = [(images[i : i + 64], labels[i : i + 64]) for i in range(0, len(labels), 64)]
    loss_fn = nn.CrossEntropyLoss()
    losses = []
    for _epoch in range(epochs):
        if shuffle:
            order = torch.randperm(len(labels), device=images.device)
            batches = ((images.index_select(0, order[i : i + 64]),
                        labels.index_select(0, order[i : i + 64]))
                       for i in range(0, len(labels), 64))  # fmt: skip
        for x, y in batches:
            loss = loss_fn(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=21)
    parser.add_argument("--samples", type=int, default=8192)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(1)
    gpu = f", {torch.cuda.get_device_name()}" if args.device.startswith("cuda") else ""
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}, torch {torch.__version__}, 1 torch thread{gpu}")
    images, labels = (tensor.to(args.device) for tensor in make_data(args.samples))
    steps = args.epochs * -(-args.samples // 64)
    runs = {"ours": [], "no recorder": [], "plain": [], "plain shuffled": []}
    with tempfile.TemporaryDirectory() as root:
        run_ours(images, labels, 1, f"{root}/warm-up")  # imports, TensorBoard protos
        run_ours(images, labels, 1, None, False)
        run_plain(images, labels, 1)
        for pair in range(args.pairs):
            runs["ours"].append(timed(run_ours, images, labels, args.epochs, f"{root}/{pair}"))
            runs["no recorder"].append(timed(run_ours, images, labels, args.epochs, None, False))
            runs["plain"].append(timed(run_plain, images, labels, args.epochs))
            runs["plain shuffled"].append(timed(run_plain, images, labels, args.epochs, True))
    print(f"{steps} steps per run, {args.pairs} alternating rounds, load average "
          f"{os.getloadavg()[0]:.1f}")
    for index, clock in ((0, "wall"), (1, "CPU")):
        medians = {name: statistics.median(run[index] for run in found)
                   for name, found in runs.items()}  # fmt: skip
        if clock == "CPU":
            shares = [run[2] / run[1] for run in runs["ours"]]
            print(f"the recorder's own CPU time in ours: median "
                  f"{statistics.median(run[2] for run in runs['ours']) * 1000:.1f} ms per run, "
                  f"{statistics.median(shares):.1%} of the run's CPU time (min {min(shares):.1%},"
                  f" max {max(shares):.1%})")  # fmt: skip
        print(f"{clock} time, median: " + ", ".join(
            f"{name} {seconds:.3f} s ({steps / seconds:,.0f} steps/s)"
            for name, seconds in medians.items()
        ))  # fmt: skip
        for over, under in (("ours", "plain"), ("ours", "plain shuffled"),
                            ("no recorder", "plain shuffled"), ("ours", "no recorder")):
            ratios = [o[index] / u[index] for o, u in zip(runs[over], runs[under])]
            fastest = min(r[index] for r in runs[over]) / min(r[index] for r in runs[under])
            print(f"  {clock} ratio {over} / {under}: median {statistics.median(ratios):.3f} "
                  f"(min {min(ratios):.3f}, max {max(ratios):.3f}), fastest runs "
                  f"{fastest:.3f}" + ("; target <= 1.05" if under == "plain" and
                                      over == "ours" else ""))  # fmt: skip

if __name__ == "__main__":
    main()
