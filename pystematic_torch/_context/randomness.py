"""Every rank's global random number generators, as part of a Context's state.

``ctx.state_dict()`` holds, under the reserved key ``"_random_state"``, the state of
Python's ``random``, NumPy's global ``RandomState``, torch's CPU generator and every CUDA
device's generator (once CUDA is in use) of every rank, in weights-only form::

    {"world_size": 2, "ranks_diverged": True, "ranks": [<rank 0's>, <rank 1's>]}

Rank 0 writes the checkpoint, so every rank's state must reach it. Rather than a collective
that every rank waits in, each other rank puts its state into the job's key-value store and
returns at once; only rank 0 waits, for at most :data:`WAIT_SECONDS`. Calling
``ctx.state_dict()`` on rank 0 alone (``if is_master(): save_checkpoint(ctx.state_dict())``)
is therefore a clear error after that wait, not a hang until the collective timeout. On
other ranks the state holds their own entry only (the others are None), which is all a
copy kept in memory and loaded back on the same rank needs.

Loading restores this rank's entry. A state saved by another number of processes cannot
continue every stream; every rank then restores rank 0's and, when the saved ranks had
their own streams, derives a fresh stream per rank from it, with a warning.
"""
import datetime
import io
import logging
import random
import time
from typing import Any, List, Mapping, Optional

import numpy
import torch
import torch.distributed as dist

from .. import _generators, _seeding, _session
from ..distributed import get_num_processes, get_rank
from ..errors import DistributedError

logger = logging.getLogger("pystematic.torch")

KEY = "_random_state"
#: How long rank 0 waits for the other ranks' states before it gives up.
WAIT_SECONDS = 120.0
#: When rank 0 says which ranks it is still waiting for.
WARN_AFTER_SECONDS = 15.0
_STORE_PREFIX = "pystematic_torch/random_state"
_CPU_GENERATORS = {
    "python": lambda: random._inst,
    "numpy": lambda: numpy.random.mtrand._rand,
    "torch": lambda: torch.default_generator,
}
_calls = 0


def capture(ranks_diverged: bool) -> dict:
    """This process's generator states, and on rank 0 every rank's (see the module doc).

    Raises:
        DistributedError: on rank 0, another rank did not hand over its state in time.
    """
    global _calls
    _calls += 1
    world, rank = get_num_processes(), get_rank()
    own = _own_state()
    ranks: List[Optional[dict]] = [None] * world
    ranks[rank] = own
    if world > 1:
        store = dist.distributed_c10d._get_default_store()
        if rank == 0:
            _collect(store, ranks)
        else:
            store.set(_key(_calls, rank), _to_bytes(own))
    return {"world_size": world, "ranks_diverged": ranks_diverged, "ranks": ranks}


def problems(saved: Any) -> List[str]:
    """Why ``saved`` cannot be restored in this process; changes nothing."""
    ranks = saved.get("ranks") if isinstance(saved, Mapping) else None
    if not isinstance(ranks, (list, tuple)) or not ranks:
        return [f"{KEY}: checkpoint has {_kind(saved)}, not a Context's random state"]
    rank = get_rank() if len(ranks) == get_num_processes() else 0
    own = ranks[rank]
    if own is None:
        return [
            f"{KEY}: the state holds no random state for rank {rank}: it is a copy of "
            "ctx.state_dict() taken on another rank; load the state that rank 0 saved"
        ]
    if not isinstance(own, Mapping):
        return [f"{KEY}.ranks[{rank}]: checkpoint has {_kind(own)}, not generator states"]
    found = []
    for name, generator in _CPU_GENERATORS.items():
        problem = _generators.problem(generator(), own.get(name))
        if problem:
            found.append(f"{KEY}.ranks[{rank}].{name}: {problem}")
    cuda = own.get("cuda")
    if not isinstance(cuda, (list, tuple)) or not all(
        isinstance(state, torch.Tensor) and state.dtype == torch.uint8 for state in cuda
    ):
        found.append(f"{KEY}.ranks[{rank}].cuda: checkpoint has {cuda!r}, not CUDA states")
    return found


def restore(saved: Mapping) -> bool:
    """Put this process's generators into their saved states (checked by :func:`problems`).

    Returns:
        Whether the ranks now draw from streams of their own, which ``ctx.ddp()`` must then
        not re-seed.
    """
    world, rank = get_num_processes(), get_rank()
    ranks, diverged = saved["ranks"], bool(saved.get("ranks_diverged"))
    if len(ranks) == world:
        _restore_own(ranks[rank])
        return diverged
    _restore_own(ranks[0])
    if not diverged:
        return False  # every saved rank held the same state as rank 0: nothing is lost
    logger.warning(
        "The checkpoint holds the random states of %d processes and this run has %d: every "
        "rank continues from rank 0's state with a fresh stream of its own, so the run does "
        "not repeat the one that wrote it. Resume with %d processes for an exact "
        "continuation.", len(ranks), world, len(ranks),
    )  # fmt: skip
    if world > 1:
        _seeding.diverge_ranks(rank)
    return True


def _own_state() -> dict:
    state = {name: _generators.capture(generator()) for name, generator in _CPU_GENERATORS.items()}
    # Asking a CUDA generator for its state would initialise CUDA on every visible device;
    # before CUDA is in use the generators hold the seeds queued for them, which the resumed
    # run queues the same way.
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    state["cuda"] = torch.cuda.get_rng_state_all() if cuda else []
    return state


def _restore_own(own: Mapping) -> None:
    for name, generator in _CPU_GENERATORS.items():
        _generators.restore(generator(), own[name])
    cuda = own["cuda"]
    if cuda and torch.cuda.is_available() and (_session.current_params() or {}).get("cuda", True):
        # Set now: a state queued until CUDA starts would run before the seeds queued by
        # seeding (torch runs those last), and lose to them.
        torch.cuda.init()
        count = torch.cuda.device_count()
        if count != len(cuda):
            logger.warning(
                "The checkpoint holds the random states of %d CUDA devices and this process "
                "sees %d: the first %d are restored.", len(cuda), count, min(count, len(cuda)),
            )  # fmt: skip
        for index, state in enumerate(cuda[:count]):
            torch.cuda.set_rng_state(state, index)


def _collect(store: Any, ranks: List[Optional[dict]]) -> None:
    keys = {rank: _key(_calls, rank) for rank in range(1, len(ranks))}
    waited_for = _wait_for_keys(store, keys)
    for rank, key in keys.items():
        ranks[rank] = torch.load(io.BytesIO(store.get(key)), weights_only=True)
        store.delete_key(key)
    if waited_for > WARN_AFTER_SECONDS:
        logger.info("ctx.state_dict() on rank 0 waited %.0f s for the other ranks.", waited_for)


def _wait_for_keys(store: Any, keys: dict) -> float:
    """Wait until every key exists; short waits, so that a failure elsewhere can surface."""
    started = time.monotonic()
    limit = _wait_limit()
    warned = False
    while True:
        missing = [rank for rank, key in keys.items() if not store.check([key])]
        if not missing:
            return time.monotonic() - started
        waited = time.monotonic() - started
        if waited >= limit:
            raise DistributedError(
                f"ctx.state_dict() on rank 0 waited {waited:.0f} s for the random number "
                f"generator states of rank(s) {_listed(missing)}, which did not call it. In a "
                "distributed run every rank calls ctx.state_dict() (and save_checkpoint) at "
                "the same point; only rank 0 writes the file. Call it on every rank, not "
                "under `if is_master():`."
            )
        if not warned and waited >= WARN_AFTER_SECONDS:
            warned = True
            logger.warning(
                "ctx.state_dict() on rank 0 is waiting for rank(s) %s to call it too: every "
                "rank must call ctx.state_dict(); giving up after %.0f s.",
                _listed(missing), limit,
            )  # fmt: skip
        try:
            pause = datetime.timedelta(seconds=max(0.01, min(1.0, limit - waited)))
            store.wait([keys[missing[0]]], pause)
        except Exception:  # noqa: BLE001 - a wait that timed out: look again
            pass


def _wait_limit() -> float:
    params = _session.current_params() or {}
    timeout = params.get("distributed_timeout")
    return min(WAIT_SECONDS, float(timeout)) if timeout else WAIT_SECONDS


def _key(call: int, rank: int) -> str:
    return f"{_STORE_PREFIX}/{call}/{rank}"


def _to_bytes(state: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def _listed(ranks: List[int]) -> str:
    return ", ".join(map(str, ranks))


def _kind(value: Any) -> str:
    if isinstance(value, (list, tuple)) and not value:
        return "an empty list"
    return type(value).__name__
