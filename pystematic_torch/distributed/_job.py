"""A distributed job's life in this process, in the order pystematic's hooks call it.

1. :func:`prepare`, before pystematic creates the run directory: who we are, the checks
   that need no directory (environment, GPUs, the port: rank 0 binds it here), and, on
   ranks other than 0, rank 0's run directory and seed, so that every rank writes into one
   directory and uses one seed.
2. :func:`start`, once the directory exists: rank 0 publishes it, our own launch starts the
   other local ranks, every rank waits for the others under supervision (a rank that dies
   during start-up ends the job at once), then the process group forms on the same store.
3. :func:`notify`, :func:`finish` and :func:`fail` at the end; see ``_supervise`` for how
   a failure on one rank ends the others after they have flushed.
"""
import dataclasses
import gc
import logging
import os
import pathlib
import sys
import traceback
from typing import Any, Dict, Optional, Tuple

from .. import _run_record, _rundir, _session
from ..errors import LaunchError
from . import _launch, _preemption, _ranks_file, get_num_processes, is_distributed
from ._closing import (
    LOST_PEER_SECONDS,
    all_ranks_arrive,
    how_started_ranks_ended,
    join_children,
)
from ._rendezvous import Rendezvous
from ._sockets import shut_down_peer_connections
from ._supervise import (
    JobFailed,
    Supervisor,
    become_group_leader,
    kill_own_workers,
    kill_ranks,
)

logger = logging.getLogger("pystematic.torch.launch")

_LOST_PEER_SIGNS = ("closed by peer", "reset by peer", "gloo/transport", "NCCL")


@dataclasses.dataclass
class _Job:
    info: _launch.RankInfo
    rendezvous: Rendezvous
    environ: Dict[str, str]
    backend: str
    device: Any
    timeout: float
    parent_pid: int
    children: Dict[int, Any] = dataclasses.field(default_factory=dict)
    supervisor: Optional[Supervisor] = None
    origin: bool = False
    #: Another rank failed while this one, its experiment ended well, was leaving the job.
    failed_at_close: bool = False
    #: ... and this rank learned of it before it closed its recordings and run.json, so
    #: those already say how the job ended.
    failure_recorded: bool = False


_job: Optional[_Job] = None


def prepare(params: dict) -> None:
    """Resolve this rank and meet rank 0 before the run directory exists.

    Raises:
        LaunchError: inconsistent environment, too few GPUs, a busy port, rank 0 not
            reachable, or rank 0 failing before it published its run directory.
    """
    global _job
    environ = dict(os.environ)
    started = params["subprocess"] is not None
    info = _launch.resolve_ranks(params, os.environ, started)
    device = _launch.check_gpus(info, params["nproc_per_node"], params["cuda"])
    timeout = params["distributed_timeout"]
    hosts = info.rank == 0 and info.source != "torchrun"
    rendezvous = Rendezvous.host(info, timeout) if hosts else Rendezvous.connect(info, timeout)
    if info.source == "local":
        params["master_port"] = rendezvous.port  # what the started ranks will connect to
    _job = _Job(info, rendezvous, environ, _launch.choose_backend(params["cuda"]), device,
                timeout, os.getppid())  # fmt: skip
    if info.rank == 0:
        earlier = rendezvous.first_run() if info.restart else None
        if earlier is not None:
            _rundir.continue_in(pathlib.Path(earlier["dir"]))
            params["random_seed"] = earlier["seed"]
    elif not started:
        run = rendezvous.wait_for_run(timeout, watch=lambda: None)
        _rundir.join_as_rank(params, pathlib.Path(run["dir"]), info.rank)
        params["random_seed"] = run["seed"]
        # Whatever --checkpoint said here, rank 0 resolved it (``latest`` included).
        params["checkpoint"] = None if run["resumed"] is None else pathlib.Path(run["resumed"])


def start(params: dict) -> None:
    """Start the other local ranks, wait for every rank, form the process group.

    Raises:
        LaunchError: a rank died or failed before every rank arrived, or they did not all
            arrive within ``--distributed_timeout``.
    """
    import pystematic

    job = _job
    info = job.info
    if info.rank == 0:
        resumed = params.get("checkpoint")
        job.rendezvous.publish_run(str(pystematic.output_dir), params["random_seed"],
                                   None if resumed is None else str(resumed))  # fmt: skip
    if info.started_by_launcher:
        become_group_leader()
    elif info.source == "local":
        _start_local_ranks(params, job)
    if info.restart:
        logger.info("torchrun restart %d: rank %d starts again.", info.restart, info.rank)
    elif info.source != "local":
        logger.info("Started by %s: rank %d of %d.", info.source, info.rank, info.world_size)
    try:
        job.rendezvous.join(job.timeout, watch=lambda: _watch_start(job))
        job.rendezvous.init_process_group(job.backend, job.timeout, job.device)
    except BaseException:
        kill_ranks(job.children.values())
        raise
    logger.debug("Rank %d of %d joined (%s).", info.rank, info.world_size, job.backend)
    # What torchrun would have set, for code that reads it; restored when the run ends.
    os.environ.update(RANK=str(info.rank), LOCAL_RANK=str(info.local_rank),
                      WORLD_SIZE=str(info.world_size), MASTER_ADDR=info.master_addr,
                      MASTER_PORT=str(job.rendezvous.port))  # fmt: skip
    job.supervisor = Supervisor(
        job.rendezvous, info.rank, children=dict(job.children),
        watch_parent=info.started_by_launcher, end_session=lambda: _session.end(_session.FAILURE),
        is_ending=_session.is_ending,
    )  # fmt: skip
    job.supervisor.start()
    _label_console(pystematic, info)
    _ranks_file.write(pystematic.output_dir, info, job.rendezvous.port)


def _start_local_ranks(params: dict, job: _Job) -> None:
    import pystematic

    for local_rank in range(1, params["nproc_per_node"]):
        child = dict(params)
        child.update(subprocess=str(pystematic.params_file), local_rank=job.info.rank + local_rank,
                     master_port=job.rendezvous.port)  # fmt: skip
        job.children[job.info.rank + local_rank] = (
            pystematic.current_experiment.run_in_new_process(child)
        )


def _watch_start(job: _Job) -> None:
    for rank, child in job.children.items():
        if child.exitcode is not None:
            job.rendezvous.report_failure(f"rank {rank} exited with code {child.exitcode}")
            raise LaunchError(
                f"Rank {rank} exited with code {child.exitcode} before every rank had joined "
                "the job; its error is printed above."
            )
    if job.info.started_by_launcher and os.getppid() != job.parent_pid:
        raise LaunchError("The process that started this rank is gone.")


def _label_console(pystematic, info: _launch.RankInfo) -> None:
    # pystematic labels a main process's lines with its rank once it has started others;
    # rank 0 of any distributed run gets the same label as the ranks beside it.
    if info.rank == 0 and info.world_size > 1:
        pystematic.subprocess_counter.__wrapped__ = max(1, int(pystematic.subprocess_counter))


# -- the end --------------------------------------------------------------------------------


def stand_back() -> None:
    """First thing in teardown: this rank's monitor no longer stops the main thread."""
    job = _job
    if job is not None and job.supervisor is not None:
        job.supervisor.main_thread_ending()


def notify(error: Optional[BaseException]) -> None:
    """At the start of teardown, after :func:`stand_back`: tell the other ranks at once if
    this rank failed."""
    job = _job
    if job is None or job.supervisor is None:
        return
    if error is None or isinstance(error, _preemption.Preempted):
        return
    if isinstance(error, JobFailed) and job.supervisor.failure is not None:
        return  # the monitor already knows why, and has said so
    code = 130 if isinstance(error, KeyboardInterrupt) else 1
    if _lost_a_peer(error) and job.supervisor.find_cause(LOST_PEER_SECONDS):
        return  # the echo of another rank's failure, which the monitor has now found
    reason = (f"rank {job.info.rank} was interrupted (SIGINT)" if code == 130
              else f"rank {job.info.rank} raised {type(error).__name__}: {error}")  # fmt: skip
    job.origin = job.supervisor.claim_failure(reason, code)


def _lost_a_peer(error: BaseException) -> bool:
    """Whether ``error`` is a collective broken by a peer that went away."""
    import torch.distributed as dist

    if isinstance(error, dist.DistError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and any(sign in text for sign in _LOST_PEER_SIGNS)


def echo_of(error: BaseException) -> Optional[str]:
    """The failure elsewhere that ``error`` only echoes (a broken collective, JobFailed)."""
    job = _job
    if job is None or job.origin or job.supervisor is None or job.supervisor.failure is None:
        return None
    return job.supervisor.failure[0]


def arrive_before_closing() -> Optional[Tuple[str, int]]:
    """On a rank whose experiment ended well (or was preempted): before its recordings are
    closed, flush them and wait until every rank's experiment has ended.

    So a rank learns of a peer failing at the end of the run before it writes how the run
    ended (the session's status in TensorBoard, ``run.json``). Flushed first, nothing this
    rank recorded is lost if it is killed while it waits.

    Returns:
        None when every rank arrived (or this is no distributed job), else the job's
        failure: (reason, exit code).
    """
    job = _job
    if job is None or job.supervisor is None:
        return None
    try:
        _session.make_durable()
    except KeyboardInterrupt:
        interrupted_while_closing()
        return job.supervisor.failure
    except Exception:  # noqa: BLE001 - closing the recorder raises the failure again
        logger.debug("Flushing before the closing barrier failed.", exc_info=True)
    if all_ranks_arrive(job.supervisor):
        return None
    job.failed_at_close = job.failure_recorded = True
    return job.supervisor.failure or ("another rank failed", 1)


def interrupted_while_closing() -> None:
    """Ctrl-C reached this rank while it ended its experiment: the job fails with it, and
    the other ranks, which may be waiting for this one at the end, learn of it."""
    job = _job
    if job is None or job.supervisor is None:
        return
    job.supervisor.learn_of_failure(f"rank {job.info.rank} was interrupted (SIGINT)", 130)
    job.failed_at_close = job.failure_recorded = True


def finish(error: Optional[BaseException]) -> Optional[str]:
    """After this rank's recordings are flushed: leave the job cleanly, or let it fail.

    A rank that ended well still fails here when another rank fails before every rank has
    arrived at the closing barrier: :func:`fail` then ends the process with that failure.

    Returns:
        On rank 0 of a job it started itself: which started rank failed while ending its
        run (a clean-up of its own that failed after the closing barrier), else None.
    """
    global _job
    job = _job
    if job is None:
        return None
    ended_well = error is None or isinstance(error, _preemption.Preempted)
    if job.supervisor is not None and ended_well and not job.failed_at_close:
        # Barrier, stop watching, barrier: no rank may leave (rank 0 takes the store with it)
        # while another is still polling the store.
        if all_ranks_arrive(job.supervisor):
            job.supervisor.stop()
            if all_ranks_arrive(job.supervisor):
                try:
                    stuck = join_children(job.children)
                finally:  # also on Ctrl-C while waiting, once the ranks are killed
                    _leave(job)
                    _job = None
                return how_started_ranks_ended(job.children, stuck, error)
        job.failed_at_close = True
    if job.supervisor is not None:
        # Ranks blocked in a collective with this one learn of the failure when its
        # connections close, and then unwind and flush like every other rank.
        if job.children:
            shut_down_peer_connections(job.rendezvous.port)
        job.supervisor.wait_for_children()
        if job.info.world_size > 1:
            return None  # fail() ends the process once pystematic has logged the error
    _leave(job)
    _job = None
    return None


def fail(error: Optional[BaseException]) -> None:
    """After pystematic's teardown: show the failure once and end this rank's process."""
    job = _job
    if job is None:
        return
    if not job.failed_at_close and (error is None or isinstance(error, _preemption.Preempted)):
        return
    supervisor = job.supervisor
    reason, code = supervisor.failure or ("", 1)
    if error is None or isinstance(error, (JobFailed, KeyboardInterrupt)) or not job.origin:
        if not supervisor.announced:
            sys.stderr.write(f"[rank {job.info.rank}] Stopping this rank: {reason}.\n")
    else:
        label = f"[rank {job.info.rank}]"
        text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        sys.stderr.write("".join(f"{label} {line}\n" for line in text.splitlines()))
    if job.failed_at_close and not job.failure_recorded and job.info.rank == 0:
        # run.json says how this rank's experiment ended; the job ended otherwise.
        _run_record.correct_the_ending(code)
    if error is not None:
        # The failed frames hold DataLoader iterators: freed, they stop their workers and
        # release their semaphores properly, instead of leaving that to the resource
        # tracker's warning.
        traceback.clear_frames(error.__traceback__)
        error.__traceback__ = None
    gc.collect()
    supervisor.stop()
    kill_ranks(job.children.values())
    kill_own_workers()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


# How long rank 0, failing before the run started, waits for the other ranks to read why.
_FAILURE_SEEN_SECONDS = 30.0


def abandon(error: Optional[BaseException] = None) -> None:
    """Undo :func:`prepare` after a launch error: the store, the environment.

    Rank 0 hosting the store first tells the other ranks why the job will not start, and
    waits (at most 30 s) until they have read it: each then ends with that reason instead of
    waiting for the store until ``--distributed_timeout``.
    """
    global _job
    job = _job
    if job is not None:
        waiting = _launch.ranks_started_elsewhere(job.info)
        # Not after Ctrl-C: the launcher interrupts every rank, and none would answer.
        if isinstance(error, Exception) and job.info.rank == 0 and waiting:
            reason = str(error).rstrip(".") or type(error).__name__
            job.rendezvous.report_failure(f"rank 0 could not start: {reason}")
            job.rendezvous.wait_until_seen(waiting, min(job.timeout, _FAILURE_SEEN_SECONDS))
        _restore_environment(job.environ)
    _job = None


def _leave(job: _Job) -> None:
    import torch.distributed as dist

    if job.supervisor is not None:
        job.supervisor.stop()
    if is_distributed():
        dist.destroy_process_group()
    _restore_environment(job.environ)


def _restore_environment(saved: Dict[str, str]) -> None:
    for name in set(os.environ) - set(saved):
        del os.environ[name]
    os.environ.update(saved)


def rank() -> int:
    """This process's global rank in the job being prepared or run; 0 outside one."""
    return _job.info.rank if _job is not None else 0


def world_size() -> int:
    return _job.info.world_size if _job is not None else get_num_processes()
