"""How long saving a ~1 GiB CPU state takes, against a plain ``torch.save`` plus fsync.

Run: ``python benchmarks/checkpoint.py [--mib 1024] [--pairs 3] [--dir DIR]``. In one
process, on the same disk (``--dir``, by default a temporary folder under the current
directory, so not a tmpfs):

1. blocking saves: ``save_checkpoint(state, id="bench")`` (metadata, weights-only check,
   recordings flush, temporary file, fsync, rename, directory fsync) against a hand-written
   ``torch.save`` to an open file followed by ``flush`` and ``os.fsync``; the two
   alternate, ``--pairs`` times, and the median of the per-pair ratios is printed;
2. ``blocking=False``: how long the call blocks the loop, next to how long the snapshot's
   own copy into host memory takes (``_snapshot.snapshot``) and to a plain
   ``{name: tensor.clone()}`` of the same state, and the full time until
   ``wait_for_checkpoints()`` returns;
3. how fast a small CPU training loop steps while the background write runs, against the
   same loop with no write running.

The state is shaped like a model with its Adam moments: tensors of 1-16 MiB.
"""
import argparse
import os
import pathlib
import platform
import statistics
import tempfile
import threading
import time

import torch

import pystematic_torch as pt
from pystematic_torch.checkpoint import ContextState, _snapshot


def make_state(mib: int) -> ContextState:
    """Parameters plus two Adam moments each, about ``mib`` MiB in all."""
    generator = torch.Generator().manual_seed(0)
    sizes = [16, 8, 4, 2, 1]  # MiB per parameter, repeated until a third of the total
    params, total, index = {}, 0, 0
    while total + sizes[index % len(sizes)] * 3 <= mib:
        size = sizes[index % len(sizes)]
        params[f"layer{index}.weight"] = torch.randn(size * 2**18, generator=generator)
        total += size * 3
        index += 1
    moments = {name: {"exp_avg": torch.randn_like(p), "exp_avg_sq": torch.rand_like(p),
                      "step": torch.tensor(100.0)} for name, p in params.items()}  # fmt: skip
    return ContextState(epoch=3, model=params, optimizer={"state": moments, "lr": 1e-3})


def plain_save(state, path: pathlib.Path) -> float:
    start = time.perf_counter()
    with open(path, "wb") as file:
        torch.save(state, file)
        file.flush()
        os.fsync(file.fileno())
    return time.perf_counter() - start


def our_save(state, directory: pathlib.Path) -> float:
    start = time.perf_counter()
    pt.save_checkpoint(state, id="bench", directory=directory)
    return time.perf_counter() - start


def background_save(state, directory: pathlib.Path):
    start = time.perf_counter()
    pt.save_checkpoint(state, id="background", directory=directory, blocking=False)
    blocked = time.perf_counter() - start
    pt.wait_for_checkpoints()
    return blocked, time.perf_counter() - start


def copy_times(state):
    start = time.perf_counter()
    _snapshot.snapshot(state)
    ours = time.perf_counter() - start
    tensors = [t for layer in state["optimizer"]["state"].values() for t in layer.values()]
    tensors += list(state["model"].values())
    start = time.perf_counter()
    [t.clone() for t in tensors]
    return ours, time.perf_counter() - start


def training_rate(seconds: float, while_writing=None):
    """Steps/s of a small MLP's training loop, optionally while a background save runs."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.ReLU(),
                                torch.nn.Linear(256, 10))  # fmt: skip
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(64, 256), torch.randint(0, 10, (64,))
    done = threading.Event()
    if while_writing is not None:
        state, directory = while_writing
        pt.save_checkpoint(state, id="during", directory=directory, blocking=False)
        threading.Thread(target=lambda: (pt.wait_for_checkpoints(), done.set())).start()
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds and not (while_writing and done.is_set()):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        steps += 1
    rate = steps / (time.perf_counter() - start)
    if while_writing is not None:
        done.wait()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--dir", type=pathlib.Path, default=pathlib.Path.cwd())
    args = parser.parse_args()
    torch.set_num_threads(1)  # the loop's own thread; the writer gets the other core

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}, torch {torch.__version__}")
    state = make_state(args.mib)
    size = sum(t.numel() * t.element_size() for t in _tensors(state)) / 2**20
    print(f"state: {size:.0f} MiB in {sum(1 for _ in _tensors(state))} tensors")
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="checkpoint-bench-") as root:
        directory = pathlib.Path(root)
        ours, plain = [], []
        our_save(state, directory)  # the first save reads the directory: not what we time
        for _ in range(args.pairs):
            plain.append(plain_save(state, directory / "plain.pt"))
            ours.append(our_save(state, directory))
        ratios = [o / p for o, p in zip(ours, plain)]
        print(f"blocking save_checkpoint: {_seconds(ours)}")
        print(f"torch.save + fsync:       {_seconds(plain)}")
        print(f"ratio ours / plain (median of {args.pairs} pairs): "
              f"{statistics.median(ratios):.2f}x (each: "
              f"{', '.join(f'{r:.2f}' for r in ratios)})")

        snapshot_copy, clone = copy_times(state)
        blocked, full = background_save(state, directory)
        print(f"blocking=False: the call blocked {blocked:.2f} s; the snapshot's own copy "
              f"takes {snapshot_copy:.2f} s (a plain clone of every tensor {clone:.2f} s); "
              f"written and fsynced after {full:.2f} s")

        idle = training_rate(5.0)
        during = training_rate(60.0, while_writing=(state, directory))
        print(f"training loop: {idle:.0f} steps/s alone, {during:.0f} steps/s while the "
              f"background write runs ({during / idle:.0%})")


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


def _seconds(times) -> str:
    return f"median {statistics.median(times):.2f} s ({', '.join(f'{t:.2f}' for t in times)})"


if __name__ == "__main__":
    main()
