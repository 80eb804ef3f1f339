"""How fast the Recorder takes and writes scalars, against a plain SummaryWriter loop.

Run: ``python benchmarks/recorder.py``. It measures, in one process, with the TensorBoard
and CSV backends on:

1. end to end: ``Recorder.scalar()`` called ``--calls`` times with the default queue
   (100,000 values; calls wait when the writer falls behind), then ``flush()``, which
   returns once every value is written and synced to disk. Values per second over the
   whole time, calls plus flush. Target: at least 500,000 values/s;
2. the same with a queue large enough for every call, so the loop never waits;
3. the hand-over rate: how fast ``Recorder.scalar()`` returns on the training thread, from
   the loop of 2 alone (the writer works meanwhile and competes for the GIL);
4. a hand-written ``torch.utils.tensorboard.SummaryWriter.add_scalar`` loop, end to end
   (calls plus ``flush()``), with ``--baseline-calls`` calls (it is slow).

Each call records one of four tags; ``step()`` is called after every fourth call and its
cost is included. Each measurement is repeated ``--repeats`` times and the median is
printed, since other work on the machine makes single runs noisy.
"""
import argparse
import os
import platform
import statistics
import tempfile
import time

import torch

from pystematic_torch.recording import Recorder


def time_recorder(output_dir: str, calls: int, max_pending: int):
    """(loop seconds, final flush seconds, CPU seconds of both) for ``calls`` scalar() calls.

    The CPU time is the whole process's (the writer thread's included); on a machine shared
    with other work it shows what the wall time would be on an idle one.
    """
    recorder = Recorder(output_dir, tensorboard=True, file=True, max_pending=max_pending)
    recorder.scalar("warm-up", 0.0)
    recorder.flush()
    scalar, step = recorder.scalar, recorder.step
    value = 0.25
    cpu = time.process_time()
    start = time.perf_counter()
    for _ in range(calls // 4):
        scalar("train/loss", value)
        scalar("train/accuracy", value)
        scalar("train/lr", value)
        scalar("train/grad_norm", value)
        step()
        value += 0.001
    loop = time.perf_counter() - start
    start = time.perf_counter()
    recorder.flush()
    flush = time.perf_counter() - start
    cpu = time.process_time() - cpu
    recorder.close()
    return loop, flush, cpu


def time_summary_writer(output_dir: str, calls: int):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(output_dir)
    writer.add_scalar("warm-up", 0.0, 0)
    writer.flush()
    value = 0.25
    start = time.perf_counter()
    for step in range(calls // 4):
        writer.add_scalar("train/loss", value, step)
        writer.add_scalar("train/accuracy", value, step)
        writer.add_scalar("train/lr", value, step)
        writer.add_scalar("train/grad_norm", value, step)
        value += 0.001
    loop = time.perf_counter() - start
    start = time.perf_counter()
    writer.flush()
    flush = time.perf_counter() - start
    writer.close()
    return loop, flush, None


def median_of(repeats: int, measure, directory: str, *args):
    """Medians over ``repeats`` runs: loop, flush, loop + flush, CPU seconds."""
    runs = [measure(f"{directory}-{index}", *args) for index in range(repeats)]
    loops, flushes, cpus = zip(*runs)
    totals = [loop + flush for loop, flush, _ in runs]
    cpu = statistics.median(cpus) if cpus[0] is not None else None
    return statistics.median(loops), statistics.median(flushes), statistics.median(totals), cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=400_000)
    parser.add_argument("--baseline-calls", type=int, default=40_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}, torch {torch.__version__}, load average "
          f"{os.getloadavg()[0]:.1f}")  # fmt: skip
    calls = args.calls
    with tempfile.TemporaryDirectory() as root:
        _, default_flush, default_total, default_cpu = median_of(
            args.repeats, time_recorder, f"{root}/default", calls, 100_000
        )
        big_loop, big_flush, big_total, _ = median_of(
            args.repeats, time_recorder, f"{root}/big", calls, 2 * calls
        )
        _, plain_flush, plain_total, _ = median_of(
            args.repeats, time_summary_writer, f"{root}/plain", args.baseline_calls
        )
    ours = calls / default_total
    plain = args.baseline_calls / plain_total
    print(f"end to end, default queue: {calls:,} calls + flush() in {default_total:.3f} s = "
          f"{ours:,.0f} values/s (flush {default_flush:.3f} s); target >= 500,000")
    print(f"  the same per CPU second of the process: {calls / default_cpu:,.0f} values/s "
          f"({default_cpu:.3f} s of CPU)")
    print(f"end to end, queue never full: {calls:,} calls + flush() in {big_total:.3f} s = "
          f"{calls / big_total:,.0f} values/s (flush {big_flush:.3f} s)")
    print(f"hand-over: Recorder.scalar() returns at {calls / big_loop:,.0f} calls/s while the "
          "queue has room")
    print(f"SummaryWriter.add_scalar, end to end: {args.baseline_calls:,} calls + flush() in "
          f"{plain_total:.3f} s = {plain:,.0f} values/s")
    print(f"ratio Recorder / SummaryWriter, end to end: {ours / plain:.1f}x")


if __name__ == "__main__":
    main()
