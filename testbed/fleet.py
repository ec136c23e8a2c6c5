"""A whole local fleet: mosquitto, an OCI registry seeded with busybox, cloudcore and
N real edge agents, each agent its own host in a network namespace when we are root.

Used by `testbed up`, `make demo` and the integration tests. Every process logs to a
file under the work directory; `stop()` undoes everything, containers included.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testbed import netns
from testbed.broker import Mosquitto
from testbed.ports import free_port, wait_port
from testbed.procs import Proc


@dataclass
class FleetSettings:
    nodes: int = 3
    workdir: Path = Path("var/testbed")
    use_netns: bool | None = None  # None: when root and iproute2 is there
    heartbeat_s: float = 5.0  # agents' heartbeat; cloudcore marks NotReady after 3x
    http_port: int = 0  # 0: a free port
    with_registry: bool = True
    node_prefix: str = "edge"
    labels: dict[str, str] = field(default_factory=lambda: {"edgefed.io/role": "edge"})
    cloud_args: tuple[str, ...] = ()
    agent_args: tuple[str, ...] = ()
    state_tmpfs_mib: int = 0  # >0: each agent's state dir is its own tmpfs of this size
    # (root only), so fault injection can fill an agent's disk without touching the host's


@dataclass
class Agent:
    name: str
    state_dir: Path
    proc: Proc
    host: netns.Host | None
    address: str  # where its hostNetwork pods are reachable


class Fleet:
    def __init__(self, settings: FleetSettings) -> None:
        self.s = settings
        self.workdir = settings.workdir.resolve()
        self.use_netns = netns.available() if settings.use_netns is None else settings.use_netns
        self.net: netns.Network | None = None
        self.broker: Mosquitto | None = None
        self.registry: Any = None
        self.image = ""
        self.cloud: Proc | None = None
        self.agents: list[Agent] = []
        self.api = ""

    # ---- start -------------------------------------------------------------
    def start(self) -> Fleet:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        hosts: tuple[str, ...] = ("127.0.0.1",)
        if self.use_netns:
            self.net = netns.Network(os.getpid() % 200 + 20).up()
            hosts = (self.net.gateway, "127.0.0.1")
        self.broker = Mosquitto(hosts=hosts, workdir=self.workdir / "mosquitto").start()
        if self.s.with_registry:
            from testbed.registry import LocalRegistry, seed_busybox

            self.registry = LocalRegistry(host=hosts[0])
            self.registry.start()
            self.image = seed_busybox(self.registry)
        self.start_cloud()
        for i in range(self.s.nodes):
            self.add_agent(i)

    @property
    def broker_host(self) -> str:
        assert self.broker is not None
        return self.broker.host

    def start_cloud(self) -> None:
        port = self.s.http_port or free_port()
        self.api = f"http://127.0.0.1:{port}"
        assert self.broker is not None
        argv = [sys.executable, "-m", "cloudcore", "--state-dir", str(self.workdir / "cloud"),
                "--mqtt-host", "127.0.0.1", "--mqtt-port", str(self.broker.port),
                "--http-host", "127.0.0.1", "--http-port", str(port),
                "--heartbeat", str(self.s.heartbeat_s), *self.s.cloud_args]
        self.cloud = Proc("cloudcore", argv, log=self.workdir / "logs" / "cloudcore.log").start()
        self.wait_http(f"{self.api}/readyz", timeout=30, proc=self.cloud)

    def agent_argv(self, name: str, state_dir: Path) -> list[str]:
        assert self.broker is not None
        argv = [sys.executable, "-m", "edgecore", "run", "--name", name,
                "--state-dir", str(state_dir), "--mqtt-host", self.broker_host,
                "--mqtt-port", str(self.broker.port), "--heartbeat", str(self.s.heartbeat_s)]
        for k, v in self.s.labels.items():
            argv += ["--label", f"{k}={v}"]
        if self.registry is not None:
            argv += ["--insecure-registry", self.registry.address]
        return [*argv, *self.s.agent_args]

    def add_agent(self, index: int) -> Agent:
        name = f"{self.s.node_prefix}-{index + 1}"
        state = self.workdir / "nodes" / name
        host = self.net.add_host(index) if self.net else None
        if self.s.state_tmpfs_mib and not os.path.ismount(state):
            state.mkdir(parents=True, exist_ok=True)
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.s.state_tmpfs_mib}m",
                            "tmpfs", str(state)], check=True, capture_output=True)
        argv = self.agent_argv(name, state)
        if host is not None:
            argv = [*host.nsenter(), *argv]
        proc = Proc(name, argv, log=self.workdir / "logs" / f"{name}.log").start()
        agent = Agent(name=name, state_dir=state, proc=proc, host=host,
                      address=host.address if host else "127.0.0.1")
        self.agents.append(agent)
        return agent

    def agent(self, name: str) -> Agent:
        return next(a for a in self.agents if a.name == name)

    def restart_agent(self, name: str, *, kill: bool = False) -> None:
        a = self.agent(name)
        a.proc.kill() if kill else a.proc.stop()
        a.proc.start()

    def restart_cloud(self, *, kill: bool = False) -> None:
        assert self.cloud is not None
        self.cloud.kill() if kill else self.cloud.stop()
        self.cloud.start()
        self.wait_http(f"{self.api}/readyz", timeout=30, proc=self.cloud)

    # ---- HTTP helpers ----------------------------------------------------------
    def wait_http(self, url: str, *, timeout: float, proc: Proc | None = None) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if proc is not None and not proc.alive():
                raise RuntimeError(f"{proc.name} exited during start:\n{proc.tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} not ready after {timeout} s")
            time.sleep(0.1)

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self.api}{path}", timeout=10) as r:
            return json.loads(r.read())

    def post(self, path: str, body: Any) -> Any:
        req = urllib.request.Request(f"{self.api}{path}", data=json.dumps(body).encode(),
                                     headers={"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    def delete(self, path: str) -> Any:
        req = urllib.request.Request(f"{self.api}{path}", method="DELETE")
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    def apply(self, docs: list[dict[str, Any]]) -> Any:
        return self.post("/api/v1/apply", {"documents": docs})

    def pods(self, selector: str = "") -> list[dict[str, Any]]:
        q = f"?labelSelector={selector}" if selector else ""
        return list(self.get(f"/api/v1/pods{q}")["items"])

    def nodes(self) -> list[dict[str, Any]]:
        return list(self.get("/api/v1/nodes")["items"])

    def wait(self, check: Any, *, timeout: float, what: str, interval: float = 0.2) -> Any:
        """Poll `check()` until it returns something truthy; TimeoutError names `what`."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = check()
            except (urllib.error.URLError, OSError) as exc:
                last = exc
            else:
                if last:
                    return last
            time.sleep(interval)
        raise TimeoutError(f"{what}: not reached after {timeout} s (last: {last!r})")

    def wait_nodes_ready(self, *, timeout: float = 60) -> None:
        want = {a.name for a in self.agents}

        def ready() -> bool:
            got = {n["metadata"]["name"] for n in self.nodes()
                   if n.get("status", {}).get("ready") == "Ready"}
            return want <= got

        self.wait(ready, timeout=timeout, what=f"nodes {sorted(want)} Ready")

    # ---- stop ----------------------------------------------------------------
    def stop(self) -> None:
        for a in self.agents:
            a.proc.stop()
        for a in self.agents:
            remove_containers(a.state_dir)
            if self.s.state_tmpfs_mib and os.path.ismount(a.state_dir):
                subprocess.run(["umount", "-l", str(a.state_dir)], check=False,
                               capture_output=True)
        if self.cloud:
            self.cloud.stop()
        if self.registry is not None:
            self.registry.stop()
        if self.broker:
            self.broker.stop()
        if self.net:
            self.net.close()
        self.agents.clear()

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Fleet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def remove_containers(state_dir: Path) -> None:
    """Stop and delete every container an agent left behind (they outlive agents)."""
    from edgecore.runtime import CrunRuntime

    root = state_dir / "runtime"
    if not root.exists():
        return

    async def clean() -> None:
        rt = CrunRuntime(root)
        for c in await rt.list():
            await rt.stop(c.id, grace_s=1)
            await rt.remove(c.id)

    asyncio.run(clean())


__all__ = ["Agent", "Fleet", "FleetSettings", "remove_containers", "wait_port"]
