"""Checking recorded values on the training thread and converting them on the writer thread.

The checks look only at types, shapes and dtypes, never at tensor data, so they cost no
GPU synchronisation; a mistake still fails at the call that made it, naming the tag.
"""
import contextlib
import numbers
import sys
from typing import Any, Optional, Tuple, Union

import numpy as np
import torch

from ..devices import to_numpy
from ..errors import RecorderError
from ._backend import RecordedImage

_LAYOUTS = ("HW", "HWC", "CHW")
_CHANNELS = (1, 3, 4)


# -- on the training thread ------------------------------------------------------------


def check_tag(method: str, tag: Any) -> None:
    if not isinstance(tag, str) or not tag:
        raise RecorderError(
            f"Recorder.{method}() got the tag {tag!r}; a tag must be a non-empty string, "
            "for example 'train/loss'."
        )


def scalar(tag: str, value: Any) -> Any:
    """A value that is not a plain int or float, as something the writer can record.

    CPU tensors and NumPy numbers become Python numbers right away (no synchronisation is
    involved, and a tensor updated in place later must not change what was recorded).
    Tensors on an accelerator are cloned, which queues a copy on the device without
    waiting for it; the writer thread reads the clone (a CUDA clone comes with the stream
    it was queued on).
    """
    check_tag("scalar", tag)
    if isinstance(value, torch.Tensor):
        if value.is_cpu and value.numel() == 1:
            # The common case (a CPU loss), with as few tensor queries as possible.
            number = value.item()
            if number.__class__ is float or number.__class__ is int:
                return number
        if value.numel() != 1 or value.is_complex() or value.dtype == torch.bool:
            raise RecorderError(
                f"Recorder.scalar({tag!r}) got a {value.dtype} tensor of shape "
                f"{tuple(value.shape)}; a scalar must be a real tensor with exactly one "
                "element. Record several values with scalars() or histogram()."
            )
        copy = value.detach().clone()
        if copy.is_cuda:
            # The copy is queued on the caller's current stream; the writer reads it on that
            # same stream, so it waits for exactly the work before the call, and the caching
            # allocator sees no use of the copy on another stream.
            return (copy, torch.cuda.current_stream(copy.device))
        return copy
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value) if isinstance(value, (float, np.floating)) else int(value)
    if isinstance(value, np.ndarray) and value.size == 1 and value.dtype.kind in "biuf":
        return value.item()
    raise RecorderError(
        f"Recorder.scalar({tag!r}) got {_describe(value)}; allowed are Python or NumPy "
        "numbers and tensors with one element. Use text() for strings."
    )


def image(tag: str, img: Any, layout: Optional[str]) -> Tuple[Any, str]:
    """A private copy of ``img`` and its layout, after checking shape and dtype."""
    check_tag("image", tag)
    if layout is not None and layout not in _LAYOUTS:
        raise RecorderError(
            f"Recorder.image({tag!r}) got layout={layout!r}; allowed are "
            f"{', '.join(_LAYOUTS)} or None to infer it from the shape."
        )
    if type(img).__module__.startswith("PIL."):
        if img.mode not in ("L", "RGB", "RGBA"):
            img = img.convert("RGBA")
        data: Any = np.array(img)
    elif isinstance(img, torch.Tensor):
        data = img.detach().clone()
    else:
        try:
            data = np.array(img)
        except Exception as error:
            raise RecorderError(
                f"Recorder.image({tag!r}) got {_describe(img)}; allowed are PIL images, "
                "NumPy arrays and tensors."
            ) from error
    kind = _dtype_kind(data)
    if kind not in ("uint8", "float"):
        raise RecorderError(
            f"Recorder.image({tag!r}) got an image of dtype {data.dtype}; allowed are uint8 "
            "(0 to 255) and floating point (0 to 1)."
        )
    shape = tuple(data.shape)
    layout = layout or _infer_layout(shape, prefer_chw=isinstance(data, torch.Tensor))
    channels = 1 if layout == "HW" else shape[0] if layout == "CHW" else shape[-1]
    if layout is None or len(shape) != len(layout) or channels not in _CHANNELS:
        raise RecorderError(
            f"Recorder.image({tag!r}) got an image of shape {shape}"
            + (f" with layout={layout!r}" if layout else "")
            + "; allowed are HW, HWC or CHW images with 1, 3 or 4 channels. Pass layout= "
            "when the shape is ambiguous."
        )
    return data, layout


def figure(tag: str, fig: Any) -> Any:
    """Check ``fig`` and take it out of pyplot, so it is freed once it has been rendered."""
    check_tag("figure", tag)
    if not type(fig).__module__.startswith("matplotlib") or not hasattr(fig, "savefig"):
        raise RecorderError(
            f"Recorder.figure({tag!r}) got {_describe(fig)}; allowed is a matplotlib "
            "Figure. Use image() for pixel data."
        )
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:
        pyplot.close(fig)
    return fig


def array(method: str, tag: str, value: Any) -> Any:
    """A private copy of ``value`` as a tensor or NumPy array of numbers."""
    check_tag(method, tag)
    if isinstance(value, torch.Tensor):
        data = value.detach().clone()
    else:
        try:
            data = np.array(value)
        except Exception as error:
            raise RecorderError(
                f"Recorder.{method}({tag!r}) got {_describe(value)}; allowed are tensors, "
                "NumPy arrays and (nested) sequences of numbers."
            ) from error
    if _dtype_kind(data) not in ("uint8", "float", "int", "bool"):
        raise RecorderError(
            f"Recorder.{method}({tag!r}) got values of dtype {data.dtype}; allowed are "
            "numbers (integers, floats or booleans)."
        )
    size = data.numel() if isinstance(data, torch.Tensor) else data.size
    if method == "histogram" and size == 0:
        raise RecorderError(f"Recorder.histogram({tag!r}) got no values; give at least one.")
    return data


def param_value(value: Any) -> Union[bool, int, float, str, None]:
    """A hyperparameter as backends receive it: bool, number, string or None."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    return str(value)


def _dtype_kind(data: Any) -> str:
    if isinstance(data, torch.Tensor):
        if data.dtype == torch.uint8:
            return "uint8"
        if data.is_floating_point():
            return "float"
        if data.dtype == torch.bool:
            return "bool"
        return "other" if data.is_complex() else "int"
    kind = data.dtype.kind
    if data.dtype == np.uint8:
        return "uint8"
    return {"f": "float", "i": "int", "u": "int", "b": "bool"}.get(kind, "other")


def _infer_layout(shape: tuple, prefer_chw: bool) -> Optional[str]:
    if len(shape) == 2:
        return "HW"
    if len(shape) != 3:
        return None
    chw, hwc = shape[0] in _CHANNELS, shape[-1] in _CHANNELS
    if chw and (prefer_chw or not hwc):
        return "CHW"
    return "HWC" if hwc else None


def _describe(value: Any) -> str:
    text = repr(value)
    text = text if len(text) <= 40 else text[:37] + "..."
    return f"a {type(value).__name__} ({text})"


# -- on the writer thread --------------------------------------------------------------


def scalar_number(value: Any) -> float:
    """The number in one recorded accelerator scalar (waits for the device, off-thread)."""
    return scalar_numbers([value])[0]


def scalar_numbers(values: list) -> list:
    """``values`` with every recorded tensor replaced by its number.

    Recorded accelerator scalars wait here in the thousands when the writer falls behind;
    reading each with ``item()`` would cost a synchronisation apiece, so the ones of a
    device, dtype and stream are stacked and read with one copy.
    """
    numbers = list(values)
    groups: dict = {}
    for index, value in enumerate(values):
        stream = None
        if value.__class__ is tuple:
            value, stream = value
        elif not isinstance(value, torch.Tensor):
            continue
        groups.setdefault((value.device, value.dtype, stream), []).append((index, value))
    for (_, _, stream), members in groups.items():
        on_stream = torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()
        with on_stream:
            read = torch.stack([tensor.reshape(()) for _, tensor in members]).tolist()
        for (index, _), number in zip(members, read):
            numbers[index] = number
    return numbers


def image_pixels(source: Tuple[Any, str]) -> RecordedImage:
    data, layout = source
    pixels = to_numpy(data)
    if layout == "HW":
        pixels = pixels[:, :, None]
    elif layout == "CHW":
        pixels = pixels.transpose(1, 2, 0)
    if pixels.dtype != np.uint8:
        pixels = np.rint(np.clip(pixels.astype(np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)
    return RecordedImage(np.ascontiguousarray(pixels))


def render_figure(fig: Any) -> RecordedImage:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return RecordedImage(np.array(canvas.buffer_rgba()))


def histogram_values(source: Tuple[Any, int]) -> Tuple[np.ndarray, int]:
    data, bins = source
    values = np.asarray(to_numpy(data), dtype=np.float64).ravel()
    return values[np.isfinite(values)], bins


def array_values(data: Any) -> np.ndarray:
    return to_numpy(data)
