"""SmartDataLoader against a plain DataLoader, measured in the same run.

    python benchmarks/dataloader.py                 # CPU overhead; GPU throughput if CUDA
    python benchmarks/dataloader.py --throughput-device cpu --samples 2048   # smoke test

CPU part: the time of one epoch over the same per-sample dataset with a plain DataLoader and
with SmartDataLoader (progress bar on), run in back-to-back pairs, ``--rounds`` pairs; the
overhead is the median of the pairs' time ratios. Target: at most 3 %.

Seeding part: the cost of seeding each fetch from (seed, epoch, rank, position), which makes
random augmentations resume exactly: measured alone, and as one epoch over a dataset with a
random crop and flip, plain DataLoader against SmartDataLoader, 0 and 2 (persistent) workers.

Throughput part (on CUDA when available): a small CNN trained on 256-image batches
(3x64x64 float) from an in-memory dataset of ``--samples`` samples, fed by
  - plain:    DataLoader(TensorDataset, 4 workers) + .to(device)
  - pinned:   the same with pin_memory=True + .to(device, non_blocking=True)
  - smart:    SmartDataLoader(TensorDataset).to(device)            (batched gather path)
  - smart-ps: SmartDataLoader(per-sample dataset, 4 workers).to(device)
  - cached:   SmartDataLoader(TensorDataset, cache="device").to(device)
  - on-gpu:   the tensors already on the device, indexed with a device permutation
"""
import argparse
import statistics
import sys
import time
import timeit

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from pystematic_torch import SmartDataLoader


class PerSample(Dataset):
    """An in-memory dataset read one sample at a time, like most user datasets."""

    def __init__(self, *tensors):
        self.tensors = tensors

    def __len__(self):
        return len(self.tensors[0])

    def __getitem__(self, index):
        return tuple(tensor[index] for tensor in self.tensors)


def epoch_seconds(loader) -> float:
    start = time.perf_counter()
    for _batch in loader:
        pass
    return time.perf_counter() - start


def cpu_overhead(args) -> None:
    generator = torch.Generator().manual_seed(0)
    dataset = PerSample(
        torch.randn(args.cpu_samples, 3, 16, 16, generator=generator),
        torch.randint(0, 10, (args.cpu_samples,), generator=generator),
    )
    plain = DataLoader(dataset, batch_size=64, shuffle=True, num_workers=args.cpu_workers)
    smart = SmartDataLoader(dataset, batch_size=64, shuffle=True, num_workers=args.cpu_workers,
                            loading_bar=True)  # fmt: skip
    plain_median, smart_median, ratio = paired_epochs(plain, smart, args.rounds)
    overhead = (ratio - 1) * 100
    print(f"CPU epoch, {args.cpu_samples} samples, batch 64, {args.cpu_workers} workers, "
          f"median of {args.rounds}:")  # fmt: skip
    print(f"  plain DataLoader        {plain_median * 1000:8.1f} ms")
    print(f"  SmartDataLoader (bar)   {smart_median * 1000:8.1f} ms")
    print(f"  overhead (median of the paired ratios) {overhead:+.1f} %")

    tensors = TensorDataset(*dataset.tensors)
    plain_tensor = DataLoader(tensors, batch_size=64, shuffle=True)
    smart_tensor = SmartDataLoader(tensors, batch_size=64, shuffle=True, loading_bar=True)
    plain_t = statistics.median(epoch_seconds(plain_tensor) for _ in range(args.rounds))
    smart_t = statistics.median(epoch_seconds(smart_tensor) for _ in range(args.rounds))
    print(f"  TensorDataset: plain {plain_t * 1000:.1f} ms, "
          f"SmartDataLoader {smart_t * 1000:.1f} ms ({plain_t / smart_t:.1f}x, batched gather)")


class RandomCrop(Dataset):
    """A CIFAR-like per-sample dataset with a cheap random augmentation (crop and flip)."""

    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        padded = nn.functional.pad(self.images[index], (4, 4, 4, 4))
        top, left = torch.randint(0, 9, (2,)).tolist()
        image = padded[:, top : top + 32, left : left + 32]
        if torch.rand(()) < 0.5:
            image = image.flip(2)
        return image, self.labels[index]


def paired_epochs(plain, smart, rounds):
    """Median epoch times of two loaders and the median of their paired time ratios.

    Back-to-back pairs, alternating which goes first, so drifting load on a shared machine
    affects both sides of each pair alike.
    """
    epoch_seconds(plain), epoch_seconds(smart)  # warm-up
    plain_times, smart_times = [], []
    for round_ in range(rounds):
        if round_ % 2:
            smart_times.append(epoch_seconds(smart))
            plain_times.append(epoch_seconds(plain))
        else:
            plain_times.append(epoch_seconds(plain))
            smart_times.append(epoch_seconds(smart))
    ratio = statistics.median(m / t for m, t in zip(smart_times, plain_times))
    return statistics.median(plain_times), statistics.median(smart_times), ratio


def fetch_seeding(args) -> None:
    """What exact resume of dataset randomness costs: seeding each fetch (see _sample_seeds)."""
    from pystematic_torch.data import _sample_seeds

    number = 20000
    seed = 0x1234_5678_9ABC_DEF
    seeding = timeit.timeit(lambda: _sample_seeds.seed_globals(seed), number=number) / number
    kept = _sample_seeds._MainProcessStreamsKept()

    def keep():
        with kept:
            pass

    keeping = timeit.timeit(keep, number=number) / number
    print("Seeded dataset fetches (one per batch):")
    print(f"  seeding torch, NumPy and random        {seeding * 1e6:6.1f} us per fetch")
    print(f"  + keeping the loop's streams (0 workers) {keeping * 1e6:6.1f} us per fetch")
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(args.cpu_samples, 3, 32, 32, generator=generator)
    labels = torch.randint(0, 10, (args.cpu_samples,), generator=generator)
    for workers in (0, 2):
        common = dict(batch_size=64, shuffle=True, num_workers=workers,
                      persistent_workers=workers > 0)  # fmt: skip
        plain = DataLoader(RandomCrop(images, labels), **common)
        smart = SmartDataLoader(RandomCrop(images, labels), loading_bar=False, **common)
        plain_t, smart_t, ratio = paired_epochs(plain, smart, args.rounds)
        print(f"  random crop + flip, {args.cpu_samples} samples, batch 64, {workers} workers: "
              f"plain {plain_t * 1000:.1f} ms, SmartDataLoader {smart_t * 1000:.1f} ms "
              f"({(ratio - 1) * 100:+.1f} %, median of {args.rounds} paired ratios)")


def small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10),
    )  # fmt: skip


def throughput(args) -> None:
    device = torch.device(args.throughput_device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("Throughput comparison skipped: no CUDA device (use --throughput-device cpu).")
        return
    size, image, batch = args.samples, args.image, args.batch_size
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(size, 3, image, image, generator=generator)
    labels = torch.randint(0, 10, (size,), generator=generator)
    model = small_cnn().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loss_fn = nn.CrossEntropyLoss()

    def step(x, y):
        loss = loss_fn(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def synchronize():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def measure(batches_of_epoch) -> float:
        batches_of_epoch()  # warm-up: workers, caches, cuDNN autotuning
        rates = []
        for _ in range(args.epochs):
            synchronize()
            start = time.perf_counter()
            count = batches_of_epoch()
            synchronize()
            rates.append(count / (time.perf_counter() - start))
        return statistics.median(rates)

    def loop(loader, move=None):
        def run():
            count = 0
            for x, y in loader:
                if move is not None:
                    x, y = move(x), move(y)
                step(x, y)
                count += len(y)
            return count

        return run

    workers = args.workers
    tensors = TensorDataset(images, labels)
    common = dict(batch_size=batch, shuffle=True, drop_last=True)
    results = {}
    results["plain"] = measure(loop(DataLoader(tensors, num_workers=workers, **common),
                                    move=lambda t: t.to(device)))  # fmt: skip
    results["pinned"] = measure(loop(
        DataLoader(tensors, num_workers=workers, pin_memory=device.type == "cuda", **common),
        move=lambda t: t.to(device, non_blocking=True),
    ))  # fmt: skip
    smart = SmartDataLoader(tensors, loading_bar=False, **common).to(device)
    results["smart"] = measure(loop(smart))
    per_sample = SmartDataLoader(PerSample(images, labels), num_workers=workers,
                                 loading_bar=False, **common).to(device)  # fmt: skip
    results["smart-ps"] = measure(loop(per_sample))
    cached = SmartDataLoader(tensors, cache="device", loading_bar=False, **common).to(device)
    results["cached"] = measure(loop(cached))
    on_device = (images.to(device), labels.to(device))

    def on_gpu():
        order = torch.randperm(size, device=device)
        count = 0
        for start in range(0, size - batch + 1, batch):
            index = order[start : start + batch]
            step(on_device[0][index], on_device[1][index])
            count += batch
        return count

    results["on-gpu"] = measure(on_gpu)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"Throughput on {name}, {size} samples of 3x{image}x{image}, batch {batch}, "
          f"{workers} workers where used, median of {args.epochs} epochs (samples/s):")  # fmt: skip
    for key, rate in results.items():
        print(f"  {key:9s} {rate:10.0f}   {rate / results['plain']:5.2f}x plain   "
              f"{rate / results['on-gpu']:5.2f}x on-gpu")  # fmt: skip


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=21, help="CPU epochs per loader")
    parser.add_argument("--cpu-samples", type=int, default=20000)
    parser.add_argument("--cpu-workers", type=int, default=0)
    parser.add_argument("--skip-cpu", action="store_true")
    parser.add_argument("--skip-seeding", action="store_true")
    parser.add_argument("--throughput-device", default="cuda")
    parser.add_argument("--samples", type=int, default=16384)
    parser.add_argument("--image", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, python {sys.version.split()[0]}")
    if not args.skip_cpu:
        cpu_overhead(args)
    if not args.skip_seeding:
        fetch_seeding(args)
    throughput(args)


if __name__ == "__main__":
    main()
