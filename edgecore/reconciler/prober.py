"""Container probes: startup, liveness and readiness, with Kubernetes' semantics.

One `ContainerProber` (one asyncio task) per running container instance that
has probes. TCP and HTTP probes connect to 127.0.0.1 from inside the container's
network namespace (the pod's own, or the node's with hostNetwork), found by
`runtime.netns_path(cid)` (`edgecore.podnet.connect_in_netns`); a runtime whose
capabilities lack `netns` (fakes) is probed on the agent's own 127.0.0.1.

- exec: `runtime.exec(cid, command, timeout_s=timeoutSeconds)`; exit 0 = success.
- tcpSocket: a TCP connect to 127.0.0.1:port within timeoutSeconds.
- httpGet: `GET path` on 127.0.0.1:port (HTTP/1.1, Connection: close); a status of
  200-399 within timeoutSeconds = success.

Rules (as in the kubelet): nothing runs before `initialDelaySeconds` after the
container started; while a startup probe has not succeeded, only it runs;
readiness flips to ready after `successThreshold` consecutive successes and back
after `failureThreshold` consecutive failures; `failureThreshold` consecutive
failures of the liveness (or startup) probe mark the container unhealthy and
stop probing it: the reconciler then stops it and restarts it per the restart
policy (counted as a restart, "Unhealthy: ..." in the message). A container
without a readiness probe is ready once started. Every change of started /
ready / unhealthy calls `on_change` (the reconciler reports it).

The prober state is not persisted: after an agent restart probes start again
from "not ready", as the kubelet does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from edgecore.podnet import connect_in_netns
from edgecore.runtime.errors import ContainerRuntimeError, ExecTimeout
from edgecore.runtime.types import ExtendedRuntime
from shared.pods import Container, Probe

log = logging.getLogger(__name__)

ProbeFn = Callable[[str, Container, Probe], Awaitable[tuple[bool, str]]]
MAX_RESPONSE_LINE = 1024


@dataclass
class _Track:
    kind: str  # startup | liveness | readiness
    probe: Probe
    next_at: float
    successes: int = 0
    failures: int = 0
    last_message: str = ""


@dataclass
class ProbeState:
    started: bool
    ready: bool
    unhealthy: str | None = None


@dataclass
class ContainerProber:
    """The probes of one container instance; `step(now)` runs those due at `now`."""

    cid: str
    container: Container
    started_at: float  # wall clock of the container's start
    probe: ProbeFn
    on_change: Callable[[], None]
    clock: Callable[[], float] = time.time
    instance: str | None = None  # identity of the running process (None: not seen yet)
    tracks: list[_Track] = field(default_factory=list)
    state: ProbeState = field(init=False)

    def __post_init__(self) -> None:
        c = self.container
        self.state = ProbeState(started=c.startup_probe is None,
                                ready=c.startup_probe is None and c.readiness_probe is None)
        for kind, p in (("startup", c.startup_probe), ("liveness", c.liveness_probe),
                        ("readiness", c.readiness_probe)):
            if p is not None:
                self.tracks.append(_Track(kind, p, self.started_at + p.initial_delay_seconds))

    def _active(self) -> list[_Track]:
        if self.state.unhealthy is not None:
            return []
        if not self.state.started:
            return [t for t in self.tracks if t.kind == "startup"]
        return [t for t in self.tracks if t.kind != "startup"]

    def next_due(self) -> float | None:
        self._bound(self.clock())
        return min((t.next_at for t in self._active()), default=None)

    def _bound(self, now: float) -> None:
        """The wall clock can go back (an NTP step, a device booting offline without a
        battery-backed clock): no probe is due further off than its period (or its
        initial delay), or a liveness probe would pause until the clock catches up."""
        for t in self.tracks:
            t.next_at = min(t.next_at, now + max(t.probe.period_seconds,
                                                 t.probe.initial_delay_seconds))

    async def step(self, now: float | None = None) -> None:
        """Run every active probe due at `now` (concurrently) and apply the results."""
        now = self.clock() if now is None else now
        self._bound(now)
        due = [t for t in self._active() if t.next_at <= now]
        if not due:
            return
        results = await asyncio.gather(*(self.probe(self.cid, self.container, t.probe)
                                         for t in due))
        before = (self.state.started, self.state.ready, self.state.unhealthy)
        for t, (ok, message) in zip(due, results, strict=True):
            t.next_at = now + t.probe.period_seconds
            t.last_message = message
            if ok:
                t.successes, t.failures = t.successes + 1, 0
            else:
                t.successes, t.failures = 0, t.failures + 1
            self._apply(t, ok, now)
        if (self.state.started, self.state.ready, self.state.unhealthy) != before:
            self.on_change()

    def _apply(self, t: _Track, ok: bool, now: float) -> None:
        p = t.probe
        if t.kind == "startup":
            if ok:
                self.state.started = True
                self.state.ready = self.container.readiness_probe is None
                for other in self.tracks:  # the others start now (or after their delay)
                    if other.kind != "startup":
                        other.next_at = max(other.next_at, now)
            elif t.failures >= p.failure_threshold:
                self._unhealthy(f"startup probe failed {t.failures} times: {t.last_message}")
        elif t.kind == "liveness":
            if not ok and t.failures >= p.failure_threshold:
                self._unhealthy(f"liveness probe failed {t.failures} times: {t.last_message}")
        elif ok and t.successes >= p.success_threshold:
            self.state.ready = True
        elif not ok and t.failures >= p.failure_threshold:
            self.state.ready = False

    def _unhealthy(self, message: str) -> None:
        log.info("container %s is unhealthy: %s", self.cid, message)
        self.state.unhealthy = f"Unhealthy: {message}"
        self.state.ready = False

    async def run(self) -> None:
        """Probe until cancelled or unhealthy."""
        while True:
            due = self.next_due()
            if due is None:
                return
            await asyncio.sleep(max(0.0, due - self.clock()))
            await self.step()


class ProbeManager:
    """Owns the prober tasks; the reconciler tells it which instances are running."""

    def __init__(
        self, *, probe: ProbeFn, on_change: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time, spawn: bool = True, node: str = "",
    ) -> None:
        self.probe = probe
        self.on_change = on_change
        self.clock = clock
        self.spawn = spawn  # False: tests drive `step` themselves
        self.node = node
        self.probers: dict[str, ContainerProber] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    @staticmethod
    def has_probes(c: Container) -> bool:
        return any(p is not None for p in (c.startup_probe, c.liveness_probe, c.readiness_probe))

    def ensure(self, cid: str, c: Container, *, started_at: float | None,
               instance: str | None) -> None:
        """Probe this running instance (a new `instance` of `cid` starts afresh)."""
        if not self.has_probes(c):
            self.forget(cid)
            return
        cur = self.probers.get(cid)
        if cur is not None and cur.container == c and (
                cur.instance == instance or cur.instance is None or instance is None):
            if cur.instance is None:
                cur.instance = instance
            return
        self.forget(cid)
        p = self.probers[cid] = ContainerProber(
            cid=cid, container=c, started_at=started_at if started_at is not None else self.clock(),
            probe=self.probe, on_change=self.on_change, clock=self.clock, instance=instance)
        if self.spawn:
            self._tasks[cid] = asyncio.create_task(
                p.run(), name=f"edgecore[{self.node}].prober.{cid}")

    def forget(self, cid: str) -> None:
        self.probers.pop(cid, None)
        task = self._tasks.pop(cid, None)
        if task is not None:
            task.cancel()

    def prune(self, keep: set[str]) -> None:
        for cid in set(self.probers) - keep:
            self.forget(cid)

    def state(self, cid: str, c: Container) -> ProbeState:
        """started/ready/unhealthy of a running container (no probes: started and ready)."""
        p = self.probers.get(cid)
        if p is None:
            has = self.has_probes(c)
            if not has:
                return ProbeState(started=True, ready=True)
            return ProbeState(started=c.startup_probe is None,
                              ready=c.startup_probe is None and c.readiness_probe is None)
        return p.state

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        self.probers.clear()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# -- the probe handlers ---------------------------------------------------------------


def make_probe(runtime: ExtendedRuntime, *, host: str = "127.0.0.1") -> ProbeFn:
    """The real probe function: exec through the runtime, TCP and HTTP on `host`
    (inside the container's network namespace if the runtime can name it)."""

    netns_of = runtime.netns_path if runtime.capabilities.netns else None

    async def probe(cid: str, c: Container, p: Probe) -> tuple[bool, str]:
        timeout = float(p.timeout_seconds)
        try:
            if p.exec is not None:
                return await exec_probe(runtime, cid, p.exec.command, timeout)
            netns = netns_of(cid) if netns_of is not None else None
            if p.tcp_socket is not None:
                return await tcp_probe(host, c.probe_port(p.tcp_socket.port), timeout,
                                       netns=netns)
            assert p.http_get is not None
            return await http_probe(host, c.probe_port(p.http_get.port), p.http_get.path,
                                    timeout, netns=netns)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a probe never crashes the prober
            return False, f"probe error: {exc}"

    return probe


async def exec_probe(runtime: ExtendedRuntime, cid: str, argv: list[str],
                     timeout: float) -> tuple[bool, str]:
    if not runtime.capabilities.exec:
        return False, "the runtime cannot exec in containers"
    try:
        rc, out, err = await runtime.exec(cid, list(argv), timeout_s=timeout)
    except ExecTimeout:
        return False, f"command timed out after {timeout:g}s"
    except ContainerRuntimeError as exc:
        return False, f"exec failed: {exc}"
    if rc == 0:
        return True, ""
    tail = (err or out or b"").decode(errors="replace").strip()[-200:]
    return False, f"command exited {rc}" + (f": {tail}" if tail else "")


async def _open(host: str, port: int,
                netns: str | None) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    if netns is None:
        return await asyncio.open_connection(host, port)
    return await connect_in_netns(netns, host, port)


async def tcp_probe(host: str, port: int, timeout: float, *,
                    netns: str | None = None) -> tuple[bool, str]:
    try:
        async with asyncio.timeout(timeout):
            _, writer = await _open(host, port, netns)
    except TimeoutError:
        return False, f"tcp connect to {host}:{port} timed out after {timeout:g}s"
    except OSError as exc:
        return False, f"tcp connect to {host}:{port}: {exc.strerror or exc}"
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True, ""


async def http_probe(host: str, port: int, path: str, timeout: float, *,
                     netns: str | None = None) -> tuple[bool, str]:
    url = f"http://{host}:{port}{path}"
    writer = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await _open(host, port, netns)
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                         "User-Agent: edgefed-probe/1\r\nAccept: */*\r\n"
                         "Connection: close\r\n\r\n".encode())
            await writer.drain()
            line = await reader.readline()
    except TimeoutError:
        return False, f"GET {url} timed out after {timeout:g}s"
    except OSError as exc:
        return False, f"GET {url}: {exc.strerror or exc}"
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    parts = line[:MAX_RESPONSE_LINE].decode(errors="replace").split()
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        return False, f"GET {url}: not an HTTP response"
    code = int(parts[1])
    if 200 <= code < 400:
        return True, ""
    return False, f"GET {url}: HTTP {code}"
