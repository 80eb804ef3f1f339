"""Which GPUs a sweep may use, and which of them a new member gets.

:func:`inventory` is the one place that looks at the machine, so tests replace it (or put a
fake ``nvidia-smi`` on ``PATH``) to check the assignment without a GPU.
"""
import dataclasses
import os
import shutil
import subprocess
from typing import Dict, List, Optional, Sequence

_QUERY = ["--query-gpu=index,uuid,memory.used", "--format=csv,noheader,nounits"]


@dataclasses.dataclass(frozen=True)
class Gpu:
    """One GPU a member can be given.

    Attributes:
        label: How results and logs name it: nvidia-smi's index, or the entry of the sweep's
            own ``CUDA_VISIBLE_DEVICES``.
        token: What goes into a member's ``CUDA_VISIBLE_DEVICES``. nvidia-smi's UUID where
            known, since CUDA may number devices in another order than nvidia-smi does.
        memory_used_mib: Memory others used on it when the sweep started.
    """

    label: str
    token: str
    memory_used_mib: float = 0.0


def inventory() -> List[Gpu]:
    """The GPUs this process may hand out.

    Those named by this process's ``CUDA_VISIBLE_DEVICES`` when it is set (a scheduler's
    allocation), else every GPU ``nvidia-smi`` lists, else ``torch.cuda.device_count()``
    devices when there is no ``nvidia-smi`` (other vendors' builds of torch).
    """
    rows = _nvidia_smi()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        by_name = {}
        for row in rows or []:
            by_name[row.label] = by_name[row.token] = row
        gpus = []
        for entry in (part.strip() for part in visible.split(",")):
            if not entry or entry.startswith("-"):
                break  # CUDA itself ignores everything from the first invalid entry on
            known = by_name.get(entry)
            gpus.append(Gpu(entry, entry, known.memory_used_mib if known else 0.0))
        return gpus
    if rows is not None:
        return rows
    return [Gpu(str(index), str(index)) for index in range(_torch_device_count())]


def choose(gpus: Sequence[Gpu], members_on: Dict[str, int], count: int) -> List[Gpu]:
    """The ``count`` least-used GPUs, in inventory order.

    Least used means running the fewest members of this sweep, then having the least memory
    taken by others when the sweep started, then coming first in the inventory.
    """
    position = {gpu.token: index for index, gpu in enumerate(gpus)}
    ranked = sorted(gpus, key=lambda gpu: (members_on.get(gpu.token, 0), gpu.memory_used_mib,
                                           position[gpu.token]))  # fmt: skip
    return sorted(ranked[:count], key=lambda gpu: position[gpu.token])


def _nvidia_smi() -> Optional[List[Gpu]]:
    executable = shutil.which("nvidia-smi")
    if executable is None:
        return None
    try:
        result = subprocess.run([executable, *_QUERY], capture_output=True, text=True,
                                timeout=30)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:
        return None  # installed, but no driver or no device: nothing to hand out
    gpus = []
    for line in result.stdout.splitlines():
        fields = [field.strip() for field in line.split(",")]
        if len(fields) != 3 or not fields[0].isdigit():
            continue
        index, uuid, memory = fields
        gpus.append(Gpu(index, uuid or index, _number(memory)))
    return gpus


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:  # "[N/A]" on some boards
        return 0.0


def _torch_device_count() -> int:
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count()
