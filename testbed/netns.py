"""Network namespaces for edge agents: each agent is its own host on a bridge.

    host: bridge efbr<id> 10.231.<id>.1/24
    agent i: netns ef<id>-<i>, veth 10.231.<id>.<i+2>/24, default route via the bridge

Agents enter their namespace with `nsenter --net` (not `ip netns exec`, which
remounts /sys and would hide the cgroup hierarchies crun needs). Cutting a link
for real is `ip link set <host side veth> down`; delay and loss use netem, or
nftables random drops where the kernel has no netem (`testbed.chaos`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass


def available() -> bool:
    return os.geteuid() == 0 and all(shutil.which(b) for b in ("ip", "nsenter"))


def _ip(*args: str, check: bool = True) -> None:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and r.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {r.stderr.strip()}")


@dataclass
class Host:
    name: str  # netns name
    veth: str  # host-side interface
    address: str

    def nsenter(self) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{self.name}"]

    def cut(self) -> None:
        _ip("link", "set", self.veth, "down")

    def heal(self) -> None:
        _ip("link", "set", self.veth, "up")

    def impair(self, *, delay_ms: int = 0, loss_pct: float = 0.0) -> None:
        """netem delay/loss on the host side of the link (clear with impair())."""
        subprocess.run(["tc", "qdisc", "del", "dev", self.veth, "root"], capture_output=True,
                       check=False)
        if delay_ms or loss_pct:
            subprocess.run(["tc", "qdisc", "add", "dev", self.veth, "root", "netem",
                            "delay", f"{delay_ms}ms", "loss", f"{loss_pct}%"], check=True)


class Network:
    """A bridge and one namespace per agent; `close()` removes all of it."""

    def __init__(self, net_id: int) -> None:
        if not 0 <= net_id < 250:
            raise ValueError("net_id must be 0..249")
        self.id = net_id
        self.bridge = f"efbr{net_id}"
        self.gateway = f"10.231.{net_id}.1"
        self.hosts: list[Host] = []

    def up(self) -> Network:
        _ip("link", "del", self.bridge, check=False)
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        return self

    def add_host(self, index: int) -> Host:
        name = f"ef{self.id}-{index}"
        veth = f"efv{self.id}x{index}"
        address = f"10.231.{self.id}.{index + 2}"
        _ip("netns", "del", name, check=False)
        _ip("link", "del", veth, check=False)  # left by a fleet of this process not closed
        _ip("netns", "add", name)
        _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", name)
        _ip("link", "set", veth, "master", self.bridge)
        _ip("link", "set", veth, "up")
        _ip("-n", name, "addr", "add", f"{address}/24", "dev", "eth0")
        _ip("-n", name, "link", "set", "eth0", "up")
        _ip("-n", name, "link", "set", "lo", "up")
        _ip("-n", name, "route", "add", "default", "via", self.gateway)
        host = Host(name=name, veth=veth, address=address)
        self.hosts.append(host)
        return host

    def close(self) -> None:
        for h in self.hosts:
            _ip("link", "del", h.veth, check=False)
            _ip("netns", "del", h.name, check=False)
        _ip("link", "del", self.bridge, check=False)
        self.hosts.clear()
