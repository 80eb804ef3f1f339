"""The whole dataset as tensors on one device, for SmartDataLoader(cache="device")."""
import logging
from typing import Any

import torch
from torch.utils.data import Dataset, default_collate

from ..devices import iter_tensors, move_to_device
from ..errors import DataError

logger = logging.getLogger("pystematic.torch.data")


def build_cache(dataset: Dataset, chunk: int, device: torch.device) -> Any:
    size = len(dataset)
    if size == 0:
        raise DataError("SmartDataLoader(cache='device') got an empty dataset; drop cache=.")
    getitems = getattr(dataset, "__getitems__", None)
    parts = []
    chunk = max(chunk, 256)
    for start in range(0, size, chunk):
        indices = list(range(start, min(size, start + chunk)))
        samples = getitems(indices) if callable(getitems) else [dataset[i] for i in indices]
        parts.append(default_collate(samples))
    # Concatenated on the host and moved once, so device memory peaks at one copy.
    cached = move_to_device(device, _concat(parts, "batch"))
    megabytes = sum(t.numel() * t.element_size() for t in iter_tensors(cached)) / 2**20
    logger.info("SmartDataLoader cached %d samples on %s (%.1f MiB).", size, device, megabytes)
    return cached


def _concat(parts: list, path: str) -> Any:
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(parts)
    if isinstance(first, dict):
        return type(first)((key, _concat([p[key] for p in parts], f"{path}[{key!r}]"))
                           for key in first)  # fmt: skip
    if isinstance(first, (list, tuple)) and not any(isinstance(v, (str, bytes)) for v in first):
        items = [_concat([p[i] for p in parts], f"{path}[{i}]") for i in range(len(first))]
        return type(first)(*items) if hasattr(first, "_fields") else type(first)(items)
    raise DataError(
        f"SmartDataLoader(cache='device') can only cache tensors and numbers, but {path} is "
        f"{type(first).__name__}; drop cache= or return tensors from the dataset."
    )
