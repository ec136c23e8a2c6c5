"""The pod network on one device: a bridge, a network namespace and an address per pod.

Why not CNI: a CNI setup needs plugins, a config directory and a JSON protocol for what
is, on a single device, five `ip` commands and one nftables table. This module does
the bridge-plus-portmap shape of Kubernetes' default CNI plugins itself:

- one bridge (`edgefed0`, gateway 10.88.0.1 of 10.88.0.0/16 by default) with
  `net.ipv4.ip_forward=1`;
- per pod: a network namespace `/run/netns/<prefix><hash of the pod key>`, a veth pair
  (host side on the bridge, `eth0` inside) with the pod's address, `lo` up, and a
  default route via the bridge; every container of the pod joins that namespace (its
  path goes into the OCI config), so they share `localhost` as in Kubernetes;
- addresses from a small IPAM persisted in `<state_dir>/ipam.json` (atomic rewrite):
  a pod keeps its address across agent restarts, and the lowest free address is
  handed out next;
- one nftables table (`ip <bridge>`, `ip edgefed0` by default), rewritten whole and
  atomically (`nft -f`) on every change: outbound NAT (masquerade of pod sources
  leaving by another interface), and
  `hostPort` mappings (DNAT of traffic to any local address of the device, from other
  hosts (prerouting) and from the device itself (output), including 127.0.0.1 via
  `route_localnet` on the bridge and a masquerade of loopback sources).

The namespace lives under /run, so after a reboot it is gone with the containers; the
reconciler then recreates both. `detach` deletes the namespace (the veth pair goes
with it), the pod's nftables rules and its address.

Two agents in one network namespace (tests, the testbed without per-agent namespaces)
need distinct bridges and address ranges; namespace and veth names already differ (they
hash the state dir).

Not done: IPv6, network policies between pods, bandwidth limits; the host's firewall
must let forwarded traffic through (a FORWARD policy of DROP, as Docker sets it, needs
an accept rule for the bridge).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import ipaddress
import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edgecore.podnet.netns import in_netns
from edgecore.podnet.rtnl import configure_pod_side

__all__ = ["HostPort", "NetworkError", "NetworkUnsupported", "PodAddress", "PodNetwork"]

log = logging.getLogger(__name__)


class NetworkError(Exception):
    """Setting up a pod's network failed (temporary: the next pass tries again)."""


class NetworkUnsupported(NetworkError):
    """A tool the pod network needs is missing (`ip` from iproute2, `nft` from nftables)."""


@dataclass(frozen=True)
class HostPort:
    """A container port published on the device's addresses (Kubernetes `hostPort`)."""

    host_port: int
    container_port: int
    protocol: str = "TCP"


@dataclass(frozen=True)
class PodAddress:
    """Where a pod lives on the network: its address and its namespace's path."""

    ip: str
    netns: str


class PodNetwork:
    """Bridge, namespaces, addresses and nftables rules of the pods on this device.

    All methods are coroutines; `attach`/`detach` of one pod are idempotent and
    serialised (one lock), so the reconciler may call them on every pass: once a pod's
    namespace was checked (or made) by this process, `attach` costs a stat of its path
    and no process.
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        bridge: str = "edgefed0",
        cidr: str = "10.88.0.0/16",
        table: str | None = None,
        netns_prefix: str = "edgefed-",
        netns_dir: Path = Path("/run/netns"),
        ip: str = "ip",
        nft: str = "nft",
    ) -> None:
        self.state_dir = Path(state_dir)
        self.bridge = bridge
        self.net = ipaddress.IPv4Network(cidr)
        if self.net.num_addresses < 4:
            raise ValueError(f"pod network {cidr} is too small")
        self.gateway = str(self.net.network_address + 1)
        if not 1 <= len(bridge) <= 15 or not bridge.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"bridge name {bridge!r} must be 1-15 letters, digits, '-', '_'")
        self.table = table or bridge  # one table per bridge: agents sharing a netns differ
        self.netns_prefix = netns_prefix
        self.netns_dir = Path(netns_dir)
        self._ip, self._nft = ip, nft
        self._lock = asyncio.Lock()
        self._ready = False
        self._up: set[str] = set()  # pods checked or made by this process: no `ip` per pass
        self._ipam = self.state_dir / "ipam.json"
        self._pods: dict[str, dict[str, object]] = {}
        with contextlib.suppress(FileNotFoundError, ValueError, TypeError, KeyError):
            data = json.loads(self._ipam.read_text())
            if data.get("cidr") == str(self.net):
                self._pods = dict(data["pods"])

    # -- naming and IPAM ---------------------------------------------------------------

    def _names(self, key: str) -> tuple[str, str]:
        """(netns name, host veth name) of a pod; unique per state dir and pod key."""
        h = hashlib.sha256(f"{self.state_dir.resolve()}\0{key}".encode()).hexdigest()
        return f"{self.netns_prefix}{h[:12]}", f"ve{h[:12]}"  # veth names: <= 15 chars

    def address(self, key: str) -> PodAddress | None:
        """The pod's address and namespace if it is attached (or was, before a restart)."""
        rec = self._pods.get(key)
        if rec is None:
            return None
        return PodAddress(ip=str(rec["ip"]), netns=str(self.netns_dir / str(rec["netns"])))

    def keys(self) -> set[str]:
        return set(self._pods)

    def _save(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.state_dir.chmod(0o700)
        tmp = self._ipam.with_suffix(".tmp")
        tmp.write_text(json.dumps({"cidr": str(self.net), "pods": self._pods}, indent=1))
        tmp.replace(self._ipam)

    def _allocate(self, key: str) -> str:
        used = {str(r["ip"]) for r in self._pods.values()}
        for host in self.net.hosts():
            ip = str(host)
            if ip != self.gateway and ip not in used:
                return ip
        raise NetworkError(f"pod network {self.net} has no free address for {key}")

    # -- commands ----------------------------------------------------------------------

    def _tool(self, name: str, package: str) -> str:
        path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
        if path is None:
            raise NetworkUnsupported(f"{name!r} was not found; the pod network needs it "
                                     f"(install the {package} package)")
        return path

    async def _run(self, argv: Sequence[str], *, stdin: str | None = None,
                   check: bool = True) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE if stdin is not None else
            asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        try:
            out, err = await proc.communicate(stdin.encode() if stdin is not None else None)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise
        rc = proc.returncode if proc.returncode is not None else -1
        if check and rc != 0:
            text = (err or out).decode(errors="replace").strip()
            raise NetworkError(f"`{' '.join(argv)}` exited {rc}: {text[-1000:]}")
        return rc, out.decode(errors="replace")

    async def _ipcmd(self, *args: str, check: bool = True) -> tuple[int, str]:
        return await self._run([self._tool(self._ip, "iproute2"), *args], check=check)

    async def _ipbatch(self, lines: Sequence[str], *, netns: str | None = None) -> None:
        argv = [self._tool(self._ip, "iproute2")]
        if netns is not None:
            argv += ["-n", netns]
        await self._run([*argv, "-batch", "-"], stdin="\n".join(lines) + "\n")

    # -- bridge and rules ----------------------------------------------------------------

    async def setup(self) -> None:
        """The bridge with the gateway address, forwarding on, the nftables table.

        Idempotent; `attach` calls it once per process.
        """
        async with self._lock:
            await self._setup()

    async def _setup(self) -> None:
        self._tool(self._nft, "nftables")
        # Not /sys/class/net: an agent in a network namespace of its own (the testbed)
        # sees the sysfs of whoever mounted /sys; `ip` asks the kernel for this one.
        rc, _ = await self._ipcmd("link", "show", "dev", self.bridge, check=False)
        if rc != 0:
            await self._ipcmd("link", "add", self.bridge, "type", "bridge")
        prefix = self.net.prefixlen
        _, addrs = await self._ipcmd("-o", "-4", "addr", "show", "dev", self.bridge)
        if f" {self.gateway}/{prefix} " not in addrs:
            await self._ipcmd("addr", "add", f"{self.gateway}/{prefix}", "dev", self.bridge)
        await self._ipcmd("link", "set", self.bridge, "up")
        for path, value in ((Path("/proc/sys/net/ipv4/ip_forward"), "1"),
                            (Path(f"/proc/sys/net/ipv4/conf/{self.bridge}/route_localnet"),
                             "1")):
            try:
                if path.read_text().strip() != value:
                    path.write_text(value)
            except OSError as exc:
                raise NetworkError(f"cannot set {path} to {value}: {exc}") from exc
        await self._write_rules()
        self._ready = True

    def _ruleset(self) -> str:
        net, t = str(self.net), self.table
        ports = []
        for rec in sorted(self._pods.values(), key=lambda r: str(r["ip"])):
            for hp, cp, proto in rec.get("ports") or []:  # type: ignore[attr-defined]
                ports.append(f"    {str(proto).lower()} dport {int(hp)} dnat to "
                             f"{rec['ip']}:{int(cp)}")
        return "\n".join([
            f"table ip {t} {{}}",
            f"delete table ip {t}",
            f"table ip {t} {{",
            "  chain hostports {",
            *ports,
            "  }",
            "  chain prerouting {",
            "    type nat hook prerouting priority dstnat; policy accept;",
            "    fib daddr type local jump hostports",
            "  }",
            "  chain output {",
            "    type nat hook output priority -100; policy accept;",
            "    fib daddr type local jump hostports",
            "  }",
            "  chain postrouting {",
            "    type nat hook postrouting priority srcnat; policy accept;",
            f"    ip saddr {net} oifname != \"{self.bridge}\" masquerade",
            f"    ip saddr 127.0.0.0/8 oifname \"{self.bridge}\" masquerade",
            "  }",
            "}",
        ]) + "\n"

    async def _write_rules(self) -> None:
        await self._run([self._tool(self._nft, "nftables"), "-f", "-"], stdin=self._ruleset())

    # -- pods --------------------------------------------------------------------------------

    async def attach(self, key: str, *, host_ports: Sequence[HostPort] = ()) -> PodAddress:
        """Give the pod its namespace, address, route and host ports (idempotent)."""
        ports = sorted({(p.host_port, p.container_port, p.protocol.upper()) for p in host_ports})
        async with self._lock:
            if not self._ready:
                await self._setup()
            rec = self._pods.get(key)
            netns, veth = self._names(key)
            if rec is None:
                rec = {"ip": self._allocate(key), "netns": netns, "veth": veth, "ports": []}
                self._pods[key] = rec
                self._save()
            ip = str(rec["ip"])
            if key not in self._up or not (self.netns_dir / netns).exists():
                if not await self._configured(netns, ip):
                    await self._create(netns, veth, ip)
                self._up.add(key)
            if [tuple(p) for p in rec.get("ports") or []] != ports:  # type: ignore[attr-defined]
                taken = {(int(hp), str(pr)) for k, r in self._pods.items() if k != key
                         for hp, _, pr in r.get("ports") or []}  # type: ignore[attr-defined]
                clash = [f"{hp}/{pr}" for hp, _, pr in ports if (hp, pr) in taken]
                if clash:
                    raise NetworkError(f"hostPort {', '.join(clash)} is already used by "
                                       "another pod on this node")
                rec["ports"] = [list(p) for p in ports]
                self._save()
                await self._write_rules()
            return PodAddress(ip=ip, netns=str(self.netns_dir / netns))

    async def _configured(self, netns: str, ip: str) -> bool:
        if not (self.netns_dir / netns).exists():
            return False
        rc, out = await self._ipcmd("-n", netns, "-o", "-4", "addr", "show", "dev", "eth0",
                                    check=False)
        return rc == 0 and f" {ip}/" in out

    async def _create(self, netns: str, veth: str, ip: str) -> None:
        """One `ip` process on the start path (issue 16): a batch in this namespace (the
        netns, the veth pair, onto the bridge); then the pod's side (`lo` and `eth0` up,
        its address, the default route) over rtnetlink from inside its namespace.
        Leftovers are cleared first only when there are any: a half-made namespace
        (agent killed mid-way) is replaced whole, and a veth whose namespace is still
        being torn down by the kernel makes the first attempt fail and be retried."""
        clean = not (self.netns_dir / netns).exists()
        for attempt in (1, 2):
            if not clean:
                await self._ipcmd("netns", "del", netns, check=False)
                await self._ipcmd("link", "del", veth, check=False)
            try:
                await self._ipbatch([
                    f"netns add {netns}",
                    f"link add {veth} type veth peer name eth0 netns {netns}",
                    f"link set {veth} master {self.bridge} up",
                ])
                break
            except NetworkError:
                if attempt == 2:
                    await self._ipcmd("netns", "del", netns, check=False)
                    raise
                clean = False
        # The pod's side over rtnetlink from a worker thread inside the namespace, not a
        # second `ip` process (edgecore/podnet/rtnl.py says why).
        configure = functools.partial(configure_pod_side, iface="eth0",
                                      address=f"{ip}/{self.net.prefixlen}",
                                      gateway=str(self.gateway))
        try:
            await asyncio.to_thread(in_netns, str(self.netns_dir / netns), configure)
        except OSError as exc:
            await self._ipcmd("netns", "del", netns, check=False)
            await self._ipcmd("link", "del", veth, check=False)
            raise NetworkError(f"configure the namespace {netns} of {ip}: {exc}") from exc

    async def detach(self, key: str) -> bool:
        """Remove the pod's namespace, veth, host ports and address; True if it had any."""
        async with self._lock:
            rec = self._pods.pop(key, None)
            self._up.discard(key)
            netns, veth = self._names(key)
            if rec is None and not (self.netns_dir / netns).exists():
                return False  # nothing of it here (called on every pass for refused pods)
            await self._ipcmd("netns", "del", netns, check=False)
            await self._ipcmd("link", "del", veth, check=False)
            if rec is not None:
                self._save()
                if rec.get("ports") and self._ready:
                    await self._write_rules()
                elif rec.get("ports"):
                    await self._setup()
            return True

    async def sweep(self, keep: set[str]) -> list[str]:
        """Detach pods not in `keep` (left by a crash between removal and cleanup)."""
        gone = sorted(set(self._pods) - keep)
        for key in gone:
            await self.detach(key)
        return gone
