"""Getting batches onto the device ahead of time.

Host-side work (gathering rows, pinning, launching the copy) runs in a background thread, so
it overlaps with the training step that uses the previous batch even when that step waits
for the GPU (``loss.item()``). Copies run on a side CUDA stream; the consumer's stream waits
for the copy's event instead of the host waiting for it.
"""
import contextlib
import queue
import threading
from typing import Any, Callable, ContextManager, Iterator, Optional

import torch

from ..devices import iter_tensors, map_tensors, move_to_device

_ITEM, _END, _ERROR = "item", "end", "error"


class BackgroundFeeder:
    """Iterate ``source`` in a thread, apply ``produce`` there, and ``consume`` on delivery.

    At most ``depth`` produced items wait in the queue. An error raised by the source or by
    ``produce`` is re-raised from ``__next__`` in the consuming thread. ``close()`` stops the
    thread early (the consumer broke out of its loop).
    """

    def __init__(
        self,
        source: Iterator[Any],
        produce: Callable[[Any], Any] = lambda item: item,
        consume: Callable[[Any], Any] = lambda item: item,
        depth: int = 2,
        thread_context: Optional[Callable[[], ContextManager]] = None,
    ) -> None:
        self._source: Optional[Iterator[Any]] = source
        self._produce = produce
        self._consume = consume
        self._thread_context = thread_context or contextlib.nullcontext
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._finished = False
        self._thread = threading.Thread(
            target=self._run, name="pystematic-torch-prefetch", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        try:
            with self._thread_context():
                for item in self._source:
                    if self._stop.is_set() or not self._put((_ITEM, self._produce(item))):
                        return
            self._put((_END, None))
        except BaseException as error:  # noqa: B036 - forwarded to the consumer as it is
            self._put((_ERROR, error))
        finally:
            self._source = None

    def _put(self, entry) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> "BackgroundFeeder":
        return self

    def __next__(self) -> Any:
        if self._finished:
            raise StopIteration
        while True:
            try:
                kind, value = self._queue.get(timeout=0.5)
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    self._finished = True
                    raise RuntimeError("the prefetch thread stopped without a result") from None
        if kind == _ITEM:
            return self._consume(value)
        self._finished = True
        self._thread.join()
        if kind == _ERROR:
            raise value
        raise StopIteration

    def close(self, timeout: float = 10.0) -> None:
        """Stop the thread and drop anything it had prepared."""
        self._finished = True
        self._stop.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)


def pin_tree(batch: Any) -> Any:
    """``batch`` with each CPU tensor in page-locked memory (pinned ones are kept as they are)."""
    return map_tensors(
        lambda t: t.pin_memory() if t.device.type == "cpu" and not t.is_pinned() else t, batch
    )


def cuda_feeder(source: Iterator[Any], device: torch.device, depth: int = 2) -> BackgroundFeeder:
    """Deliver ``source``'s batches on the CUDA ``device``, copied ahead on a side stream.

    In the thread: pin, then ``non_blocking`` copy on the side stream, then record an event.
    On delivery: the consumer's current stream waits for that event (no host sync), and each
    tensor is marked as used by that stream, because it was allocated on the side stream and
    the caching allocator would otherwise hand its memory back to the side stream while the
    consumer still reads it.
    """
    stream = torch.cuda.Stream(device=device)

    def thread_context() -> ContextManager:
        stack = contextlib.ExitStack()
        stack.enter_context(torch.cuda.device(device))
        stack.enter_context(torch.cuda.stream(stream))
        return stack

    def produce(batch: Any):
        moved = move_to_device(device, pin_tree(batch), non_blocking=True)
        ready = torch.cuda.Event()
        ready.record(stream)
        return moved, ready

    def consume(item):
        moved, ready = item
        current = torch.cuda.current_stream(device)
        current.wait_event(ready)
        for tensor in iter_tensors(moved):
            if tensor.device.type == "cuda":
                tensor.record_stream(current)
        return moved

    return BackgroundFeeder(source, produce, consume, depth, thread_context)
