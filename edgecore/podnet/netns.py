"""Work from inside a pod's network namespace: a TCP connection (for probes), or any
call (`in_netns`, for the pod's addresses over rtnetlink).

A socket belongs to the network namespace it was created in, whatever thread uses it
later. So a worker thread enters the pod's namespace (`setns`, which affects only the
calling thread), creates the socket, and returns to the agent's namespace before it
does anything else; the connect itself runs on the event loop. Probes thereby reach
`127.0.0.1:port` of the pod, as a Kubernetes probe reaches the pod IP, and a server
bound to the pod's loopback only is probed as the workload expects.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import socket
import threading
from collections.abc import Callable
from typing import TypeVar

__all__ = ["connect_in_netns", "in_netns"]

T = TypeVar("T")

_CLONE_NEWNET = 0x40000000
_lock = threading.Lock()


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def in_netns(netns: str, fn: Callable[[], T]) -> T:
    """Call `fn` in this thread inside the namespace at path `netns`, then return the
    thread to its own namespace (also when `fn` raises). Blocking: call it from a worker
    thread (asyncio.to_thread), never from the event loop's."""
    with _lock:
        own = os.open(f"/proc/self/task/{threading.get_native_id()}/ns/net", os.O_RDONLY)
        target = os.open(netns, os.O_RDONLY)
        try:
            _setns(target)
            try:
                return fn()
            finally:
                _setns(own)  # never leave a pool thread in the pod's namespace
        finally:
            os.close(target)
            os.close(own)


def _socket_in(netns: str) -> socket.socket:
    return in_netns(netns, lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))


async def connect_in_netns(
    netns: str, host: str, port: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """`asyncio.open_connection(host, port)` from inside the namespace at path `netns`."""
    sock = await asyncio.to_thread(_socket_in, netns)
    try:
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock)
