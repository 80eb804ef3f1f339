"""Small models, data and hand-written PyTorch loops that the Context's step helpers are
compared against."""
import copy
from typing import Iterator, List, Tuple

import torch
from torch import nn

Batch = Tuple[torch.Tensor, torch.Tensor]


class Regressor(nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(6, 16)
        self.out = nn.Linear(16, 1)

    def forward(self, x):
        return self.out(torch.tanh(self.hidden(x)))


def regressor(seed: int = 0) -> Regressor:
    torch.manual_seed(seed)
    return Regressor()


def batches(count: int, size: int, seed: int = 1, scale: float = 1.0) -> List[Batch]:
    """``count`` batches of ``size`` samples; ``scale`` enlarges the targets (big gradients)."""
    generator = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(size, 6, generator=generator),
         scale * torch.randn(size, 1, generator=generator))
        for _ in range(count)
    ]  # fmt: skip


def mse(model: nn.Module, batch: Batch) -> torch.Tensor:
    x, y = batch
    return nn.functional.mse_loss(model(x).float(), y)


def twins(seed: int = 0) -> Tuple[nn.Module, nn.Module]:
    """Two models with the same initial weights: one for ours, one for the plain loop."""
    model = regressor(seed)
    return model, copy.deepcopy(model)


def merged(parts: List[Batch]) -> Batch:
    """One batch made of several: what accumulating over ``parts`` must equal."""
    return torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts])


def chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def max_difference(first: nn.Module, second: nn.Module) -> float:
    return max(
        (a - b).abs().max().item() for a, b in zip(first.parameters(), second.parameters())
    )


def same_parameters(first: nn.Module, second: nn.Module) -> bool:
    return all(torch.equal(a, b) for a, b in zip(first.parameters(), second.parameters()))


def our_steps(ctx, data: List[Batch], overflow_at=(), **clip) -> List[bool]:
    """Train ``ctx.model`` with the Context's helpers; the losses at ``overflow_at`` are inf."""
    stepped = []
    for index, batch in enumerate(data):
        with ctx.autocast():
            loss = mse(ctx.model, batch)
        ctx.backward(loss * float("inf") if index in overflow_at else loss)
        stepped.append(ctx.step_optimizer(ctx.optimizer, **clip))
    return stepped


def grad_scaler_steps(model, optimizer, data, device_type, overflow_at=(), clip_norm=None):
    """torch's own float16 loop with a GradScaler, as its AMP recipe writes it.

    Returns:
        The scaler, and for each batch whether the optimizer stepped.
    """
    scaler, ran, stepped = torch.amp.GradScaler(device_type), [], []
    handle = optimizer.register_step_post_hook(lambda *args: ran.append(True))
    for index, batch in enumerate(data):
        optimizer.zero_grad()
        with torch.autocast(device_type, dtype=torch.float16):
            loss = mse(model, batch)
        scaler.scale(loss * float("inf") if index in overflow_at else loss).backward()
        if clip_norm is not None:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
        ran.clear()
        scaler.step(optimizer)
        stepped.append(bool(ran))
        scaler.update()
    handle.remove()
    return scaler, stepped
