"""Fault injection over a running `testbed.fleet.Fleet` (DESIGN.md sections 3 and 8).

One object, `Chaos(fleet)`, knows how to break every part of a local fleet for real
and how to undo it:

- links: cut / heal an agent's veth, netem delay, jitter, loss, duplication,
  reordering and corruption on it (only the testbed's own 10.231.x.y hosts); on a
  kernel without netem, loss by nftables random drops in the agent's namespace (the
  rest has no stand-in and is refused, `NetemMissing`, or left out and said so);
- processes: kill -9 and start again the broker (same port, so every client finds it
  where it was), cloudcore and any agent; "reboot" an agent (kill -9 it and crash-stop
  every container it ran, as a power cut would);
- disk: fill an agent's state dir, which must be its own small tmpfs
  (`FleetSettings.state_tmpfs_mib`), never the machine's shared disk;
- messages: publish duplicated, reordered, garbled or replayed protocol messages on a
  node's `down` or `up` topic (`shared.topics`, `shared.codec`), or capture real ones
  to replay them.

Everything injected is remembered and `restore()` (or leaving the `with` block)
undoes it: links healed, netem cleared, filler files removed, stopped processes
started. Faults are plain method calls so that tests, the `testbed chaos` CLI and a
person at a Python prompt use the same code.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import os
import random
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared import codec, topics
from testbed.fleet import Agent, Fleet
from testbed.netns import Host


class ChaosError(RuntimeError):
    """A fault cannot be injected safely (no namespace, no private disk, ...)."""


class NetemMissing(ChaosError):
    """The kernel has no netem qdisc (sch_netem), and the impairment asked for needs it."""


NETEM_MISSING = ("netem is missing from this kernel (`tc qdisc add ... netem`: "
                 "'Specified qdisc kind is unknown'; module sch_netem)")
CHAOS_TABLE = "testbed_chaos"
"""The nftables table (family inet, in an agent's network namespace) of the fallback."""


@dataclass
class Netem:
    """tc netem parameters for one direction of a link (the host side of the veth,
    i.e. traffic towards the agent). Zero means "off"."""

    delay_ms: int = 0
    jitter_ms: int = 0
    loss_pct: float = 0.0
    duplicate_pct: float = 0.0
    reorder_pct: float = 0.0  # needs delay_ms > 0: reordered packets skip the delay
    corrupt_pct: float = 0.0

    def args(self) -> list[str]:
        a: list[str] = []
        if self.delay_ms or self.reorder_pct:
            a += ["delay", f"{max(self.delay_ms, 1)}ms"]
            if self.jitter_ms:
                a.append(f"{self.jitter_ms}ms")
        if self.loss_pct:
            a += ["loss", f"{self.loss_pct}%"]
        if self.duplicate_pct:
            a += ["duplicate", f"{self.duplicate_pct}%"]
        if self.reorder_pct:
            a += ["reorder", f"{self.reorder_pct}%"]
        if self.corrupt_pct:
            a += ["corrupt", f"{self.corrupt_pct}%"]
        return a

    def without_loss(self) -> list[str]:
        """The netem arguments other than loss: what nftables cannot do."""
        return Netem(delay_ms=self.delay_ms, jitter_ms=self.jitter_ms,
                     duplicate_pct=self.duplicate_pct, reorder_pct=self.reorder_pct,
                     corrupt_pct=self.corrupt_pct).args()


@dataclass
class Injector:
    """A paho client on the fleet's broker that publishes raw payloads (QoS 1) and can
    capture what flows on a topic. Close it (or use `with`)."""

    host: str
    port: int
    client_id: str = field(
        default_factory=lambda: f"chaos-{os.getpid()}-{random.randrange(1 << 30)}")
    username: str | None = None  # a secure broker: the fleet's test probe (broker_probe)
    password: str | None = field(default=None, repr=False)
    tls_context: ssl.SSLContext | None = None

    def __post_init__(self) -> None:
        import paho.mqtt.client as mqtt

        self._captured: dict[str, list[bytes]] = {}
        self._lock = threading.Lock()
        self._c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id)
        self._c.on_message = self._on_message
        if self.username is not None:
            self._c.username_pw_set(self.username, self.password)
        if self.tls_context is not None:
            self._c.tls_set_context(self.tls_context)
        self._c.connect(self.host, self.port)
        self._c.loop_start()

    def _on_message(self, _c: Any, _u: Any, m: Any) -> None:
        with self._lock:
            self._captured.setdefault(m.topic, []).append(bytes(m.payload))

    def publish(self, topic: str, payloads: list[bytes], *, timeout: float = 5) -> None:
        for p in payloads:
            self._c.publish(topic, p, qos=1).wait_for_publish(timeout)

    def capture(self, topic: str) -> None:
        """Start recording every message on `topic` (read them with `captured`)."""
        self._c.subscribe(topic, qos=1)

    def captured(self, topic: str) -> list[bytes]:
        with self._lock:
            return list(self._captured.get(topic, []))

    def close(self) -> None:
        self._c.loop_stop()
        self._c.disconnect()

    def __enter__(self) -> Injector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def corrupt(payload: bytes, *, flips: int = 3, rng: random.Random | None = None) -> bytes:
    """`payload` with `flips` random bits flipped (what a bad link or disk would do)."""
    rng = rng or random.Random()
    b = bytearray(payload)
    for _ in range(flips):
        if b:
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
    return bytes(b)


class Chaos:
    """Fault injection on one running fleet; `restore()` undoes what is still in force."""

    def __init__(self, fleet: Fleet, *, seed: int | None = None,
                 netem: bool | None = None) -> None:
        """`netem`: None finds out on first use whether the kernel has netem; False
        never uses it (random loss by nftables only), True insists on it."""
        self.fleet = fleet
        self.rng = random.Random(seed)
        self.netem = netem
        self._cut: set[str] = set()
        self._impaired: set[str] = set()
        self._fillers: dict[str, Path] = {}
        self._killed_agents: set[str] = set()
        self._broker_down = False
        self._cloud_down = False
        self.log: list[tuple[float, str]] = []  # (monotonic time, what was done)

    def _note(self, what: str) -> None:
        self.log.append((time.monotonic(), what))

    # ---- links -----------------------------------------------------------------------
    def host(self, node: str) -> Host:
        a = self.fleet.agent(node)
        if a.host is None:
            raise ChaosError(f"{node} runs in the host network: no link of its own to break "
                             "(start the fleet as root with use_netns)")
        return a.host

    def cut(self, node: str) -> None:
        """Take the agent's link down (veth down): packets vanish both ways, as when a
        cable is pulled. TCP sessions are not reset; they time out."""
        self.host(node).cut()
        self._cut.add(node)
        self._note(f"cut {node}")

    def heal(self, node: str) -> None:
        self.host(node).heal()
        self._cut.discard(node)
        self._note(f"heal {node}")

    @contextlib.contextmanager
    def partition(self, node: str) -> Iterator[None]:
        """`with chaos.partition("edge-1"): ...` - the link is cut inside the block."""
        self.cut(node)
        try:
            yield
        finally:
            self.heal(node)

    def impair(self, node: str, netem: Netem | None = None, *, partial: bool = False,
               **kw: Any) -> str:
        """netem on the link towards the agent: `impair(n, delay_ms=200, loss_pct=5)`.
        `impair(n)` with nothing clears it. Returns what is in force, in words.

        On a kernel without netem (`self.netem` False, or found missing) loss falls
        back to nftables random drops on the agent's side of the link (the same
        direction); the rest (delay, jitter, duplication, reordering, corruption) has
        no fallback: NetemMissing, unless `partial`, which applies the loss alone and
        says in the returned text what was left out."""
        netem = netem or Netem(**kw)
        host = self.host(node)
        subprocess.run(["tc", "qdisc", "del", "dev", host.veth, "root"], capture_output=True,
                       check=False)
        _nft(host, "delete", "table", "inet", CHAOS_TABLE, check=False)
        args = netem.args()
        if not args:
            self._impaired.discard(node)
            self._note(f"clear impairment {node}")
            return f"{node}: link clear"
        if self.netem is not False:
            r = subprocess.run(["tc", "qdisc", "add", "dev", host.veth, "root", "netem", *args],
                               capture_output=True, text=True, check=False)
            if r.returncode == 0:
                self.netem = True
                self._impaired.add(node)
                self._note(f"impair {node} {' '.join(args)}")
                return f"{node}: netem {' '.join(args)}"
            if "qdisc kind is unknown" not in r.stderr or self.netem is True:
                raise ChaosError(f"tc netem {' '.join(args)} on {host.veth}: "
                                 f"{r.stderr.strip()}")
            self.netem = False
        rest = netem.without_loss()
        if rest and not (partial and netem.loss_pct):
            raise NetemMissing(f"{NETEM_MISSING}: cannot apply {' '.join(rest)} to {node} "
                               "(nftables can stand in for loss only)")
        _nft(host, "-f", "-", stdin=_drop_table(netem.loss_pct))
        self._impaired.add(node)
        self._note(f"impair {node} nftables loss {netem.loss_pct}%")
        return (f"{node}: loss {netem.loss_pct:g} % by nftables random drops"
                + (f" ({' '.join(rest)} not applied: no netem)" if rest else ""))

    # ---- broker ----------------------------------------------------------------------
    def kill_broker(self) -> None:
        """kill -9 mosquitto: no wills are sent, in-flight QoS 1 messages are lost from
        the broker (it runs without persistence) and must be recovered by the protocol."""
        b = self.fleet.broker
        assert b is not None
        b.kill()
        b.stop()  # reaps and closes its pipes; the process is already gone
        self._broker_down = True
        self._note("kill -9 broker")

    def start_broker(self) -> None:
        """Start mosquitto again on the same address and port (its config is rewritten
        from the same settings)."""
        b = self.fleet.broker
        assert b is not None
        deadline = time.monotonic() + 10
        while True:
            try:
                b.start()
                break
            except (TimeoutError, OSError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self._broker_down = False
        self._note("start broker")

    def restart_broker(self, *, down_s: float = 0.0) -> None:
        self.kill_broker()
        if down_s:
            time.sleep(down_s)
        self.start_broker()

    # ---- cloudcore -------------------------------------------------------------------
    def kill_cloud(self) -> None:
        assert self.fleet.cloud is not None
        self.fleet.cloud.kill()
        self._cloud_down = True
        self._note("kill -9 cloudcore")

    def start_cloud(self, *, wait: bool = True) -> None:
        c = self.fleet.cloud
        assert c is not None
        c.start()
        self._cloud_down = False
        if wait:
            self.fleet.wait_http(f"{self.fleet.api}/readyz", timeout=30, proc=c)
        self._note("start cloudcore")

    # ---- agents ----------------------------------------------------------------------
    def kill_agent(self, node: str) -> None:
        """kill -9 the agent process; its containers keep running (conmon owns them)."""
        self.fleet.agent(node).proc.kill()
        self._killed_agents.add(node)
        self._note(f"kill -9 agent {node}")

    def start_agent(self, node: str) -> None:
        self.fleet.agent(node).proc.start()
        self._killed_agents.discard(node)
        self._note(f"start agent {node}")

    def reboot_agent(self, node: str, *, start: bool = True) -> float:
        """A device power cycle: kill -9 the agent, SIGKILL and remove every container
        it ran (nothing survives a reboot but the disk), then start the agent again
        unless `start=False`. Returns the monotonic time the agent was started (or 0)."""
        self.kill_agent(node)
        crash_containers(self.fleet.agent(node))
        self._note(f"containers of {node} crashed")
        if not start:
            return 0.0
        t = time.monotonic()
        self.start_agent(node)
        return t

    # ---- disk ------------------------------------------------------------------------
    def fill_disk(self, node: str, *, leave_bytes: int = 256 * 1024) -> int:
        """Fill the agent's state dir until `leave_bytes` are free; returns bytes taken.

        Refused unless the state dir is its own mount (the fleet's per-agent tmpfs):
        filling the machine's shared disk would hurt everyone else on it.
        """
        a = self.fleet.agent(node)
        if not os.path.ismount(a.state_dir):
            raise ChaosError(f"{a.state_dir} is not its own file system; start the fleet "
                             "with FleetSettings(state_tmpfs_mib=...) to fill it safely")
        st = os.statvfs(a.state_dir)
        free = st.f_bavail * st.f_frsize
        size = max(0, free - leave_bytes)
        path = a.state_dir / "chaos-filler"
        # Known before a byte is written: whatever happens below, free_disk (and the
        # teardown) removes it. A filler that raised half-way used to stay, and every
        # later test on that node ran on a full disk.
        self._fillers[node] = path
        # Unbuffered: a buffered writer keeps the bytes ENOSPC refused and raises again
        # when it is closed, outside any handler.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            if size:
                try:
                    os.posix_fallocate(fd, os.lseek(fd, 0, os.SEEK_END), size)
                except OSError:  # some file systems cannot; write zeros instead
                    chunk = b"\0" * (1 << 20)
                    left = size
                    try:
                        while left > 0:
                            left -= os.write(fd, chunk[:min(left, len(chunk))])
                    except OSError as exc:
                        # the agent wrote meanwhile: the disk is full sooner, as wanted
                        if exc.errno != errno.ENOSPC:
                            raise
        finally:
            os.close(fd)
        self._note(f"fill disk {node} ({size} bytes, {leave_bytes} left)")
        return size

    def free_disk(self, node: str) -> None:
        path = self._fillers.pop(node, None)
        if path is not None:
            path.unlink(missing_ok=True)
            self._note(f"free disk {node}")

    # ---- messages --------------------------------------------------------------------
    def injector(self) -> Injector:
        """A client with broker access: anyone on an insecure fleet's broker, the test
        probe on a secure one (FleetSettings(broker_probe=True))."""
        kw = self.fleet.probe_mqtt()
        return Injector(host=kw["hostname"], port=kw["port"], username=kw.get("username"),
                        password=kw.get("password"), tls_context=kw.get("tls_context"))

    def send_down(self, node: str, payloads: list[bytes]) -> None:
        """Publish raw payloads on the node's `down` topic, as if from the cloud."""
        with self.injector() as inj:
            inj.publish(topics.down(node), payloads)
        self._note(f"{len(payloads)} messages down to {node}")

    def send_up(self, node: str, payloads: list[bytes]) -> None:
        """Publish raw payloads on the node's `up` topic, as if from the agent."""
        with self.injector() as inj:
            inj.publish(topics.up(node), payloads)
        self._note(f"{len(payloads)} messages up from {node}")

    def replay(self, node: str, messages: list[codec.Message], *, direction: str = "down",
               duplicate: int = 1, reorder: bool = False, corrupt_bits: int = 0) -> None:
        """Send `messages` (encoded by shared.codec) `duplicate` times each, shuffled
        if `reorder`, with `corrupt_bits` random bit flips each if asked."""
        payloads = [self._sealed(node, direction, codec.encode(m))
                    for m in messages for _ in range(duplicate)]
        if reorder:
            self.rng.shuffle(payloads)
        if corrupt_bits:
            payloads = [corrupt(p, flips=corrupt_bits, rng=self.rng) for p in payloads]
        send = self.send_down if direction == "down" else self.send_up
        send(node, payloads)

    def _sealed(self, node: str, direction: str, inner: bytes) -> bytes:
        """`inner` as the cloud (down) or the node (up) would send it: sealed with the
        node's key on a secure fleet (the protocol is under test, not its authentication;
        a corrupted message then fails its tag), as is on an insecure one."""
        if not self.fleet.secure:
            return inner
        from shared import seal

        keys = seal.NodeKeys.derive(base64.b64decode(self.fleet.node_config(node)["key"]))
        if direction == "down":
            return seal.seal(keys.down, topics.down(node), inner)
        return seal.seal(keys.up, topics.up(node), inner)

    # ---- undo ------------------------------------------------------------------------
    def restore(self) -> None:
        """Undo every fault still in force: heal, clear netem, free disks, start what
        was stopped (broker first, then cloudcore, then agents)."""
        for node in list(self._cut):
            self.heal(node)
        for node in list(self._impaired):
            self.impair(node)
        for node in list(self._fillers):
            self.free_disk(node)
        if self._broker_down:
            self.start_broker()
        if self._cloud_down:
            self.start_cloud()
        for node in list(self._killed_agents):
            self.start_agent(node)
        for a in self.fleet.agents:  # an agent the fault made exit is started again
            if not a.proc.alive():
                self._note(f"{a.name} had exited (rc {a.proc.popen and a.proc.popen.returncode})")
                self.start_agent(a.name)

    def __enter__(self) -> Chaos:
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()


def _drop_table(loss_pct: float) -> str:
    """An nftables table that drops `loss_pct` % of what enters the namespace by eth0
    (to the agent, and forwarded to its pods), at random, in steps of 0.01 %."""
    n = max(0, min(10000, round(loss_pct * 100)))
    rule = f'iifname "eth0" numgen random mod 10000 < {n} drop'
    return (f"table inet {CHAOS_TABLE} {{\n"
            f"  chain input {{ type filter hook input priority -10; policy accept; {rule}; }}\n"
            f"  chain forward {{ type filter hook forward priority -10; policy accept; "
            f"{rule}; }}\n}}\n")


def _nft(host: Host, *args: str, stdin: str | None = None, check: bool = True) -> None:
    """`nft ARGS` in the agent's network namespace."""
    r = subprocess.run([*host.nsenter(), "nft", *args], input=stdin, capture_output=True,
                       text=True, check=False)
    if check and r.returncode != 0:
        raise ChaosError(f"nft {' '.join(args)} in {host.name}: {r.stderr.strip()}")


def crash_containers(agent: Agent) -> int:
    """SIGKILL and remove every container under the agent's crun root, all at once
    (a reboot gives no grace). Returns how many there were."""
    from edgecore.runtime import CrunRuntime

    root = agent.state_dir / "runtime"
    if not root.exists():
        return 0

    async def go() -> int:
        rt = CrunRuntime(root)
        cs = await rt.list()

        async def one(cid: str) -> None:
            await rt.stop(cid, grace_s=0)
            await rt.remove(cid)

        await asyncio.gather(*(one(c.id) for c in cs))
        return len(cs)

    return asyncio.run(go())


def wait_until(check: Callable[[], Any], *, timeout: float, interval: float = 0.05,
               what: str = "condition") -> float:
    """Poll `check` until truthy; returns the seconds it took (TimeoutError otherwise)."""
    t0 = time.monotonic()
    while True:
        if check():
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"{what}: not reached after {timeout} s")
        time.sleep(interval)


# ---- named scenarios for `testbed chaos ...` -----------------------------------------

SCENARIOS = ("partition", "flaky", "broker-restart", "cloud-kill", "agent-kill",
             "offline-reboot", "outbox")


def _sleeper(image: str, name: str, version: str, replicas: int | None = None,
             selector: dict[str, str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"terminationGracePeriodSeconds": 0, "containers": [{
        "name": "c", "image": image, "command": ["sleep", "86400"],
        "env": [{"name": "VERSION", "value": version}]}]}
    if selector:
        spec["nodeSelector"] = selector
    doc: dict[str, Any] = {"apiVersion": "apps/v1",
                           "kind": "Deployment" if replicas else "DaemonSet",
                           "metadata": {"name": name},
                           "spec": {"template": {"metadata": {"labels": {"app": name}},
                                                 "spec": spec}}}
    if replicas:
        doc["spec"]["replicas"] = replicas
    return doc


def _status(fleet: Fleet, node: str) -> dict[str, Any]:
    return dict(fleet.get(f"/api/v1/nodes/{node}")["status"])


def _unconverged(fleet: Fleet) -> list[str]:
    """The fleet's nodes that are not Ready or not in sync, each with its state."""
    mine = {a.name for a in fleet.agents}
    return [f"{n['metadata']['name']} ({n['status']['ready']}, acked gen "
            f"{n['status']['ackedGen']} of {n['status']['desiredGen']})"
            for n in fleet.nodes() if n["metadata"]["name"] in mine
            and (n["status"]["ready"] != "Ready"
                 or n["status"]["ackedGen"] != n["status"]["desiredGen"])]


def _wait_converged(fleet: Fleet, *, timeout: float) -> None:
    """Wait until every node is Ready and in sync; a TimeoutError names those not."""
    left: list[str] = []

    def converged() -> bool:
        left[:] = _unconverged(fleet)
        return not left

    try:
        fleet.wait(converged, timeout=timeout, what="fleet converged")
    except TimeoutError:
        raise TimeoutError(f"fleet not converged after {timeout} s: "
                           f"{', '.join(left) or '(the API did not answer)'}") from None


def run_scenario(fleet: Fleet, name: str, *, minutes: float = 1.0, pods: int = 20,
                 cycles: int = 20, delay_ms: int = 200, loss_pct: float = 5.0,
                 out: Callable[[str], None] = print) -> dict[str, Any]:
    """Run one named fault scenario on a started fleet; prints and returns its figures."""
    chaos = Chaos(fleet)
    node = fleet.agents[0].name
    figs: dict[str, Any] = {"scenario": name}
    with chaos:
        fleet.apply([_sleeper(fleet.image, "chaos", "0")])
        _wait_converged(fleet, timeout=120)
        if name == "partition":
            t = time.monotonic()
            chaos.cut(node)
            out(f"cut {node} for {minutes} min; two updates while it is away")
            fleet.wait(lambda: _status(fleet, node)["ready"] == "NotReady", timeout=600,
                       what="NotReady")
            figs["notready_after_cut_s"] = round(time.monotonic() - t, 2)
            fleet.apply([_sleeper(fleet.image, "chaos", "1")])
            fleet.apply([_sleeper(fleet.image, "chaos", "2")])
            time.sleep(max(0.0, t + minutes * 60 - time.monotonic()))
            t = time.monotonic()
            chaos.heal(node)
            fleet.wait(lambda: _status(fleet, node)["ready"] == "Ready", timeout=600,
                       interval=0.05, what="Ready")
            figs["ready_after_heal_s"] = round(time.monotonic() - t, 2)
        elif name == "flaky":
            out(f"delay {delay_ms} ms, loss {loss_pct} % on every link for {minutes} min")
            impair_all(chaos, Netem(delay_ms=delay_ms, jitter_ms=delay_ms // 4,
                                    loss_pct=loss_pct), out=out)
            deadline = time.monotonic() + minutes * 60
            i = 0
            while time.monotonic() < deadline:
                i += 1
                fleet.apply([_sleeper(fleet.image, "chaos", str(i))])
                time.sleep(min(10.0, max(0.0, deadline - time.monotonic())))
            figs["updates"] = i
            for a in fleet.agents:
                chaos.impair(a.name)
        elif name == "broker-restart":
            for i in range(1, cycles + 1):
                fleet.apply([_sleeper(fleet.image, "chaos", str(i))])
                chaos.restart_broker()
            figs["restarts"] = cycles
        elif name == "cloud-kill":
            for i in range(1, cycles + 1):
                fleet.apply([_sleeper(fleet.image, "chaos", str(i))])
                chaos.kill_cloud()
                chaos.start_cloud()
            figs["kills"] = cycles
        elif name == "agent-kill":
            rng = random.Random()
            for i in range(1, cycles + 1):
                fleet.apply([_sleeper(fleet.image, "chaos", str(i))])
                time.sleep(rng.uniform(0, 0.3))
                chaos.kill_agent(node)
                chaos.start_agent(node)
                time.sleep(1.0)
            figs["kills"] = cycles
        elif name == "offline-reboot":
            fleet.apply([{"apiVersion": "v1", "kind": "Node", "metadata": {
                "name": node, "labels": {**fleet.s.labels, "chaos/reboot": "yes"}}}])
            fleet.apply([_sleeper(fleet.image, "burst", "0", replicas=pods,
                                  selector={"chaos/reboot": "yes"})])
            a = fleet.agent(node)

            def running() -> int:
                return sum(1 for c in _containers(a) if c.status == "running")

            fleet.wait(lambda: running() >= pods + 1, timeout=300, what=f"{pods} pods")
            want = running()
            chaos.cut(node)
            t = chaos.reboot_agent(node)
            wait_until(lambda: running() >= want, timeout=120, what="pods back")
            figs["pods"] = want
            figs["all_running_after_start_s"] = round(time.monotonic() - t, 2)
            chaos.heal(node)
            fleet.delete("/api/v1/deployments/default/burst")
        else:
            raise ChaosError(f"unknown scenario {name!r}; one of {', '.join(SCENARIOS)}")
        t = time.monotonic()
        _wait_converged(fleet, timeout=300)
        figs["converged_after_s"] = round(time.monotonic() - t, 2)
    out(" ".join(f"{k}={v}" for k, v in figs.items()))
    return figs


def impair_all(chaos: Chaos, netem: Netem, *, out: Callable[[str], None] = print) -> None:
    """`netem` on every agent's link; on a kernel without netem, the loss by nftables
    and a line saying so (and what is left out). Nothing to fall back to (no loss
    asked for): NetemMissing."""
    said = False
    for a in chaos.fleet.agents:
        what = chaos.impair(a.name, netem, partial=True)
        if chaos.netem is False and not said:
            rest = netem.without_loss()
            out(f"{NETEM_MISSING}: using nftables random drops for the loss "
                f"({netem.loss_pct:g} %)" + (f"; not applied: {' '.join(rest)}" if rest else ""))
            said = True
        out(f"  {what}")


def _containers(agent: Agent) -> list[Any]:
    from edgecore.runtime import CrunRuntime

    async def go() -> list[Any]:
        return await CrunRuntime(agent.state_dir / "runtime").list()

    return asyncio.run(go())


def outbox_figures(*, pods: int = 10, heartbeat_s: float = 30.0, point_s: float = 60.0,
                   node: str = "edge-0001") -> dict[str, float]:
    """Bytes a day offline costs in the agent's LMDB outbox, measured on a real Cache.

    A heartbeat and a telemetry point are built exactly as `edgecore.reporter` builds
    them (a `shared.codec.Report`, appended with `Cache.append_report`), and the
    outbox's own byte count is read back. Offline, edgecore writes no heartbeats
    (they are sent only while connected); telemetry points keep coming.
    """
    import tempfile

    from edgecore.cache import Cache, OutboxKind
    from shared.entries import telemetry_point

    epoch, gen, now = "0123456789abcdef", 123456, 1.7e9
    hb = codec.Report(node=node, seq=1, epoch=epoch, gen=gen, ts=now)
    point = telemetry_point(int(now) // 60 * 60, node={"cpu": 1234.5, "mem": 123456789.0},
                            pods={f"pod/default/app-{i:04d}": {"cpu": 12.5, "mem": 23456789.0}
                                  for i in range(pods)})
    with tempfile.TemporaryDirectory() as d, Cache(Path(d)) as cache:
        def size(make: Callable[[int], bytes]) -> int:
            before = cache.outbox_bytes
            cache.append_report(make, kind=OutboxKind.TELEMETRY)
            return cache.outbox_bytes - before

        hb_bytes = size(lambda seq: codec.encode(hb.model_copy(update={"seq": seq + 10**6})))
        tel_bytes = size(lambda seq: codec.encode(codec.Report(
            node=node, seq=seq + 10**6, epoch=epoch, gen=gen, ts=now, telemetry=[point],
            node_status={"usage": {"cpu": 1234.5, "memory": 123456789.0}})))
    day = 86400.0
    return {
        "heartbeat_entry_bytes": hb_bytes,
        "telemetry_entry_bytes": tel_bytes,
        "pods": pods,
        "heartbeat_s": heartbeat_s,
        "telemetry_point_s": point_s,
        "heartbeats_per_day_bytes_if_queued": day / heartbeat_s * hb_bytes,
        "telemetry_per_day_bytes": day / point_s * tel_bytes,
    }


__all__ = ["Chaos", "ChaosError", "Injector", "Netem", "corrupt", "crash_containers",
           "outbox_figures", "run_scenario", "wait_until"]
