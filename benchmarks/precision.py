"""Step time of a small transformer block at 32 and in mixed precision: the Context's helpers
against a hand-written ``torch.autocast`` loop, measured in the same run.

    python benchmarks/precision.py                  # CPU (32, bf16-mixed); GPU too if CUDA
    python benchmarks/precision.py --rounds 3 --steps 2 --batch 4   # a quick smoke run

One training step: forward under autocast, MSE loss, backward, gradient clipping to norm
1.0, AdamW step, zeroed gradients. Hand-written, that is ``torch.autocast`` (and at
``16-mixed`` a ``torch.amp.GradScaler`` with ``unscale_``, ``step``, ``update``) around
``loss.backward()``, ``clip_grad_norm_`` and ``optimizer.step()``; ours is
``ctx.autocast()``, ``ctx.backward(loss)`` and ``ctx.step_optimizer(optimizer,
clip_grad_norm=1.0)``. Each round times ``--steps`` steps of every variant, in an order
that rotates from round to round, after one warm-up round; figures are medians over the
rounds, ratios medians of the per-round ratios. Printed: the step time of each variant,
ours over hand-written at each precision (the helpers' overhead), and mixed over 32 (what
the precision buys on this device). The same for a tiny block, whose step is mostly
Python, and then the helpers' own time per call, measured over the same torch calls made
by hand (minimum of repeated runs, which other load on the machine blurs least).
"""
import argparse
import platform
import statistics
import sys
import time
import timeit
from typing import Callable, Dict, List

import torch
from torch import nn

from pystematic_torch import Context

DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


class Block(nn.Module):
    """One pre-norm transformer encoder block with an output projection."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.block = nn.TransformerEncoderLayer(
            width, heads, dim_feedforward=4 * width, dropout=0.0, batch_first=True,
            norm_first=True,
        )  # fmt: skip
        self.head = nn.Linear(width, width)

    def forward(self, x):
        return self.head(self.block(x))


def hand_written(model, optimizer, precision: str, device: torch.device) -> Callable:
    scaler = torch.amp.GradScaler(device.type) if precision == "16-mixed" else None

    def step(x, y):
        if precision == "32":
            loss = nn.functional.mse_loss(model(x), y)
        else:
            with torch.autocast(device.type, dtype=DTYPES[precision]):
                loss = nn.functional.mse_loss(model(x).float(), y)
        if scaler is None:
            loss.backward()
        else:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        if scaler is None:
            optimizer.step()
        else:
            scaler.step(optimizer)
            scaler.update()
        optimizer.zero_grad(set_to_none=True)

    return step


def ours(model, optimizer, precision: str, device: torch.device) -> Callable:
    ctx = Context(precision=precision)
    ctx.model = model
    ctx.optimizer = optimizer
    ctx.to(device)

    def step(x, y):
        with ctx.autocast():
            loss = nn.functional.mse_loss(ctx.model(x).float(), y)
        ctx.backward(loss)
        ctx.step_optimizer(ctx.optimizer, clip_grad_norm=1.0)

    return step


def variants(shape, device: torch.device, precisions: List[str]) -> Dict[str, Callable]:
    steps = {}
    for precision in precisions:
        for name, make in (("hand-written", hand_written), ("ours", ours)):
            torch.manual_seed(0)
            model = Block(shape.width, shape.heads).to(device)
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
            steps[f"{name} {precision}"] = make(model, optimizer, precision, device)
    return steps


def measure(args, shape, device: torch.device, precisions: List[str]) -> None:
    """Time every variant on inputs of ``shape`` (batch, sequence, width, heads, steps)."""
    generator = torch.Generator().manual_seed(1)
    size = (shape.batch, shape.sequence, shape.width)
    x = torch.randn(size, generator=generator).to(device)
    y = torch.randn(size, generator=generator).to(device)
    steps = variants(shape, device, precisions)
    names = list(steps)

    def timed(name: str) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        for _ in range(shape.steps):
            steps[name](x, y)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return (time.perf_counter() - start) / shape.steps

    for name in names:  # warm-up: allocator, kernels, autotuning
        timed(name)
    times: Dict[str, List[float]] = {name: [] for name in names}
    for round_ in range(args.rounds):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(timed(name))

    def ratio(first: str, second: str) -> float:
        return statistics.median(a / b for a, b in zip(times[first], times[second]))

    label = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    print(f"\n{device.type.upper()} ({label}, {torch.get_num_threads()} threads): "
          f"batch {shape.batch} x {shape.sequence} tokens, width {shape.width}, "
          f"{shape.heads} heads; median of {args.rounds} rounds of {shape.steps} steps")
    for name in names:
        print(f"  {name:26s} {statistics.median(times[name]) * 1000:9.3f} ms/step")
    for precision in precisions:
        extra = statistics.median(
            a - b for a, b in zip(times[f"ours {precision}"], times[f"hand-written {precision}"])
        )
        print(f"  {'ours - hand-written at ' + precision:44s}{extra * 1e6:+7.1f} us/step")
    for precision in precisions:
        print(f"  {'ours / hand-written at ' + precision:44s}"
              f"{ratio(f'ours {precision}', f'hand-written {precision}'):6.3f}x")
    for precision in precisions[1:]:
        for name in ("hand-written", "ours"):
            print(f"  {f'{name} {precision} / {name} 32':44s}"
                  f"{ratio(f'{name} {precision}', f'{name} 32'):6.3f}x")


class NullOptimizer(torch.optim.Optimizer):
    """Steps and zeroes nothing, so a call costs only the code around it."""

    def __init__(self, params):
        super().__init__(params, {})

    def step(self, closure=None):
        return None

    def zero_grad(self, set_to_none: bool = True):
        return None


def helper_overhead(precision: str, calls: int = 2000, repeat: int = 9) -> Dict[str, float]:
    """Microseconds per call that each helper adds to what it calls in torch.

    Each pair runs the same torch work by hand and through the helper, ``calls`` times,
    ``repeat`` times; the minimum per pair is the least disturbed by other load.
    """
    weight = torch.zeros(4, requires_grad=True)
    weight.grad = torch.zeros(4)
    optimizer = NullOptimizer([weight])
    ctx = Context(precision=precision)
    dtype = DTYPES.get(precision)

    def by_hand_autocast():
        if dtype is None:
            return
        with torch.autocast("cpu", dtype=dtype):
            pass

    def ours_autocast():
        with ctx.autocast():
            pass

    def by_hand_backward():
        (weight * 2.0).sum().backward()

    def ours_backward():
        ctx.backward((weight * 2.0).sum())

    def by_hand_step():
        nn.utils.clip_grad_norm_([weight], 1.0)
        optimizer.step()
        optimizer.zero_grad()

    def ours_step():
        ctx.step_optimizer(optimizer, clip_grad_norm=1.0)

    def per_call(function) -> float:
        return min(timeit.repeat(function, number=calls, repeat=repeat)) / calls * 1e6

    pairs = {"autocast()": (by_hand_autocast, ours_autocast),
             "backward()": (by_hand_backward, ours_backward),
             "step_optimizer(clip_grad_norm=1.0)": (by_hand_step, ours_step)}  # fmt: skip
    return {name: per_call(ours) - per_call(hand) for name, (hand, ours) in pairs.items()}


def print_overheads() -> None:
    print("\nThe helpers' own time, over the same torch calls by hand (min of 9 x 2000 calls):")
    for precision in ("32", "bf16-mixed"):
        extras = helper_overhead(precision)
        parts = ", ".join(f"{name} {extra:+.1f}" for name, extra in extras.items())
        print(f"  {precision:10s} {parts}; a step {sum(extras.values()):+.1f} us")


def cpu_name() -> str:
    """The CPU's model and whether it computes bfloat16 natively (AVX512-BF16 or AMX)."""
    try:
        with open("/proc/cpuinfo") as file:
            info = file.read()
    except OSError:
        return platform.processor() or "cpu"
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines()
                  if line.startswith("model name")), "cpu")  # fmt: skip
    native = any(flag in info for flag in ("avx512_bf16", "amx_bf16"))
    return f"{model}, {'with' if native else 'without'} native bfloat16"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--steps", type=int, default=5, help="steps per variant per round")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--sequence", type=int, default=64)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--gpu-batch", type=int, default=64)
    parser.add_argument("--tiny-steps", type=int, default=100,
                        help="steps per round of a tiny block, whose time is mostly overhead")
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, python {sys.version.split()[0]}, {platform.machine()}")
    block = argparse.Namespace(batch=args.batch, sequence=args.sequence, width=args.width,
                               heads=args.heads, steps=args.steps)  # fmt: skip
    tiny = argparse.Namespace(batch=1, sequence=1, width=8, heads=1, steps=args.tiny_steps)
    measure(args, block, torch.device("cpu"), ["32", "bf16-mixed"])
    measure(args, tiny, torch.device("cpu"), ["32", "bf16-mixed"])
    print_overheads()
    if not torch.cuda.is_available():
        print("\nGPU: skipped (CUDA is not available on this machine).")
        return
    gpu = torch.device("cuda", torch.cuda.current_device())
    mixed = ["bf16-mixed", "16-mixed"] if torch.cuda.is_bf16_supported(False) else ["16-mixed"]
    measure(args, argparse.Namespace(vars(block), batch=args.gpu_batch), gpu, ["32", *mixed])


if __name__ == "__main__":
    main()
