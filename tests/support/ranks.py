"""Run a function on several ranks of a real gloo process group, with a hard time limit.

Test bodies are plain module-level functions ``body(rank, *args)``, so they can run under
this runner, under ``torchrun`` or under our own ``--distributed`` launch alike.
"""
import datetime
import multiprocessing
import os
import pickle
import queue
import socket
import sys
import traceback
from typing import Any, Callable, List, Sequence

import torch.distributed as dist


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_on_ranks(
    body: Callable[..., Any],
    args: Sequence[Any] = (),
    world_size: int = 2,
    timeout: float = 60.0,
) -> List[Any]:
    """Run ``body(rank, *args)`` on ``world_size`` gloo ranks and return each rank's result.

    Raises:
        AssertionError: a rank raised (its traceback is in the message), died, or the whole
            run took longer than ``timeout`` seconds (every rank is then killed).
    """
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    # The store is hosted here and binds a port the system chooses, so no other process can
    # take the port between choosing and using it (several test runs can share a machine).
    store = dist.TCPStore("127.0.0.1", 0, None, True, datetime.timedelta(seconds=timeout),
                          wait_for_workers=False)  # fmt: skip
    port = store.port
    processes = [
        context.Process(
            target=_rank_main,
            args=(rank, world_size, port, timeout, body, tuple(args), results),
            # Not daemonic, so a rank may start DataLoader workers; leftovers are killed below.
            daemon=False,
        )
        for rank in range(world_size)
    ]
    for process in processes:
        process.start()
    collected, failures = {}, []
    deadline = datetime.datetime.now() + datetime.timedelta(seconds=timeout)
    try:
        while len(collected) + len(failures) < world_size:
            remaining = (deadline - datetime.datetime.now()).total_seconds()
            if remaining <= 0:
                raise AssertionError(f"{body.__name__} did not finish within {timeout} s")
            try:
                rank, ok, payload = results.get(timeout=min(remaining, 1.0))
            except queue.Empty:
                dead = [p for p in processes if p.exitcode not in (None, 0)]
                if dead and results.empty():
                    raise AssertionError(
                        f"{body.__name__}: a rank died with exit code {dead[0].exitcode}"
                    ) from None
                continue
            if ok:
                collected[rank] = pickle.loads(payload)
            else:
                failures.append(f"rank {rank}:\n{payload}")
    finally:
        for process in processes:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
                process.join()
    if failures:
        raise AssertionError("\n".join(failures))
    return [collected[rank] for rank in range(world_size)]


def _rank_main(rank, world_size, port, timeout, body, args, results) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
    )
    try:
        store = dist.TCPStore("127.0.0.1", port, None, False, datetime.timedelta(seconds=timeout))
        dist.init_process_group(
            "gloo",
            store=store,
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(seconds=timeout),
        )
        try:
            # Plain pickled bytes: torch's queue reducers would pass tensors through shared
            # memory that disappears when this process exits.
            outcome = (rank, True, pickle.dumps(body(rank, *args)))
        finally:
            dist.destroy_process_group()
    except BaseException:
        outcome = (rank, False, traceback.format_exc())
    results.put(outcome)
    sys.stdout.flush()
