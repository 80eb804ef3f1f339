"""How fast ``Recorder.scalar()`` returns on the training thread, against a plain SummaryWriter.

Run: ``python benchmarks/recorder.py``. It measures, in one process:

1. ``Recorder.scalar()`` with the TensorBoard and CSV backends on, with a queue large
   enough for every call, so the loop never waits and the writer thread works (and
   competes for the GIL) during the whole loop; how many values the writer wrote during
   the loop is printed beside the rate;
2. the time ``flush()`` then takes to get everything onto disk;
3. the same with the default queue (100,000 values), which the loop overfills, so calls
   wait for the writer: this rate is the writer's sustained throughput;
4. a hand-written ``torch.utils.tensorboard.SummaryWriter.add_scalar`` loop.

Each call records one of four tags; ``step()`` is called after every fourth call and its
cost is included in the rate.
"""
import argparse
import os
import platform
import tempfile
import time

import torch

from pystematic_torch.recording import Recorder

TAGS = ("train/loss", "train/accuracy", "train/lr", "train/grad_norm")


def time_recorder(output_dir: str, calls: int, max_pending: int):
    recorder = Recorder(output_dir, tensorboard=True, file=True, max_pending=max_pending)
    recorder.scalar("warm-up", 0.0)
    recorder.flush()
    scalar, step = recorder.scalar, recorder.step
    value = 0.25
    written_before = recorder._writer.items_done
    start = time.perf_counter()
    for _ in range(calls // 4):
        scalar("train/loss", value)
        scalar("train/accuracy", value)
        scalar("train/lr", value)
        scalar("train/grad_norm", value)
        step()
        value += 0.001
    loop = time.perf_counter() - start
    written = recorder._writer.items_done - written_before
    start = time.perf_counter()
    recorder.flush()
    flush = time.perf_counter() - start
    recorder.close()
    return calls / loop, flush, written


def time_summary_writer(output_dir: str, calls: int):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(output_dir)
    writer.add_scalar("warm-up", 0.0, 0)
    value = 0.25
    start = time.perf_counter()
    for step in range(calls // 4):
        for tag in TAGS:
            writer.add_scalar(tag, value, step)
        value += 0.001
    loop = time.perf_counter() - start
    start = time.perf_counter()
    writer.flush()
    flush = time.perf_counter() - start
    writer.close()
    return calls / loop, flush


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=400_000)
    parser.add_argument("--baseline-calls", type=int, default=20_000)
    args = parser.parse_args()

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as root:
        burst, burst_flush, written = time_recorder(f"{root}/a", args.calls, 2 * args.calls)
        sustained, sustained_flush, _ = time_recorder(f"{root}/b", args.calls, 100_000)
        plain, plain_flush = time_summary_writer(f"{root}/plain", args.baseline_calls)

    print(f"Recorder.scalar(), TensorBoard + CSV, {args.calls:,} calls, queue never full: "
          f"{burst:,.0f} calls/s (the writer wrote {written:,} values meanwhile); "
          f"flush() afterwards: {burst_flush:.3f} s")
    print(f"Recorder.scalar(), TensorBoard + CSV, {args.calls:,} calls, default queue of "
          f"100,000 (calls wait for the writer): {sustained:,.0f} calls/s; flush() "
          f"afterwards: {sustained_flush:.3f} s")
    print(f"SummaryWriter.add_scalar loop, {args.baseline_calls:,} calls: {plain:,.0f} calls/s; "
          f"flush() afterwards: {plain_flush:.3f} s")
    print(f"ratio Recorder.scalar() (queue never full) / SummaryWriter.add_scalar: "
          f"{burst / plain:.0f}x")


if __name__ == "__main__":
    main()
