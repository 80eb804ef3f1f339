"""Where the ranks of a job meet: one key-value store, reached before the process group exists.

Rank 0 hosts the store (torchrun's agent hosts its own, which we join as a client). The
store carries what every rank must know before the process group forms: rank 0's run
directory and random seed, who has joined, and whether any rank has failed, so a rank that
dies during start-up ends the job in seconds instead of after the rendezvous timeout. The
process group is then built on the same store, so there is one port and one server.

Rank 0 binds the port itself (port 0 lets the system choose) and listens only on the
address the others were told to reach: loopback for a run on one machine, ``master_addr``'s
interface across machines. No port is probed and released, so no other process can take it
in between.
"""
import datetime
import json
import logging
import socket
import time
from typing import Callable, List, Optional, Tuple

import torch.distributed as dist

from ..errors import LaunchError
from ._launch import RankInfo

logger = logging.getLogger("pystematic.torch.launch")

_POLL_SECONDS = 0.05
# Keys under this prefix outlive a torchrun restart; everything else is per attempt, so an
# attempt never reads the addresses or the failure of the one before.
_LASTING = "pystematic_torch/"
_FAILED = "failed"
_SEEN = "failure-seen/"
_JOB = f"{_LASTING}job"
_RUN = "run"


class Rendezvous:
    """The job's store, as seen by one rank."""

    def __init__(self, store: "dist.Store", info: RankInfo, port: int) -> None:
        self.base = store
        self.info = info
        self.port = port
        self.store = dist.PrefixStore(f"{_LASTING}attempt-{info.restart}/", store)

    @classmethod
    def host(cls, info: RankInfo, timeout: float) -> "Rendezvous":
        """Start the store on rank 0, listening where the other ranks will look for it.

        Raises:
            LaunchError: the port is taken, or ``master_addr`` is not an address of this
                machine.
        """
        listener = _listen(info.master_addr, info.master_port, info.machines)
        port = listener.getsockname()[1]
        store = dist.TCPStore(
            info.master_addr, port, None, True, datetime.timedelta(seconds=timeout),
            wait_for_workers=False, master_listen_fd=listener.detach(),
        )  # fmt: skip
        if info.job is not None:
            store.set(_JOB, info.job)
        logger.debug("Rendezvous store listening on %s:%d.", info.master_addr, port)
        return cls(store, info, port)

    @classmethod
    def connect(cls, info: RankInfo, timeout: float) -> "Rendezvous":
        """Join the store that rank 0 (or torchrun's agent) hosts.

        Raises:
            LaunchError: nothing answered at ``master_addr:master_port`` within ``timeout``.
        """
        try:
            store = dist.TCPStore(
                info.master_addr, info.master_port, None, False,
                datetime.timedelta(seconds=timeout),
            )  # fmt: skip
        except (RuntimeError, OSError) as error:
            raise LaunchError(
                f"Rank {info.rank} could not reach rank 0 at {info.master_addr}:"
                f"{info.master_port} within {timeout:.0f} s ({_first_line(error)}); check "
                "--master_addr and --master_port, and that rank 0 has started."
            ) from None
        if info.job is not None:
            _check_same_job(store, info, timeout)
        return cls(store, info, info.master_port)

    # -- what rank 0 tells the others before the process group exists --------------------

    def publish_run(self, run_dir: str, seed: int, resumed: Optional[str]) -> None:
        record = json.dumps({"dir": run_dir, "seed": seed, "resumed": resumed})
        self.store.set(_RUN, record)
        self.base.compare_set(f"{_LASTING}first-run", "", record)

    def first_run(self) -> Optional[dict]:
        """The run a previous torchrun attempt of this job used, if any."""
        key = f"{_LASTING}first-run"
        if not self.base.check([key]):
            return None
        return json.loads(self.base.get(key))

    def wait_for_run(self, timeout: float, watch: Callable[[], None]) -> dict:
        """Rank 0's run directory, seed and resume source, once it has published them.

        Raises:
            LaunchError: rank 0 reported a failure, ``watch`` raised, or nothing came
                within ``timeout`` seconds.
        """
        self._wait_for([_RUN], timeout, watch, "publish its run directory")
        return json.loads(self.store.get(_RUN))

    # -- joining ---------------------------------------------------------------------------

    def join(self, timeout: float, watch: Callable[[], None]) -> None:
        """Wait until every rank has arrived; fail fast if one fails first.

        Raises:
            LaunchError: a rank reported a failure, ``watch`` raised (e.g. a started rank
                died), or not every rank arrived within ``timeout`` seconds.
        """
        info = self.info
        self.store.set(f"joined/{info.rank}", f"{socket.gethostname()}")
        keys = [f"joined/{rank}" for rank in range(info.world_size)]
        self._wait_for(keys, timeout, watch, "join")

    def init_process_group(self, backend: str, timeout: float, device=None) -> None:
        options = {"device_id": device} if device is not None and backend == "nccl" else {}
        dist.init_process_group(
            backend,
            store=dist.PrefixStore("process-group/", self.store),
            rank=self.info.rank,
            world_size=self.info.world_size,
            timeout=datetime.timedelta(seconds=timeout),
            **options,
        )

    # -- failures --------------------------------------------------------------------------

    def report_failure(self, reason: str) -> Tuple[bool, str]:
        """Announce that this job has failed; returns (whether this report came first, the
        reason that stands). Best effort: rank 0's store may already be gone."""
        try:
            standing = self.store.compare_set(_FAILED, "", reason)
        except Exception:  # noqa: BLE001 - the store went away with rank 0
            return False, "lost contact with rank 0"
        standing = standing.decode(errors="replace") if isinstance(standing, bytes) else standing
        return standing == reason, standing

    def wait_until_seen(self, ranks: List[int], seconds: float) -> None:
        """On rank 0, after :meth:`report_failure` before the run started: keep the store up
        until every other rank has read the failure, or ``seconds`` have passed.

        Leaving at once would take the store along before ranks still starting could
        connect to it: they would wait for it until ``--distributed_timeout``.
        """
        keys = [f"{_SEEN}{rank}" for rank in ranks]
        deadline = time.monotonic() + seconds
        try:
            while not self.store.check(keys) and time.monotonic() < deadline:
                time.sleep(_POLL_SECONDS)
        except KeyboardInterrupt:
            pass  # Ctrl-C: stop waiting, the launch error still ends the process
        except Exception:  # noqa: BLE001 - best effort: the failure is reported already
            pass

    def _check(self, keys, what: str) -> bool:
        try:
            return self.store.check(keys)
        except Exception as error:  # noqa: BLE001 - rank 0, which hosts the store, is gone
            raise LaunchError(
                f"Rank {self.info.rank} lost contact with rank 0 while it waited to {what} "
                f"({_first_line(error)}); rank 0's own output says why it ended."
            ) from None

    def reported_failure(self) -> Optional[str]:
        try:
            if self.store.check([_FAILED]):
                return self.store.get(_FAILED).decode(errors="replace")
        except Exception:  # noqa: BLE001 - rank 0 and its store are gone: that is the failure
            return "lost contact with rank 0"
        return None

    def _wait_for(self, keys, timeout: float, watch: Callable[[], None], what: str) -> None:
        deadline = time.monotonic() + timeout
        while not self._check(keys, what):
            failure = self.reported_failure()
            if failure is not None:
                try:
                    self.store.set(f"{_SEEN}{self.info.rank}", "")  # rank 0 may leave now
                except Exception:  # noqa: BLE001 - rank 0 and its store are gone already
                    pass
                raise LaunchError(f"The job failed while rank {self.info.rank} waited to {what}: "
                                  f"{failure}.")  # fmt: skip
            watch()
            if time.monotonic() > deadline:
                missing = [key for key in keys if not self.store.check([key])]
                raise LaunchError(
                    f"Rank {self.info.rank} waited {timeout:.0f} s for the other ranks to "
                    f"{what} ({len(missing)} missing); check that every rank was started "
                    "with the same --nnodes, --nproc_per_node and --master_addr, or raise "
                    "--distributed_timeout."
                )
            time.sleep(_POLL_SECONDS)


def _check_same_job(store: "dist.Store", info: RankInfo, timeout: float) -> None:
    # Rank 0 names its job as soon as its store listens; a store that names no job within
    # a few seconds, or another one, is not this job's.
    deadline = time.monotonic() + min(timeout, 10.0)
    while not store.check([_JOB]) and time.monotonic() < deadline:
        time.sleep(_POLL_SECONDS)
    found = store.get(_JOB).decode(errors="replace") if store.check([_JOB]) else None
    if found != info.job:
        raise LaunchError(
            f"Rank {info.rank} of {info.job} reached a rendezvous at {info.master_addr}:"
            f"{info.master_port} that belongs to {found or 'another job'}: two jobs use this "
            "port on that machine. Pass --master_port with a port no other job there uses."
        )


def _listen(address: str, port: int, machines: int) -> socket.socket:
    try:
        family, _, _, _, sockaddr = socket.getaddrinfo(
            address, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as error:
        raise LaunchError(f"master_addr {address!r} cannot be resolved ({error}).") from None
    host = sockaddr[0]
    if machines > 1 and _is_loopback(host):
        # Other machines reach this one by a name that resolves here to a loopback address
        # (Debian's /etc/hosts does that): only all interfaces can serve them.
        host = "::" if family == socket.AF_INET6 else "0.0.0.0"
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as error:
        listener.close()
        if port:
            raise LaunchError(
                f"master_port {port} is already in use on this machine; "
                "pass --master_port with a free port, or --master_port 0 to pick one."
            ) from None
        raise LaunchError(
            f"master_addr {address!r} ({host}) is not an address of this machine, so rank 0 "
            f"cannot listen on it ({error.strerror}); pass this machine's own address."
        ) from None
    listener.listen(128)
    return listener


def _is_loopback(host: str) -> bool:
    return host.startswith("127.") or host == "::1"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
