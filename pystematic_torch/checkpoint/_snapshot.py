"""A copy of a state in host memory, so training can go on while the copy is written.

Every tensor is copied to the CPU (into pinned memory when it lives on a GPU, so the copy
runs at full PCIe speed) and every container is rebuilt, so nothing the training loop does
afterwards (an optimizer step, appending to a list) reaches the copy. Tensors that share
storage (views, tied weights) still share it in the copy, as ``torch.save`` would have
stored them.
"""
from typing import Any, Dict, Set, Tuple

import torch
from torch import nn

_StorageKey = Tuple[int, str, int]


def snapshot(state: Any) -> Any:
    """Copy ``state`` (already checked by ``unloadable_values``) into host memory.

    Returns once every copy is complete, also the asynchronous GPU-to-host ones.
    """
    copier = _Copier()
    copied = copier.copy(state)
    for device in copier.gpus:
        # The copies were queued on each device's current stream, after the kernels that
        # produced the values, so waiting for that stream is waiting for the copies.
        torch.cuda.current_stream(device).synchronize()
    return copied


class _Copier:
    def __init__(self) -> None:
        self.storages: Dict[_StorageKey, torch.UntypedStorage] = {}
        self.objects: Dict[int, Any] = {}
        self.gpus: Set[torch.device] = set()

    def copy(self, value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return self._once(value, self._tensor)
        kind = type(value)
        if isinstance(value, dict):
            return self._once(value, self._mapping)
        if kind in (list, set):
            return self._once(value, lambda items: kind(self.copy(item) for item in items))
        if kind is tuple:
            return tuple(self.copy(item) for item in value)
        if kind is bytearray:
            return bytearray(value)
        return value  # immutable: numbers, strings, torch.Size, dtypes, devices

    def _once(self, value: Any, make) -> Any:
        # The same object twice in the state (a tied weight) stays one object in the copy.
        key = id(value)
        if key not in self.objects:
            self.objects[key] = (value, make(value))  # keeps value alive, so ids stay unique
        return self.objects[key][1]

    def _mapping(self, value: dict) -> dict:
        copied = type(value)()
        for key, item in value.items():
            copied[self.copy(key)] = self.copy(item)
        if hasattr(value, "_metadata"):
            copied._metadata = value._metadata
        return copied

    def _tensor(self, tensor: torch.Tensor) -> torch.Tensor:
        if type(tensor) is nn.Parameter:
            copied = nn.Parameter(self._data(tensor.detach()), requires_grad=tensor.requires_grad)
        else:
            copied = self._data(tensor.detach())
            if tensor.requires_grad and copied.is_floating_point():
                copied.requires_grad_(True)
        for name, attribute in vars(tensor).items():
            setattr(copied, name, self.copy(attribute))
        return copied

    def _data(self, tensor: torch.Tensor) -> torch.Tensor:
        if tensor.device.type == "meta":
            return tensor.clone()
        plain_strided = (
            tensor.layout == torch.strided
            and not (tensor.is_quantized or tensor.is_nested)
            and not (tensor.is_conj() or tensor.is_neg())
        )
        if not plain_strided:
            return tensor.to("cpu", copy=True)
        storage = tensor.untyped_storage()
        copied = torch.empty(0, dtype=tensor.dtype)
        copied.set_(self._storage(storage), tensor.storage_offset(), tensor.size(),
                    tensor.stride())  # fmt: skip
        return copied

    def _storage(self, storage: torch.UntypedStorage) -> torch.UntypedStorage:
        key = (storage.data_ptr(), str(storage.device), storage.nbytes())
        if key[0] != 0 and key in self.storages:
            return self.storages[key]
        if storage.device.type == "cpu":
            copied = storage.clone()
        elif storage.device.type == "cuda":
            buffer = torch.empty(storage.nbytes(), dtype=torch.uint8, pin_memory=True)
            copied = buffer.untyped_storage()
            copied.copy_(storage, non_blocking=True)
            self.gpus.add(storage.device)
        else:
            copied = torch.UntypedStorage(storage.nbytes())
            copied.copy_(storage)
        self.storages[key] = copied
        return copied
