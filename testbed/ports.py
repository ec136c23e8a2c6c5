"""Free TCP ports on loopback (or a given address) for the services the testbed starts."""

from __future__ import annotations

import socket
import time


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def free_port_on(hosts: tuple[str, ...] | list[str]) -> int:
    """A port free on every one of `hosts` at once: a listener on several addresses
    (a broker on the testbed bridge and loopback) needs the number free on each, and a port
    free on the bridge may be the local end of a loopback connection."""
    for _ in range(100):
        port = free_port(hosts[0])
        socks: list[socket.socket] = []
        try:
            for h in hosts[1:]:
                s = socket.socket()
                socks.append(s)
                s.bind((h, port))
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
        return port
    raise RuntimeError(f"no port free on all of {', '.join(hosts)} after 100 tries")


def wait_port(host: str, port: int, *, timeout: float = 10.0) -> None:
    """Block until something accepts on host:port, or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout} s") from None
            time.sleep(0.05)
