"""Breaking the collectives of a failed rank that must stay alive for a while.

A rank that failed and started other ranks waits for them to flush before it exits. Its
peers may meanwhile be blocked in a collective with it (a gradient all-reduce in
``backward``) that only ends when its connections close, and gloo keeps them open while any
object (a DDP model in the failed frames) still holds the process group; aborting or
destroying the group does not close them. Shutting the sockets down does: each peer's
collective then fails with "Connection closed by peer" and the peer unwinds and flushes.

Linux only (``/proc``); elsewhere nothing is done and the peers fall back on their grace
period.
"""
import logging
import os
import socket
from typing import Dict, Iterator, Set, Tuple

logger = logging.getLogger("pystematic.torch.launch")

_ESTABLISHED = "01"


def shut_down_peer_connections(store_port: int) -> int:
    """Shut down this process's established TCP connections, except the store's.

    Called on a failed rank just before it waits for the ranks it started: every other TCP
    connection of such a process belongs to the process group. Returns how many were shut.
    """
    try:
        inodes = _socket_inodes()
        connections = dict(_established_connections())
    except OSError:
        return 0
    shut = 0
    for inode, fd in inodes.items():
        ports = connections.get(inode)
        if ports is None or store_port in ports:
            continue
        try:
            with socket.socket(fileno=os.dup(fd)) as duplicate:
                duplicate.shutdown(socket.SHUT_RDWR)
            shut += 1
        except OSError:
            pass
    logger.debug("Shut down %d process-group connections.", shut)
    return shut


def _socket_inodes() -> Dict[str, int]:
    found = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if target.startswith("socket:["):
            found[target[len("socket:["):-1]] = int(name)
    return found


def _established_connections() -> Iterator[Tuple[str, Set[int]]]:
    """(socket inode, {local port, remote port}) for this process's established TCP sockets."""
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        try:
            with open(table) as lines:
                next(lines)
                for line in lines:
                    fields = line.split()
                    local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
                    if state == _ESTABLISHED:
                        yield inode, {int(local.rsplit(":", 1)[1], 16),
                                      int(remote.rsplit(":", 1)[1], 16)}  # fmt: skip
        except FileNotFoundError:
            continue
