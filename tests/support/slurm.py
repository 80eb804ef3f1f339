"""A real one-node SLURM cluster for the tests, from Debian's slurmctld, slurmd and munge.

``Cluster.start`` writes a ``slurm.conf`` for this host into a directory of its own, starts
munged (when no munge daemon answers), slurmctld and slurmd, and waits until the node is
idle; ``stop`` ends its slurmctld and slurmd. munged, the machine's one authentication
daemon, is left running: another copy of the suite may be using it. Every command the
tests run gets ``SLURM_CONF`` pointing at that file, so the cluster never touches a
system-wide configuration. The daemons need root (``SlurmUser=root``); without it, or
without the packages, the tests that need the cluster are skipped.
"""
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import time
from typing import Dict, List, Optional

_DAEMONS = ("slurmctld", "slurmd", "munged", "srun", "sbatch", "scancel", "sinfo")
_SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])


def missing() -> Optional[str]:
    """Why a cluster cannot be started here, or None."""
    absent = [name for name in _DAEMONS if shutil.which(name, path=_SEARCH_PATH) is None]
    if absent:
        return f"SLURM is not installed ({', '.join(absent)} missing): apt-get install " \
               "slurmctld slurmd munge"  # fmt: skip
    if os.geteuid() != 0:
        return "the test cluster's daemons run as root"
    if not os.path.exists("/etc/munge/munge.key"):
        return "munge has no key (/etc/munge/munge.key)"
    return None


def _ports(count: int) -> List[int]:
    # The daemons bind these themselves; they are asked for ports nothing listens on now.
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class Cluster:
    def __init__(self, directory: pathlib.Path) -> None:
        self.directory = directory
        self.host = socket.gethostname().split(".")[0]
        self.conf = directory / "slurm.conf"
        self.env: Dict[str, str] = {**os.environ, "SLURM_CONF": str(self.conf),
                                    "PATH": _SEARCH_PATH}  # fmt: skip

    def start(self) -> "Cluster":
        for name in ("state", "spool", "log"):
            (self.directory / name).mkdir(parents=True, exist_ok=True)
        controller_port, node_port = _ports(2)
        self.conf.write_text(_CONF.format(
            host=self.host, dir=self.directory, controller_port=controller_port,
            node_port=node_port, cpus=os.cpu_count() or 1, first_job_id=_first_job_id(),
        ))  # fmt: skip
        self._start_munge()
        for daemon in ("slurmctld", "slurmd"):
            subprocess.run([daemon], env=self.env, check=True, timeout=60)
        self._wait_until_idle()
        return self

    def stop(self) -> None:
        subprocess.run(["scancel", "--full", "--user", "root"], env=self.env, timeout=30,
                       capture_output=True)  # fmt: skip
        for pid_file in ("slurmd.pid", "slurmctld.pid"):
            self._kill_from(self.directory / pid_file)

    def run(self, args, timeout: float = 240, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(args, env=self.env, capture_output=True, text=True,
                              timeout=timeout, **kwargs)  # fmt: skip

    @staticmethod
    def _start_munge() -> None:
        # munged is the machine's one authentication daemon, shared by every cluster on it
        # (another copy of the suite may be using it right now), so it is started when
        # none answers and left running, like the system service it is; .ci/run stops it.
        if _munge_answers():
            return
        run_dir = pathlib.Path("/run/munge")
        run_dir.mkdir(parents=True, exist_ok=True)
        shutil.chown(run_dir, "munge", "munge")
        started = subprocess.run(["su", "-s", "/bin/sh", "munge", "-c", shutil.which(
            "munged", path=_SEARCH_PATH)], capture_output=True, text=True, timeout=30)  # fmt: skip
        deadline = time.monotonic() + 15
        while not _munge_answers():  # a copy started at the same time may have won
            if time.monotonic() > deadline:
                raise RuntimeError(f"munged did not start: {started.stderr.strip()}")
            time.sleep(0.2)

    def _wait_until_idle(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            result = self.run(["sinfo", "--noheader", "--format=%t"], timeout=30)
            state = result.stdout.strip()
            if state == "idle":
                return
            time.sleep(0.5)
        log = (self.directory / "log" / "slurmctld.log").read_text()[-2000:]
        raise RuntimeError(f"the test cluster's node is {state!r}, not idle:\n{log}")

    @staticmethod
    def _kill_from(pid_file: pathlib.Path) -> None:
        try:
            pid = int(pid_file.read_text().strip())
            os.kill(pid, signal.SIGTERM)
        except (OSError, ValueError):
            return
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except OSError:
                return
            time.sleep(0.1)


def _first_job_id() -> int:
    # The default rendezvous port under SLURM comes from the job id. A real cluster never
    # gives two jobs one id, but two copies of the suite run two clusters on this machine,
    # each counting from its FirstJobId: each starts its own block of ten ids.
    return 1 + (os.getpid() % 2000) * 10


def _munge_answers() -> bool:
    return subprocess.run(["munge", "-n"], capture_output=True).returncode == 0


_CONF = """\
ClusterName=pystematic-torch-tests
FirstJobId={first_job_id}
SlurmctldHost={host}
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SlurmUser=root
SlurmdUser=root
SlurmctldPort={controller_port}
SlurmdPort={node_port}
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.pid
SlurmctldLogFile={dir}/log/slurmctld.log
SlurmdLogFile={dir}/log/slurmd.log
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MpiDefault=none
KillWait=30
NodeName={host} CPUs={cpus} State=UNKNOWN
PartitionName=tests Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""
