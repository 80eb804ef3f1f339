"""The Recorder: the training thread's side of recording."""
import operator
import time
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Union

import torch

from .. import _session
from ..distributed import is_master
from ..errors import RecorderError
from . import _lifetime, _resume, _values
from ._arrays import ArrayTags
from ._backend import RecorderBackend
from ._choice import chosen_backends
from ._handover import _Handover
from ._writer import ARRAY, FIGURE, HISTOGRAM, IMAGE, PARAMS, RESUME, SCALAR, STEP, TEXT

__all__ = ["Recorder"]

_now = time.time
_Tensor = torch.Tensor
_REAL = (float, int)


class Recorder(_Handover):
    """Records scalars, images, figures, histograms, text and hyperparameters of a run.

    Every value is recorded at the current :attr:`count`, which :meth:`step` advances, and
    with the wall-clock time of the call. The recording methods only check the value and
    append it to a queue; one background thread per recorder converts the values and writes
    them to the enabled backends, in the order they were recorded. See :doc:`recording` for
    the threading model, durability and resuming.

    Args:
        output_dir: Where the files go. Defaults to the running experiment's output
            directory; required outside an experiment unless only the console and custom
            backends are used.
        tensorboard: Write TensorBoard event files into ``output_dir``.
        file: Write ``scalars.csv``, ``text.csv`` and PNG files under ``images/``.
        console: Print each step's scalars when :meth:`step` is called.
        hdf5: Write scalars and arrays to ``recordings.h5``.
        backends: Further backends, instances of :class:`RecorderBackend` subclasses.
        max_pending: How many recorded values may wait for the writer. A call that finds
            the queue full blocks until the writer has worked it down to half; no value is
            ever dropped.
        flush_secs: How often the writer flushes files to disk while values keep
            arriving; a kill loses at most this many seconds of recordings.

    Raises:
        RecorderError: No output directory is known, an argument has a wrong type, or
            another open recorder of this process writes files into ``output_dir``.

    Example:
        >>> recorder = pystematic.torch.Recorder()
        >>> for batch in loader:
        ...     loss = train_step(batch)
        ...     recorder.scalar("train/loss", loss)
        ...     recorder.step()
    """

    def __init__(
        self,
        output_dir: Union[str, Path, None] = None,
        tensorboard: bool = True,
        file: bool = True,
        console: bool = False,
        hdf5: bool = False,
        *,
        backends: Sequence[RecorderBackend] = (),
        max_pending: int = 100_000,
        flush_secs: float = 5.0,
    ) -> None:
        chosen = chosen_backends(tensorboard, file, console, hdf5, backends, max_pending)
        writes_files = tensorboard or file or hdf5
        self.output_dir = _lifetime.resolve_output_dir(output_dir, writes_files)
        self._claimed_dir = _lifetime.claim_directory(self.output_dir, writes_files)
        self._count = 0
        self._closed = False
        self._arrays = ArrayTags()
        # The hand-over's state (_Handover), which scalar() and step() read directly.
        self._start_writer(chosen, self.output_dir, max_pending, flush_secs, not is_master())
        _lifetime.register(self)
        _session.register_durable(self)

    # -- the counter ---------------------------------------------------------------------

    @property
    def count(self) -> int:
        """The step at which values are recorded now; settable, for example to an epoch."""
        return self._count

    @count.setter
    def count(self, value: int) -> None:
        try:
            count = operator.index(value)
        except TypeError:
            count = -1
        if count < 0:
            raise RecorderError(f"Recorder.count must be an int >= 0, not {value!r}.")
        self._count = count

    def step(self) -> None:
        """Advance :attr:`count` by one; the console backend prints the finished step.

        Raises:
            RecorderError: The recorder is closed, or a backend failed since the last call.
        """
        self._count += 1
        if (self._accepting or self._reopen()) and self._wants_steps:
            self._put(STEP, None, None, self._count - 1)
            self._writer.wake()  # a step's line is printed now, not at the next poll

    # -- recording -----------------------------------------------------------------------

    def scalar(self, tag: str, value: Any, reduce: Optional[str] = None) -> None:
        """Record one number.

        Args:
            tag: Its name, for example ``"train/loss"``; ``/`` groups tags in TensorBoard.
            value: A Python or NumPy number, or a tensor with one element on any device.
                A CUDA tensor is not read on this thread, so recording it does not wait
                for the GPU.
            reduce: ``"mean"``, ``"sum"``, ``"max"`` or ``"min"`` to combine the values of
                all ranks first. This is a collective operation: every rank must make the
                same call, in the same order, or the ranks wait for each other forever.
                Without a process group it records the value itself.

        Raises:
            RecorderError: ``value`` is not a one-element number (the message names the
                tag), ``reduce`` is unknown, the recorder is closed, or a backend failed
                since the last call.
        """
        if reduce is not None:
            value = self._reduced(tag, value, reduce)
        elif tag.__class__ is not str or not tag:
            value = _values.scalar(tag, value)
        elif value.__class__ is _Tensor and value.is_cpu:
            # A CPU loss, the common case: read here, as few tensor queries as possible.
            # Anything item() cannot make a real number of gets its error from _values.
            try:
                number = value.item()
            except RuntimeError:
                number = None
            value = number if number.__class__ in _REAL else _values.scalar(tag, value)
        elif value.__class__ is not float and value.__class__ is not int:
            value = _values.scalar(tag, value)
        if self._accepting or self._reopen():
            items = self._items
            items.append((SCALAR, tag, value, self._count, _now()))
            pending = len(items)
            if pending >= self._wake_at:
                self._backlog(pending)

    def scalars(self, values: Mapping[str, Any], reduce: Optional[str] = None) -> None:
        """Record several numbers at the current count; see :meth:`scalar`.

        Args:
            values: A mapping from tag to value.
            reduce: As in :meth:`scalar`; one collective per value, in the mapping's order.

        Raises:
            RecorderError: As :meth:`scalar`, for the first value that cannot be recorded.
        """
        for tag, value in values.items():
            self.scalar(tag, value, reduce)

    def image(self, tag: str, img: Any, layout: Optional[str] = None) -> None:
        """Record an image.

        Args:
            tag: Its name.
            img: A PIL image, NumPy array or tensor of shape HW, HWC or CHW with 1, 3 or 4
                channels; ``uint8`` from 0 to 255 or floating point from 0 to 1 (values
                outside are clipped). The data is copied, so the caller may reuse it.
            layout: ``"HW"``, ``"HWC"`` or ``"CHW"``. Inferred when None: tensors are
                taken as CHW and arrays as HWC when both would fit.

        Raises:
            RecorderError: The shape or dtype is not an image, naming the tag.
            RecorderError: The recorder is closed, or a backend failed since the last call.
        """
        self._put(IMAGE, tag, _values.image(tag, img, layout))

    def figure(self, tag: str, figure: Any) -> None:
        """Record a matplotlib figure as an image, rendered on the writer thread.

        The figure is closed (taken out of pyplot) at once and freed after rendering, so
        recording a new figure every epoch does not accumulate memory. Do not change the
        figure after handing it over.

        Args:
            tag: Its name.
            figure: A ``matplotlib.figure.Figure``.

        Raises:
            RecorderError: ``figure`` is not a matplotlib figure.
            RecorderError: The recorder is closed, or a backend failed since the last call.
        """
        self._put(FIGURE, tag, _values.figure(tag, figure))

    def histogram(self, tag: str, values: Any, bins: int = 30) -> None:
        """Record the distribution of ``values`` (any shape; NaN and infinities are left out).

        Args:
            tag: Its name.
            values: A tensor, NumPy array or sequence of numbers; copied at the call.
            bins: The number of equal-width buckets between the smallest and largest value.

        Raises:
            RecorderError: ``bins`` is not a positive int, or ``values`` are not numbers.
            RecorderError: The recorder is closed, or a backend failed since the last call.
        """
        if not isinstance(bins, int) or bins < 1:
            raise RecorderError(f"Recorder.histogram({tag!r}) got bins={bins!r}; give an int >= 1.")
        self._put(HISTOGRAM, tag, (_values.array("histogram", tag, values), bins))

    def text(self, tag: str, text: str) -> None:
        """Record a string (shown by TensorBoard's Text tab as Markdown).

        Args:
            tag: Its name.
            text: The string.

        Raises:
            RecorderError: ``text`` is not a str.
            RecorderError: The recorder is closed, or a backend failed since the last call.
        """
        _values.check_tag("text", tag)
        if not isinstance(text, str):
            raise RecorderError(
                f"Recorder.text({tag!r}) got a {type(text).__name__}; give a str, e.g. str(x)."
            )
        self._put(TEXT, tag, text)

    def params(
        self, params: Mapping[str, Any], metrics: Optional[Mapping[str, Any]] = None
    ) -> None:
        """Record the run's hyperparameters, shown in TensorBoard's HParams tab for this run.

        Call it once, at the start of the run (a later call is recorded too, but
        TensorBoard shows the first). The HParams tab then lists the parameters that differ
        between runs first, offers every scalar of the run as a metric column, and shows
        the run's status and end time once the recorder is closed. The framework's own
        parameters (``output_dir``, ``random_seed``, ``cuda``...) are recorded under
        ``~pystematic.<name>``, after the user's own; see :doc:`recording`.

        Args:
            params: Names and values, for example ``pystematic.params``. Booleans, numbers,
                strings and None are kept (None shows as an empty cell); other values
                (lists, paths) are recorded as their ``str()``.
            metrics: Tags and values of results known now; they are recorded as scalars
                at the current count (every scalar is offered as a metric anyway).

        Raises:
            RecorderError: ``params`` is not a mapping, or a metric is not a number.
            RecorderError: The recorder is closed, or a backend failed since the last call.

        Example:
            >>> recorder.params(pystematic.params, metrics={"val/accuracy": 0.93})
        """
        if not isinstance(params, Mapping):
            raise RecorderError(f"Recorder.params() got {type(params).__name__}; give a dict.")
        kept = {str(name): _values.param_value(value) for name, value in params.items()}
        metric_values = {tag: _values.scalar(tag, v) for tag, v in dict(metrics or {}).items()}
        self._put(PARAMS, None, (kept, list(metric_values)))
        for tag, value in metric_values.items():
            self.scalar(tag, value)

    def array(self, tag: str, array: Any) -> None:
        """Record an array for backends that store arrays (HDF5, custom ones).

        Every array of a tag must have the same shape; they are stacked along a new first
        axis. With no such backend enabled the call logs a warning once per tag.

        Args:
            tag: Its name.
            array: A NumPy array, tensor or nested sequence of numbers; copied at the call.

        Raises:
            RecorderError: The shape differs from the tag's earlier arrays.
            RecorderError: The recorder is closed, or a backend failed since the last call.
        """
        data = _values.array("array", tag, array)
        self._arrays.check(tag, tuple(data.shape), not self._stores_arrays and not self._silent)
        self._put(ARRAY, tag, data)

    # -- lifetime ------------------------------------------------------------------------

    def flush(self) -> None:
        """Return once everything recorded so far is written to the files and on disk.

        "On disk" means flushed and synced (``fsync``), so neither a kill nor a crash of
        the machine loses it. ``save_checkpoint`` calls this for every open recorder
        before it writes the checkpoint. A no-op after :meth:`close`.

        Raises:
            RecorderError: A backend failed since the last call.
        """
        if self._writer is not None and not self._closed:
            self._writer.flush()
        self._raise_failures()

    def close(self) -> None:
        """Write everything recorded so far, end the run's session, close the files.

        Called by the plugin when the experiment ends, also when it raised; the session's
        status in TensorBoard's HParams tab is how the experiment ended (see
        :doc:`recording`). Closed directly, outside that, the status is a success; leaving
        a ``with Recorder(...)`` block by an exception makes it a failure. Calling it again
        does nothing; recording after it raises :class:`~pystematic_torch.RecorderError`.

        Raises:
            RecorderError: A backend failed since the last call.
        """
        ending = _session.outcome() if _session.current_params() is not None else None
        self._close(ending or _lifetime.outcome_at_exit())

    def _close(self, outcome: str) -> None:
        if self._closed:
            return
        self._closed = True
        self._accepting = False
        _lifetime.unregister(self)
        _session.unregister_durable(self)
        if self._writer is not None:
            self._writer.stop(outcome)
        self._raise_failures()

    def setup_distributed(self) -> None:
        """Silence this recorder on ranks other than 0; called by ``Context.ddp()``.

        Values queued on such a rank are discarded. Calls keep working there (a
        ``reduce=`` call still takes part in its collective) but record nothing.
        """
        if self._silent or is_master():
            return
        self._silent = True
        self._accepting = False
        if self._writer is not None and not self._closed:
            self._writer.discard()

    def __enter__(self) -> "Recorder":
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is None:
            self.close()
        else:
            self._close(_session.INTERRUPTED if issubclass(kind, KeyboardInterrupt)
                        else _session.FAILURE)  # fmt: skip

    # -- checkpoints ---------------------------------------------------------------------

    def state_dict(self) -> Dict[str, Any]:
        """The recorder's state for a checkpoint: its count, and what was recorded at it.

        Besides ``count`` it holds how many values of each kind and tag had been recorded
        at the count when this was called, and the output directory, so a run resumed
        from the checkpoint keeps exactly the values recorded before it and no others
        (see :doc:`recording`). Waits for the writer to reach the values recorded so far.
        The state is plain data: checkpoints load with ``torch.load(weights_only=True)``.

        Raises:
            RecorderError: A backend failed since the last call.
        """
        recorded = None
        if self._writer is not None and not self._closed:
            recorded = self._writer.capture(self._count)
            self._raise_failures()
        return _resume.capture(self._count, recorded, self.output_dir)

    #: Loading trims the files to the checkpoint, which no roll-back can undo: a Context
    #: loads a recorder after every other item, once nothing else can fail.
    irreversible_load = True

    def check_state_dict(self, state: Mapping[str, Any]) -> None:
        """Raise if ``state`` cannot be loaded, changing nothing (``Context`` asks first).

        Raises:
            StateDictError: ``state`` is not a state from :meth:`state_dict`.
        """
        _resume.resume_point(state)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue counting from a checkpoint's count, with the history it recorded.

        Backends that append to existing files (CSV, HDF5, TensorBoard) drop what they
        hold beyond the checkpoint: values at later counts, and values at its count that
        were recorded after it was taken. When the recorder writes into another directory
        than the checkpointed run did, and that directory holds no recordings yet, they
        copy the run's history from there first, so either way the resumed run's files
        hold every value exactly once.

        Raises:
            StateDictError: ``state`` is not a state from :meth:`state_dict`.
        """
        point = _resume.resume_point(state)
        self._count = point.step
        if not self._closed and not self._silent:
            # Also without a backend that trims: the writer's tally of the values at this
            # count starts from the loaded one, which the next checkpoint carries on.
            self._put(RESUME, None, point, point.step)
