"""The state of random number generators, in a form ``torch.load(weights_only=True)`` reads.

Four kinds are known: ``torch.Generator`` (any device), NumPy's ``Generator`` and
``RandomState``, and Python's ``random.Random``. A captured state is a dict of tensors, ints,
floats and strings, tagged with its kind; NumPy's arrays become byte tensors with their
dtype and shape beside them, so every NumPy bit generator round-trips bit for bit.

A saved state is checked by loading it into a fresh generator of the same kind, so the
library's own validation speaks before the real generator is touched. The module also
serves the process's global generators, which are instances of the same kinds
(``torch.default_generator``, ``numpy.random.mtrand._rand``, ``random._inst``).
"""
import copy
import random
import sys
from typing import Any, Mapping, Optional

import torch

TORCH, NUMPY_GENERATOR, NUMPY_RANDOM_STATE, PYTHON = (
    "torch.Generator", "numpy.random.Generator", "numpy.random.RandomState", "random.Random",
)  # fmt: skip


def kind_of(value: Any) -> Optional[str]:
    """The kind of generator ``value`` is, or None for anything else.

    ``random.SystemRandom`` draws from the operating system and has no state: None.
    """
    if isinstance(value, torch.Generator):
        return TORCH
    if isinstance(value, random.Random):
        return None if isinstance(value, random.SystemRandom) else PYTHON
    numpy = sys.modules.get("numpy")  # without NumPy loaded there is no NumPy generator
    if numpy is not None:
        if isinstance(value, numpy.random.Generator):
            return NUMPY_GENERATOR
        if isinstance(value, numpy.random.RandomState):
            return NUMPY_RANDOM_STATE
    return None


def capture(generator: Any) -> dict:
    """The generator's state as a weights-only dict tagged with its kind."""
    kind = kind_of(generator)
    if kind == TORCH:
        return {"kind": kind, "device": generator.device.type, "state": generator.get_state()}
    if kind == PYTHON:
        version, internal, gauss_next = generator.getstate()
        return {
            "kind": kind,
            "version": version,
            "internal": torch.tensor(internal, dtype=torch.int64),
            "gauss_next": gauss_next,
        }
    if kind in (NUMPY_GENERATOR, NUMPY_RANDOM_STATE):
        return {"kind": kind, "state": _encode(_numpy_state(generator))}
    raise TypeError(f"{type(generator).__name__} is not a known random number generator")


def problem(generator: Any, saved: Any) -> Optional[str]:
    """Why ``saved`` cannot be loaded into ``generator``, or None when it can.

    Changes nothing: the state is loaded into a fresh generator of the same kind.
    """
    kind = kind_of(generator)
    saved_kind = saved.get("kind") if isinstance(saved, Mapping) else None
    if saved_kind != kind:
        what = f"a {saved_kind} state" if isinstance(saved_kind, str) else type(saved).__name__
        return f"checkpoint has {what}, context has a {kind}"
    if kind == TORCH and saved.get("device") != generator.device.type:
        return (
            f"checkpoint has the state of a {saved.get('device')} generator, context has a "
            f"{generator.device.type} generator"
        )
    if kind in (NUMPY_GENERATOR, NUMPY_RANDOM_STATE):
        mine = _numpy_state(generator)["bit_generator"]
        theirs = saved["state"].get("bit_generator")
        if theirs != mine:
            return f"checkpoint has the state of a {theirs} bit generator, context has {mine}"
    try:
        restore(_fresh_like(generator), saved)
    except Exception as error:  # noqa: BLE001 - the library's own verdict, reported
        return f"the checkpoint's {kind} state does not load: {error}"
    return None


def restore(generator: Any, saved: Mapping) -> None:
    """Put ``generator`` into the captured state ``saved``; later draws repeat exactly."""
    kind = kind_of(generator)
    if kind == TORCH:
        generator.set_state(saved["state"])
    elif kind == PYTHON:
        internal = tuple(int(word) for word in saved["internal"].tolist())
        generator.setstate((saved["version"], internal, saved["gauss_next"]))
    elif kind == NUMPY_GENERATOR:
        generator.bit_generator.state = _decode(saved["state"])
    elif kind == NUMPY_RANDOM_STATE:
        generator.set_state(_decode(saved["state"]))


def _numpy_state(generator: Any) -> dict:
    if kind_of(generator) == NUMPY_GENERATOR:
        return generator.bit_generator.state
    return generator.get_state(legacy=False)


def _fresh_like(generator: Any) -> Any:
    if isinstance(generator, torch.Generator):
        return torch.Generator(device=generator.device)
    if isinstance(generator, random.Random):
        return random.Random()
    return copy.deepcopy(generator)  # NumPy's generators copy cheaply, with their bit generator


def _encode(state: Any) -> Any:
    numpy = sys.modules["numpy"]
    if isinstance(state, numpy.ndarray):
        raw = numpy.frombuffer(numpy.ascontiguousarray(state).tobytes(), dtype=numpy.uint8)
        return {"ndarray": state.dtype.str, "shape": list(state.shape),
                "data": torch.from_numpy(raw.copy())}  # fmt: skip
    if isinstance(state, dict):
        return {key: _encode(value) for key, value in state.items()}
    if isinstance(state, numpy.generic):
        return state.item()
    return state


def _decode(state: Any) -> Any:
    numpy = sys.modules["numpy"]
    if isinstance(state, Mapping) and "ndarray" in state:
        raw = state["data"].numpy().tobytes()
        array = numpy.frombuffer(raw, dtype=numpy.dtype(state["ndarray"]))
        return array.reshape(state["shape"]).copy()
    if isinstance(state, Mapping):
        return {key: _decode(value) for key, value in state.items()}
    return state
