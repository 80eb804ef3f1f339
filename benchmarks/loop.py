"""A quick-start style training loop against the same loop written by hand, in one process.

    python benchmarks/loop.py                  # 21 rounds, on the CPU
    python benchmarks/loop.py --rounds 3       # a quick look
    python benchmarks/loop.py --device cuda    # steps/s on a GPU, recording a CUDA loss

Ours: a :class:`Context` holding a tiny MLP, its optimizer, a :class:`SmartDataLoader` over
a ``TensorDataset`` (batch 64, shuffled, progress bar on) and a :class:`Recorder`
(TensorBoard and CSV) that records the loss tensor once per step. Creating them is part of
the run, and so is the recorder's ``close()`` at its end, so every value is on disk when
the clock stops.

Plain: the same model and optimizer over batches sliced from the tensors in advance, with
``loss.item()`` once per step, the least a hand-written loop does to look at its loss.

Plain shuffled: plain, but each epoch's batches gathered by hand (``index_select``) in a
new random order, as any shuffling loop must: the fair baseline for ours, which shuffles.

No recorder: ours without the Recorder, which tells the loader's and Context's share of
the difference from the recorder's. On the CPU it reads the loss with ``loss.item()`` per
step, as plain does. On a GPU it keeps ``loss.detach()`` instead, which waits for nothing,
so ours against no recorder is the cost of recording a CUDA loss every step, which should
be none: the Recorder never waits for the GPU on the training thread.

How it is timed. All run with one torch thread. On a shared machine the speed of the CPU
drifts by tens of percent within seconds, which whole runs timed one after another turn
into noise of the same size. So in each round the four loops run side by side, taking
turns: the set-up of each, then one epoch of each, and so on, then the end of each (our
recorder's close), in an order that rotates from round to round. Every piece is timed, and
each loop's run time is the sum of its pieces. What the recorder's background writer does
while another loop has its turn (its CPU time, read from the thread's own clock) is taken
off that loop's time and added to ours. Two figures are printed for each pair of loops:
the median over the rounds of the ratio of run times (set-up and close included: the
target, at most 1.05, is about this one), and the median over every epoch of every round
of the ratio of the two loops' epochs (the cost per step once running).

The recorder's own cost is also measured directly in each run of ours: the CPU time of
creating it and of ``close()`` on the training thread, the time of ``scalar()`` with
``step()`` (wall time, which on the training thread is CPU time: they never wait), timed at
one step in 16 with ``perf_counter`` (0.04 us a read on the machine of benchmarks/README.md,
where the thread's CPU clock, a system call, takes 0.6 us), plus the CPU time of its writer
thread until ``close()``, as a share of ours's CPU time.
"""
import argparse
import os
import platform
import statistics
import tempfile
import time
from typing import Dict, Iterator, List, Optional

import torch
from torch import nn
from torch.utils.data import TensorDataset

from pystematic_torch import Context, Recorder, SmartDataLoader

KINDS = ("ours", "no recorder", "plain", "plain shuffled")
# The recorder's calls are timed at one step in this many, whose cost stands for the others'.
_SAMPLE_EVERY = 16


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


def make_data(samples: int):
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(samples, 64, generator=generator)
    labels = torch.randint(0, 10, (samples,), generator=generator)
    return images, labels


class Writer:
    """The CPU clock of the recorder's writer thread, while there is one."""

    def __init__(self) -> None:
        self.thread = None
        self.spent = 0.0  # CPU seconds of writers that have ended

    def cpu(self) -> float:
        if self.thread is None:
            return self.spent
        return self.spent + time.clock_gettime(time.pthread_getcpuclockid(self.thread.ident))

    def ended(self) -> None:
        self.spent = self.cpu()
        self.thread = None


def run_ours(images, labels, epochs: int, output_dir: Optional[str], writer: Writer,
             calls: List[float]) -> Iterator[None]:  # fmt: skip
    """Train, yielding after the set-up, after each epoch and at the end; ``calls`` gets the
    CPU seconds the recorder cost the training thread (None for ``output_dir``: no recorder)."""
    record = output_dir is not None
    ctx = Context()
    ctx.epoch = 0
    spent = time.thread_time()
    ctx.recorder = Recorder(output_dir) if record else None
    spent = time.thread_time() - spent
    if record:
        writer.thread = ctx.recorder._writer._thread
    losses = []
    ctx.model = make_model()
    ctx.optimizer = torch.optim.SGD(ctx.model.parameters(), lr=0.05, momentum=0.9)
    ctx.loader = SmartDataLoader(TensorDataset(images.cpu(), labels.cpu()), batch_size=64,
                                 shuffle=True)  # fmt: skip
    ctx.to(images.device)
    loss_fn = nn.CrossEntropyLoss()
    yield
    while ctx.epoch < epochs:
        for x, y in ctx.loader:
            loss = loss_fn(ctx.model(x), y)
            ctx.optimizer.zero_grad()
            loss.backward()
            ctx.optimizer.step()
            if record and ctx.recorder.count % _SAMPLE_EVERY:
                ctx.recorder.scalar("train/loss", loss)
                ctx.recorder.step()
            elif record:  # timed at a few steps: reading the clock costs a little too
                start = time.perf_counter()
                ctx.recorder.scalar("train/loss", loss)
                ctx.recorder.step()
                spent += (time.perf_counter() - start) * _SAMPLE_EVERY
            else:
                losses.append(loss.item() if loss.is_cpu else loss.detach())
        ctx.epoch += 1
        yield
    if record:
        writer.ended()  # its clock, read before the thread ends in close()
        start = time.thread_time()
        ctx.recorder.close()
        spent += time.thread_time() - start
        calls.append(spent)
    yield


def run_plain(images, labels, epochs: int, shuffle: bool) -> Iterator[None]:
    model = make_model().to(images.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    batches = [(images[i : i + 64], labels[i : i + 64]) for i in range(0, len(labels), 64)]
    loss_fn = nn.CrossEntropyLoss()
    losses = []
    yield
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
        yield
    yield


def one_round(images, labels, epochs: int, root: str, first: int, writer: Writer,
              calls: List[float]) -> Dict[str, List[tuple]]:  # fmt: skip
    """Run the four loops side by side; the (wall, CPU) seconds of each one's pieces."""
    loops = {
        "ours": run_ours(images, labels, epochs, root, writer, calls),
        "no recorder": run_ours(images, labels, epochs, None, writer, calls),
        "plain": run_plain(images, labels, epochs, False),
        "plain shuffled": run_plain(images, labels, epochs, True),
    }
    order = KINDS[first:] + KINDS[:first]
    pieces: Dict[str, List[tuple]] = {kind: [] for kind in KINDS}
    for _piece in range(epochs + 2):
        for kind in order:
            before_writer = writer.cpu()
            wall, cpu = time.perf_counter(), time.process_time()
            next(loops[kind], None)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            leaked = writer.cpu() - before_writer if kind != "ours" else 0.0
            pieces[kind].append((wall - leaked, cpu - leaked, leaked))
    leaked = sum(piece[2] for kind in KINDS for piece in pieces[kind])
    wall, cpu, _ = pieces["ours"][-1]
    pieces["ours"][-1] = (wall + leaked, cpu + leaked, 0.0)
    return pieces


def summary(name: str, ratios: List[float]) -> str:
    return (f"{name} median {statistics.median(ratios):.3f} "
            f"(min {min(ratios):.3f}, max {max(ratios):.3f})")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=21)
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
    rounds: List[Dict[str, List[tuple]]] = []
    calls: List[float] = []
    writers: List[float] = []
    with tempfile.TemporaryDirectory() as root:
        one_round(images, labels, 1, f"{root}/warm-up", 0, Writer(), [])  # imports, protos
        for index in range(args.rounds):
            writer = Writer()
            rounds.append(one_round(images, labels, args.epochs, f"{root}/{index}",
                                    index % len(KINDS), writer, calls))  # fmt: skip
            writers.append(writer.cpu())
    print(f"{steps} steps per run ({args.epochs} epochs), {args.rounds} rounds, load average "
          f"{os.getloadavg()[0]:.1f}")
    for index, clock in ((0, "wall"), (1, "CPU")):
        totals = {kind: [sum(piece[index] for piece in found[kind]) for found in rounds]
                  for kind in KINDS}  # fmt: skip
        print(f"{clock} time per run, median: " + ", ".join(
            f"{kind} {statistics.median(seconds):.3f} s "
            f"({steps / statistics.median(seconds):,.0f} steps/s)"
            for kind, seconds in totals.items()
        ))  # fmt: skip
        for over, under in (("ours", "plain"), ("ours", "plain shuffled"),
                            ("no recorder", "plain shuffled"), ("ours", "no recorder")):
            runs = [o / u for o, u in zip(totals[over], totals[under])]
            epochs = [o[index] / u[index] for found in rounds
                      for o, u in zip(found[over][1:-1], found[under][1:-1])]  # fmt: skip
            target = "; target <= 1.05" if (over, under) == ("ours", "plain") else ""
            print(f"  {clock} ratio {over} / {under}: {summary('runs', runs)}; "
                  f"{summary('epochs', epochs)}{target}")
        if clock == "CPU":
            shares = [(spent + written) / total
                      for spent, written, total in zip(calls, writers, totals["ours"])]
            print(f"the recorder's own CPU time in ours: median "
                  f"{statistics.median(c + w for c, w in zip(calls, writers)) * 1000:.1f} ms "
                  f"per run, {statistics.median(shares):.1%} of ours's CPU time "
                  f"(min {min(shares):.1%}, max {max(shares):.1%})")


if __name__ == "__main__":
    main()
