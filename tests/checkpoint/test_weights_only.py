"""What weights-only loading reads back, tried kind by kind with torch's own save and load.

Every accepted kind is saved with save_checkpoint and read back with
torch.load(weights_only=True). Every refused kind is refused by save_checkpoint with its
path, and is shown to need refusing: plain torch.save plus weights-only loading fails on it
or returns something else. If a torch release changes either, these tests say which kind.
"""
import collections
import datetime
import decimal
import enum
import fractions
import io
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch import nn

import pystematic_torch as pt
from pystematic_torch.checkpoint import ContextState


class Color(enum.Enum):
    RED = 1


class Level(enum.IntEnum):
    LOW = 1


class ParameterSubclass(nn.Parameter):
    pass


class TensorSubclass(torch.Tensor):
    pass


class DictSubclass(dict):
    pass


class ListSubclass(list):
    pass


class StrSubclass(str):
    pass


Pair = collections.namedtuple("Pair", "a b")


def tensor_with(**attributes):
    tensor = torch.arange(3.0)
    for name, value in attributes.items():
        setattr(tensor, name, value)
    return tensor


ACCEPTED = {
    "tensor": lambda: torch.arange(6.0).view(2, 3),
    "parameter": lambda: nn.Parameter(torch.ones(2)),
    "frozen parameter": lambda: nn.Parameter(torch.ones(2), requires_grad=False),
    "tensor with an attribute": lambda: tensor_with(note="kept", scale=2),
    "bfloat16 tensor": lambda: torch.ones(2, dtype=torch.bfloat16),
    "float8 tensor": lambda: torch.ones(2).to(torch.float8_e4m3fn),
    "uint16 tensor": lambda: torch.ones(2, dtype=torch.uint16),
    "complex tensor": lambda: torch.tensor([1 + 2j]),
    "non-contiguous view": lambda: torch.arange(6.0).view(2, 3).t(),
    "sparse COO tensor": lambda: torch.eye(3).to_sparse(),
    "sparse CSR tensor": lambda: torch.eye(3).to_sparse_csr(),
    "quantized tensor": lambda: torch.quantize_per_tensor(torch.ones(3), 0.1, 0, torch.qint8),
    "meta tensor": lambda: torch.empty(2, 3, device="meta"),
    "torch.Size": lambda: torch.Size([2, 3]),
    "dtype": lambda: torch.float8_e5m2,
    "device": lambda: torch.device("cuda", 1),
    "layout": lambda: torch.sparse_coo,
    "qscheme": lambda: torch.per_channel_affine,
    "OrderedDict": lambda: collections.OrderedDict(b=1, a=2),
    "Counter": lambda: collections.Counter("aab"),
    "ContextState": lambda: ContextState(epoch=1),
    "set": lambda: {1, "a"},
    "bytes": lambda: b"\x00\xff",
    "bytearray": lambda: bytearray(b"ab"),
    "complex": lambda: 1 - 2j,
    "big int": lambda: 2**100,
    "float": lambda: 0.1,
    "bool": lambda: False,
    "None": lambda: None,
    "str": lambda: "text",
    "tuple": lambda: (1, (2, 3)),
    "list": lambda: [1, [2]],
    "dict with non-string keys": lambda: {1: "a", (2, 3): "b", None: "c", 1.5: "d"},
}

REFUSED = {
    "numpy float64": (lambda: np.float64(0.5), "numpy.float64"),
    "numpy int64": (lambda: np.int64(3), "numpy.int64"),
    "numpy bool": (lambda: np.bool_(True), "numpy.bool"),
    "numpy array": (lambda: np.ones(2), "numpy.ndarray"),
    "tensor subclass": (lambda: torch.ones(2).as_subclass(TensorSubclass), "TensorSubclass"),
    "parameter subclass": (lambda: ParameterSubclass(torch.ones(2)), "ParameterSubclass"),
    "torch.Generator": (torch.Generator, "torch._C.Generator"),
    "memory format": (lambda: torch.channels_last, "torch.memory_format"),
    "defaultdict": (lambda: collections.defaultdict(int, a=1), "collections.defaultdict"),
    "frozenset": (lambda: frozenset({1}), "builtins.frozenset"),
    "namedtuple": (lambda: Pair(1, 2), "Pair"),
    "enum": (lambda: Color.RED, "Color"),
    "int enum": (lambda: Level.LOW, "Level"),
    "dict subclass": (lambda: DictSubclass(a=1), "DictSubclass"),
    "list subclass": (lambda: ListSubclass([1]), "ListSubclass"),
    "str subclass": (lambda: StrSubclass("x"), "StrSubclass"),
    "path": (lambda: pathlib.Path("/data"), "pathlib.PosixPath"),
    "datetime": (lambda: datetime.datetime(2026, 1, 1), "datetime.datetime"),
    "decimal": (lambda: decimal.Decimal(1), "decimal.Decimal"),
    "fraction": (lambda: fractions.Fraction(1, 2), "fractions.Fraction"),
    "function": (lambda: print, "builtins.builtin_function_or_method"),
    "class": (lambda: int, "builtins.type"),
    "slice": (lambda: slice(1, 2), "builtins.slice"),
    "range": (lambda: range(3), "builtins.range"),
    "Ellipsis": (lambda: ..., "builtins.ellipsis"),
}


def same(a, b):
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, torch.Tensor):
        assert (a.dtype, a.shape, a.device, a.layout) == (b.dtype, b.shape, b.device, b.layout)
        assert a.requires_grad == b.requires_grad and vars(a) == vars(b)
        if a.is_quantized:
            a, b = a.dequantize(), b.dequantize()
        if a.layout != torch.strided:
            a, b = a.to_dense(), b.to_dense()
        if a.device.type != "meta":
            assert torch.equal(a.float() if a.dtype == torch.float8_e4m3fn else a,
                               b.float() if b.dtype == torch.float8_e4m3fn else b)  # fmt: skip
    elif isinstance(a, (dict, list, tuple)) and not isinstance(a, torch.Size):
        assert len(a) == len(b)
        pairs = zip(a.items(), b.items()) if isinstance(a, dict) else zip(a, b)
        for x, y in pairs:
            same(x, y)
    else:
        assert a == b


@pytest.mark.filterwarnings("ignore:.*(Sparse CSR|quantize|TypedStorage):UserWarning")
@pytest.mark.parametrize("kind", ACCEPTED)
def test_accepted_kinds_come_back_from_weights_only_loading(tmp_path, kind):
    value = ACCEPTED[kind]()
    path = pt.save_checkpoint({"value": value}, id=1, directory=tmp_path)
    loaded = torch.load(path, weights_only=True)["value"]
    expected = collections.OrderedDict(value) if kind == "ContextState" else value
    same(expected, loaded)


def plain_round_trip(value):
    buffer = io.BytesIO()
    torch.save({"value": value}, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)["value"]


@pytest.mark.parametrize("kind", REFUSED)
def test_refused_kinds_are_named_by_their_path_and_nothing_is_written(tmp_path, kind):
    make, type_name = REFUSED[kind]
    with pytest.raises(pt.CheckpointError) as info:
        pt.save_checkpoint({"ok": 1, "deep": {"list": [0, make()]}}, id=1, directory=tmp_path)
    assert "state['deep']['list'][1] is a " in str(info.value)
    assert type_name in str(info.value)
    assert not any(tmp_path.iterdir())
    # Refusing is right: torch's own save and weights-only load fail or change the value.
    try:
        loaded = plain_round_trip(make())
    except Exception:  # noqa: BLE001 - either torch.save or torch.load refuses it
        return
    assert type(loaded) is not type(make()), f"torch now reads {kind} back; accept it"


@pytest.mark.timeout(120)
def test_a_dtensor_is_refused_because_a_fresh_process_cannot_load_it(tmp_path):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, distribute_tensor

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    mesh = init_device_mesh("cpu", (1,))
    dtensor = distribute_tensor(torch.ones(4), mesh, [Replicate()])
    with pytest.raises(pt.CheckpointError, match=r"state\['w'\] is a .*DTensor .*full_tensor"):
        pt.save_checkpoint({"w": dtensor}, id=1, directory=tmp_path)
    # Importing torch.distributed.tensor lets this process read DTensors back, but a fresh
    # one (an evaluation job, `pystematic-torch inspect`) cannot.
    torch.save({"w": dtensor}, tmp_path / "plain.pt")
    code = f"import torch; torch.load({str(tmp_path / 'plain.pt')!r}, weights_only=True)"
    fresh = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           timeout=100)  # fmt: skip
    assert fresh.returncode != 0 and "Weights only load failed" in fresh.stderr
    pt.save_checkpoint({"w": dtensor.full_tensor()}, id=1, directory=tmp_path)  # the fix


def test_keys_and_tensor_attributes_are_checked_too(tmp_path):
    state = {"by_key": {np.int64(1): "a"}, "w": tensor_with(scale=np.float32(2))}
    with pytest.raises(pt.CheckpointError) as info:
        pt.save_checkpoint(state, id=1, directory=tmp_path)
    assert "state['by_key'] key np.int64(1) is a numpy.int64 (use .item()" in str(info.value)
    assert "state['w'].scale is a numpy.float32" in str(info.value)
    with pytest.raises(Exception, match="Weights only load failed"):
        plain_round_trip(tensor_with(scale=np.float32(2)))


def test_every_problem_is_listed_at_once(tmp_path):
    state = {"loss": np.float64(0.5), "ok": 1, "deep": {"fn": print, "list": [object()]}}
    with pytest.raises(pt.CheckpointError) as info:
        pt.save_checkpoint(state, id=1, directory=tmp_path)
    message = str(info.value)
    assert "state['loss'] is a numpy.float64" in message
    assert "state['deep']['fn']" in message and "state['deep']['list'][0]" in message
    assert "state['ok']" not in message
