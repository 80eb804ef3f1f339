"""How long saving a ~1 GiB CPU state takes, against a plain ``torch.save`` plus fsync.

Run: ``python benchmarks/checkpoint.py [--mib 1024] [--rounds 7] [--dir DIR]``. In one
process, on the same disk (a temporary folder under ``--dir``, by default the system's
temporary directory; the file system it is on is printed, so a tmpfs shows), medians of
``--rounds`` rounds:

1. blocking saves: ``save_checkpoint`` (weights-only check, metadata, recordings flush,
   temporary file, fsync, rename, directory fsync) against a hand-written ``torch.save`` to
   an open file followed by ``flush`` and ``os.fsync``, alternating, which goes first
   swapped every round. Twice: writing a new file each round (a checkpoint per epoch), and
   replacing one id against overwriting one path (not atomic: a kill mid-write loses the old
   file). Beside the ratio, the part of ``save_checkpoint``'s time spent outside
   ``torch.save`` and ``fsync``: our own work, which the disk's noise does not blur;
2. ``blocking=False``: how long the call blocks the loop, next to how long the snapshot's
   own copy into host memory takes (``_snapshot.snapshot``) and a plain ``clone()`` of
   every tensor, and the full time until ``wait_for_checkpoints()`` returns;
3. how fast a small CPU training loop (one thread) steps while a background write runs,
   against the same loop with no write running; with the writer thread at its lowered CPU
   priority (nice +10, the default) and, for comparison, at the loop's own;
4. loading: ``load_checkpoint`` of a file (which first checks every record's bytes against
   the checksum torch.save wrote) against ``torch.load(weights_only=True)``, alternating,
   the file in the page cache (read once before), so the checksums' cost is not hidden
   behind the disk. ``--only-load`` measures this part alone.

The state is shaped like a model with its Adam moments: tensors of 1-16 MiB.
"""
import argparse
import os
import pathlib
import platform
import stat
import tempfile
import threading
import time
from statistics import median

import torch

import pystematic_torch as pt
from pystematic_torch.checkpoint import ContextState, _background, _snapshot
from pystematic_torch.devices import iter_tensors


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


class WriteTimer:
    """Sums the time spent inside ``torch.save`` and a file's ``os.fsync`` while it is on.

    A directory's fsync (after the rename) is not counted: it is our own work.
    """

    def __init__(self):
        self.seconds, self.on = 0.0, False
        save, fsync = torch.save, os.fsync
        torch.save = self._timed(save, lambda *args: True)
        os.fsync = self._timed(fsync, lambda fd: not stat.S_ISDIR(os.fstat(fd).st_mode))

    def _timed(self, function, counts):
        def timed(*args):
            start = time.perf_counter()
            try:
                return function(*args)
            finally:
                if self.on and counts(*args):
                    self.seconds += time.perf_counter() - start

        return timed


def plain_save(state, path: pathlib.Path) -> float:
    start = time.perf_counter()
    with open(path, "wb") as file:
        torch.save(state, file)
        file.flush()
        os.fsync(file.fileno())
    return time.perf_counter() - start


def our_save(state, directory: pathlib.Path, checkpoint_id, timer: WriteTimer):
    """The call's time, and the part of it spent outside torch.save and fsync."""
    timer.seconds, timer.on = 0.0, True
    start = time.perf_counter()
    pt.save_checkpoint(state, id=checkpoint_id, directory=directory)
    total = time.perf_counter() - start
    timer.on = False
    return total, total - timer.seconds


def blocking_rounds(state, directory: pathlib.Path, rounds: int, replace: bool, timer):
    """Alternate ours and plain, swapping which goes first every round."""
    ours, plain, extra = [], [], []
    for index in range(rounds):
        ours_id = "bench" if replace else index
        plain_path = directory / ("plain.pt" if replace else f"plain-{index}.pt")
        for ours_now in ((True, False) if index % 2 else (False, True)):
            if ours_now:
                total, own_work = our_save(state, directory, ours_id, timer)
                ours.append(total)
                extra.append(own_work)
            else:
                plain.append(plain_save(state, plain_path))
        if not replace:  # each round writes new files, as a run saving every epoch does
            for old in [*directory.glob("plain-*.pt"), *directory.glob("checkpoint-*.pt")]:
                old.unlink()
    return ours, plain, extra


def background_rounds(state, directory: pathlib.Path, rounds: int):
    blocked, copy, clone, full = [], [], [], []
    tensors = list(iter_tensors(state))
    for _ in range(rounds):
        start = time.perf_counter()
        _snapshot.snapshot(state)
        copy.append(time.perf_counter() - start)
        start = time.perf_counter()
        [t.clone() for t in tensors]
        clone.append(time.perf_counter() - start)
        start = time.perf_counter()
        pt.save_checkpoint(state, id="background", directory=directory, blocking=False)
        blocked.append(time.perf_counter() - start)
        pt.wait_for_checkpoints()
        full.append(time.perf_counter() - start)
    return blocked, copy, clone, full


def loading_rounds(path: pathlib.Path, rounds: int):
    """Alternate load_checkpoint and torch.load of one file, which goes first swapped."""
    from pystematic_torch.checkpoint import _integrity

    ours, plain = [], []
    path.read_bytes()  # into the page cache
    for index in range(rounds):
        for ours_now in ((True, False) if index % 2 else (False, True)):
            _integrity._sound.clear()  # a new process has checked nothing yet
            start = time.perf_counter()
            if ours_now:
                pt.load_checkpoint(path)
            else:
                torch.load(path, map_location="cpu", weights_only=True)
            (ours if ours_now else plain).append(time.perf_counter() - start)
    return ours, plain


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
    while time.perf_counter() - start < seconds and not done.is_set():
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
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--dir", type=pathlib.Path, default=pathlib.Path(tempfile.gettempdir()))
    parser.add_argument("--only-load", action="store_true", help="measure loading alone")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the loop's own thread; the writer gets the other core

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}, torch {torch.__version__}")
    print(f"disk: {_file_system(args.dir)}")
    state = make_state(args.mib)
    size = sum(t.numel() * t.element_size() for t in iter_tensors(state)) / 2**20
    print(f"state: {size:.0f} MiB in {sum(1 for _ in iter_tensors(state))} tensors; medians of "
          f"{args.rounds} rounds")
    timer = WriteTimer()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="checkpoint-bench-") as root:
        directory = pathlib.Path(root)
        pt.save_checkpoint({}, id="warm-up", directory=directory)  # reads the directory once
        loaded = pt.save_checkpoint(state, id="load", directory=directory)
        ours, plain = loading_rounds(loaded, args.rounds)
        print(f"loading from the page cache: load_checkpoint {_median(ours)}, torch.load "
              f"{_median(plain)}, ratio of medians {median(ours) / median(plain):.2f}x")
        if args.only_load:
            return
        for replace in (False, True):
            ours, plain, extra = blocking_rounds(state, directory, args.rounds, replace, timer)
            what = ("replacing one id / overwriting one path" if replace
                    else "a new file per save")  # fmt: skip
            print(f"blocking, {what}: save_checkpoint {_median(ours)}, torch.save + fsync "
                  f"{_median(plain)}, ratio of medians {median(ours) / median(plain):.2f}x")
            print(f"  of which save_checkpoint's own work besides torch.save and fsync: "
                  f"{_median(extra)} ({median(extra) / median(ours):.1%})")

        blocked, copy, clone, full = background_rounds(state, directory, args.rounds)
        print(f"blocking=False: the call blocked {_median(blocked)}; the snapshot's own copy "
              f"{_median(copy)} (a plain clone of every tensor {_median(clone)}); written "
              f"and fsynced after {_median(full)}")

        for niceness in (_background._NICENESS, 0):
            _background._NICENESS = niceness
            idle, during = [], []
            for _ in range(3):  # interleaved, so a change in the machine's load hits both
                idle.append(training_rate(3.0))
                during.append(training_rate(60.0, while_writing=(state, directory)))
            print(f"training loop, writer at nice +{niceness}: {median(idle):.0f} steps/s "
                  f"alone, {median(during):.0f} steps/s while a background write runs "
                  f"({median(during) / median(idle):.0%}; alone: "
                  f"{', '.join(f'{r:.0f}' for r in idle)}; during: "
                  f"{', '.join(f'{r:.0f}' for r in during)})")


def _file_system(path: pathlib.Path) -> str:
    """The mount holding ``path``, as /proc/mounts names it (device, mount point, type)."""
    path = path.resolve()
    try:
        mounts = [line.split()[:3] for line in open("/proc/mounts")]
    except OSError:
        return str(path)
    device, point, kind = max((m for m in mounts if path.is_relative_to(m[1])),
                              key=lambda m: len(m[1]))  # fmt: skip
    return f"{path} on {device} ({kind}, mounted at {point})"


def _median(times) -> str:
    return f"{median(times):.2f} s ({', '.join(f'{t:.2f}' for t in times)})"


if __name__ == "__main__":
    main()
