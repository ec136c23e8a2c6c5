"""A whole local fleet: mosquitto, an OCI registry seeded with busybox, cloudcore and
N real edge agents, each agent its own host in a network namespace when we are root.

Used by `testbed up`, `make demo` and the integration tests. Every process logs to a
file under the work directory; `stop()` undoes everything, containers included.

Secure by default, as docs/security.md describes production: the fleet CA is made by
`cloudcore pki broker` (which also writes the broker's TLS files), mosquitto takes no
anonymous client and reads the password file and ACL cloudcore keeps, cloudcore serves
HTTPS and needs a token (the admin token it writes at first start), and every agent
joins with a one-use join token bound to its name (`edgecore join`, which pins the CA
by the token's third part) before it runs from its state dir. fedctl is handed the
server, token and CA through a context file, `WORKDIR/fedctl.yaml`
(`export FEDCTL_CONFIG=...`). `FleetSettings(insecure=True)` is the old open fleet:
anonymous plain MQTT, an open plain-HTTP API, unjoined agents; it warns.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import secrets
import shutil
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testbed import netns
from testbed.broker import BrokerSecurity, Mosquitto
from testbed.ports import free_port, wait_port
from testbed.procs import Proc

log = logging.getLogger("testbed.fleet")

INSECURE_WARNING = """\
!!! INSECURE fleet (--insecure): anonymous plain MQTT, an open plain-HTTP API (anyone
!!! is admin), agents that run unjoined and take unsealed messages. Anyone on this
!!! machine or its bridge can read every Secret, run commands in any pod and forge
!!! nodes. Never expose it; drop --insecure for the secure default."""


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
    agent_python: str | None = None  # the agents' interpreter (None: this one), e.g. an
    # edge-only venv's, to measure an agent as `pip install edgefed[edge]` has it
    state_tmpfs_mib: int = 0  # >0: each agent's state dir is its own tmpfs of this size
    # (root only), so fault injection can fill an agent's disk without touching the host's
    insecure: bool = False  # the old open fleet (module doc); warns
    node_certs: bool = False  # agents log in to the broker with client certificates
    # from the fleet CA (cloudcore --node-certs, the broker's require_certificate listener)
    broker_probe: bool = False  # tests: a loopback broker listener where user `probe` has
    # access to every topic ("a client with broker access"; see `probe_mqtt`)


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
        self.ca_file: Path | None = None  # the fleet CA (secure fleets)
        self.admin_token: str | None = None
        self._ssl: ssl.SSLContext | None = None

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
        if self.s.insecure:
            log.warning(INSECURE_WARNING)
            self.broker = Mosquitto(hosts=hosts, workdir=self.workdir / "mosquitto",
                                    insecure=True).start()
        else:
            sec = BrokerSecurity(client_cert_port=0 if self.s.node_certs else None,
                                 probe_password=secrets.token_urlsafe(16)
                                 if self.s.broker_probe else None)
            self.broker = Mosquitto(hosts=hosts, workdir=self.workdir / "mosquitto",
                                    security=sec)
            self._pki_broker(self.broker.tls_dir, hosts)
            self.broker.start()
        if self.s.with_registry:
            from testbed.registry import LocalRegistry, seed_busybox

            self.registry = LocalRegistry(host=hosts[0])
            self.registry.start()
            self.image = seed_busybox(self.registry)
        self.start_cloud()
        for i in range(self.s.nodes):
            self.add_agent(i)

    @property
    def cloud_state(self) -> Path:
        return self.workdir / "cloud"

    @property
    def secure(self) -> bool:
        return not self.s.insecure

    def _pki_broker(self, out: Path, hosts: tuple[str, ...]) -> None:
        """The fleet CA (made on first use in the cloud's state dir) and the broker's TLS
        files, through cloudcore's own subcommand."""
        argv = [sys.executable, "-m", "cloudcore", "pki", "broker", "--state-dir",
                str(self.cloud_state), "--out", str(out)]
        for h in (*hosts, "localhost"):
            argv += ["--host", h]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        if r.returncode != 0:
            raise RuntimeError(f"cloudcore pki broker failed: {r.stderr.strip()}")
        self.ca_file = self.cloud_state / "pki" / "ca.crt"
        self._ssl = ssl.create_default_context(cafile=str(self.ca_file))

    @property
    def broker_host(self) -> str:
        assert self.broker is not None
        return self.broker.host

    def start_cloud(self) -> None:
        port = self.s.http_port or free_port()
        assert self.broker is not None
        argv = [sys.executable, "-m", "cloudcore", "--state-dir", str(self.cloud_state),
                "--mqtt-host", "127.0.0.1", "--mqtt-port", str(self.broker.port),
                "--http-host", "127.0.0.1", "--http-port", str(port),
                "--heartbeat", str(self.s.heartbeat_s)]
        if self.s.insecure:
            self.api = f"http://127.0.0.1:{port}"
            argv += ["--insecure"]
        else:
            self.api = f"https://127.0.0.1:{port}"
            broker_port = self.broker.cert_port if self.s.node_certs else self.broker.port
            argv += ["--mqtt-tls", "--mosquitto-passwd", str(self.broker.passwd),
                     "--mosquitto-acl", str(self.broker.acl),
                     "--advertise-mqtt", f"mqtts://{self.broker_host}:{broker_port}"]
            if self.s.node_certs:  # the CRL of deleted nodes' certificates goes beside
                # the broker's files, which cloudcore then keeps renewed too
                argv += ["--node-certs", "--broker-cert-dir", str(self.broker.tls_dir)]
        argv += list(self.s.cloud_args)
        self.cloud = Proc("cloudcore", argv, log=self.workdir / "logs" / "cloudcore.log").start()
        self.wait_http(f"{self.api}/readyz", timeout=30, proc=self.cloud)
        if self.secure:
            self.admin_token = (self.cloud_state / "admin.token").read_text().strip()
        self.write_context()

    def write_context(self) -> Path:
        """`WORKDIR/fedctl.yaml`: one context, `testbed`, with the API's URL, the admin
        token and the fleet CA, for `FEDCTL_CONFIG=... fedctl ...` (mode 0600)."""
        ctx: dict[str, Any] = {"server": self.api}
        if self.admin_token:
            ctx["token"] = self.admin_token
        if self.ca_file is not None and self.secure:
            ctx["certificate-authority"] = str(self.ca_file)
        data = {"current-context": "testbed", "contexts": {"testbed": ctx}}
        fd = os.open(self.context_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)  # JSON is YAML; fedctl reads either
            f.write("\n")
        return self.context_file

    @property
    def context_file(self) -> Path:
        return self.workdir / "fedctl.yaml"

    def fedctl_env(self) -> dict[str, str]:
        """The environment that points fedctl at this fleet (its context file)."""
        return {"FEDCTL_CONFIG": str(self.context_file)}

    def fedctl(self, *argv: str, stdin: str | None = None, check: bool = True,
               timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run fedctl against this fleet through its context file."""
        env = {k: v for k, v in os.environ.items()
               if k not in ("FEDCTL_SERVER", "FEDCTL_TOKEN", "FEDCTL_CA", "FEDCTL_CONTEXT")}
        r = subprocess.run([sys.executable, "-m", "fedctl", *argv], input=stdin,
                           capture_output=True, text=True, timeout=timeout, check=False,
                           env={**env, **self.fedctl_env()})
        if check and r.returncode != 0:
            raise RuntimeError(f"fedctl {' '.join(argv)} failed ({r.returncode}): "
                               f"{r.stderr.strip()}")
        return r

    def probe_mqtt(self) -> dict[str, Any]:
        """aiomqtt.Client keyword arguments for a client with access to every topic (the
        test probe of `broker_probe`; in an insecure fleet anyone is one)."""
        assert self.broker is not None
        if self.broker.insecure:
            return {"hostname": self.broker.host, "port": self.broker.port}
        sec = self.broker.security
        assert sec is not None and self.broker.probe_port, "FleetSettings(broker_probe=True)"
        return {"hostname": "127.0.0.1", "port": self.broker.probe_port, "username": "probe",
                "password": sec.probe_password, "tls_context": self.broker_tls()}

    def broker_tls(self) -> ssl.SSLContext | None:
        """A client TLS context that trusts the broker (the fleet CA)."""
        if self.broker is None or self.broker.ca_file is None:
            return None
        return ssl.create_default_context(cafile=str(self.broker.ca_file))

    def node_config(self, name: str) -> dict[str, Any]:
        """What `edgecore join` wrote for a node (its credentials and key): a node's
        own secrets, for tests that act as that node."""
        return dict(json.loads((self.agent(name).state_dir / "edgecore.json").read_text()))

    def agent_argv(self, name: str, state_dir: Path) -> list[str]:
        assert self.broker is not None
        python = self.s.agent_python or sys.executable
        if self.secure:  # everything else comes from the state dir `edgecore join` wrote;
            # the broker's address too, but it gets a new port on every start of the fleet
            port = self.broker.cert_port if self.s.node_certs else self.broker.port
            argv = [python, "-m", "edgecore", "run", "--state-dir", str(state_dir),
                    "--mqtt-host", self.broker_host, "--mqtt-port", str(port),
                    "--heartbeat", str(self.s.heartbeat_s)]
        else:
            argv = [python, "-m", "edgecore", "run", "--insecure", "--name", name,
                    "--state-dir", str(state_dir), "--mqtt-host", self.broker_host,
                    "--mqtt-port", str(self.broker.port), "--heartbeat", str(self.s.heartbeat_s)]
            for k, v in self.s.labels.items():
                argv += ["--label", f"{k}={v}"]
        if self.registry is not None:
            argv += ["--insecure-registry", self.registry.address]
        return [*argv, *self.s.agent_args]

    def join_token(self, *, name: str | None = None, uses: int = 1, ttl: float = 600,
                   labels: dict[str, str] | None = None) -> str:
        """A join token made through the API with the admin token (labels: the fleet's;
        the cloud owns edgefed.io/* labels, so the token, not the node, sets them)."""
        body: dict[str, Any] = {"ttlSeconds": ttl, "uses": uses, "description": "testbed",
                                "labels": self.s.labels if labels is None else labels}
        if name is not None:
            body["name"] = name
        return str(self.post("/api/v1/jointokens", body)["token"])

    def join(self, name: str, state: Path, *, token: str | None = None) -> None:
        """`edgecore join` for `name` into `state` (run in the host's network: the API
        listens on loopback). A state dir from an earlier run of this same cloud is kept;
        otherwise the cloud forgets the node and it joins afresh."""
        conf = state / "edgecore.json"
        known = self._exists(f"/api/v1/nodes/{name}")
        if conf.exists() and known and self._same_ca(conf):
            return
        if known:
            self.delete(f"/api/v1/nodes/{name}")
        conf.unlink(missing_ok=True)
        state.mkdir(parents=True, exist_ok=True)
        token = token or self.join_token(name=name)
        r = subprocess.run([sys.executable, "-m", "edgecore", "join", "--cloud", self.api,
                            "--token", token, "--name", name, "--state-dir", str(state)],
                           capture_output=True, text=True, timeout=60, check=False)
        if r.returncode != 0:
            raise RuntimeError(f"edgecore join {name} failed ({r.returncode}): "
                               f"{(r.stderr or r.stdout).strip()}")

    def join_many(self, names: list[str], *, threads: int = 16) -> dict[str, Any]:
        """Join every node in `names` through the API with one multi-use join token, as
        `edgecore join` would (several at once); node -> {key, username, password}, the
        `--keys` file of the simulator. Joins from one address are rate-limited: start
        cloudcore with a high `--join-rate`/`--join-burst` for thousands."""
        token = self.join_token(uses=len(names), ttl=3600, labels={})

        def join(name: str) -> tuple[str, dict[str, Any]]:
            req = urllib.request.Request(
                f"{self.api}/api/v1/join", headers={"content-type": "application/json"},
                data=json.dumps({"token": token, "name": name}).encode())
            for attempt in range(5):
                try:
                    with self.urlopen(req, timeout=60, token="") as r:
                        body = json.loads(r.read())
                    break
                except urllib.error.HTTPError as exc:
                    if exc.code != 429 or attempt == 4:
                        raise RuntimeError(f"join {name}: HTTP {exc.code}: "
                                           f"{exc.read()[:200]!r}") from None
                    time.sleep(1 + attempt)
            return name, {"key": body["key"], **body["credentials"]}

        with ThreadPoolExecutor(threads) as pool:
            return dict(pool.map(join, names))

    def simulator_args(self, names: list[str], *, keys_file: Path) -> list[str]:
        """What `python -m testbed.simulator` needs for `names` on this fleet: nothing on
        an insecure one; on a secure one the nodes are joined (`join_many`), their keys
        and credentials written to `keys_file` (0600), and TLS against the fleet CA."""
        if not self.secure:
            return []
        keys = self.join_many(names)
        fd = os.open(keys_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(keys, out)
        assert self.broker is not None and self.broker.ca_file is not None
        time.sleep(1.5)  # cloudcore rewrites the broker's password file twice a second
        return ["--keys", str(keys_file), "--tls", "--ca-file", str(self.broker.ca_file)]

    def _same_ca(self, conf: Path) -> bool:
        try:
            ca = Path(json.loads(conf.read_text()).get("ca_file") or "")
            return self.ca_file is not None and ca.read_bytes() == self.ca_file.read_bytes()
        except (OSError, ValueError):
            return False

    def _exists(self, path: str) -> bool:
        try:
            self.get(path)
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return False
            raise
        return True

    def add_agent(self, index: int) -> Agent:
        name = f"{self.s.node_prefix}-{index + 1}"
        state = self.workdir / "nodes" / name
        host = self.net.add_host(index) if self.net else None
        if self.s.state_tmpfs_mib and not os.path.ismount(state):
            state.mkdir(parents=True, exist_ok=True)
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.s.state_tmpfs_mib}m",
                            "tmpfs", str(state)], check=True, capture_output=True)
        if self.secure:
            self.join(name, state)
        argv = self.agent_argv(name, state)
        if host is not None:
            argv = [*host.nsenter(), *argv]
        proc = Proc(name, argv, log=self.workdir / "logs" / f"{name}.log").start()
        agent = Agent(name=name, state_dir=state, proc=proc, host=host,
                      address=host.address if host else "127.0.0.1")
        self.agents.append(agent)
        if not self.secure and self.s.labels:
            self._label_unjoined(name, proc)
        return agent

    def _label_unjoined(self, name: str, proc: Proc) -> None:
        """An unjoined node (insecure fleet) registers with its first report, and the
        cloud ignores the protected labels (edgefed.io/...) it claims for itself: an
        admin sets them, as for any node, once it is there."""
        def registered() -> bool:
            if not proc.alive():
                raise RuntimeError(f"{name} exited during start:\n{proc.tail()}")
            return self._exists(f"/api/v1/nodes/{name}")
        self.wait(registered, timeout=60, what=f"{name} registered")
        req = urllib.request.Request(
            f"{self.api}/api/v1/nodes/{name}", method="PATCH",
            data=json.dumps({"metadata": {"labels": self.s.labels}}).encode(),
            headers={"content-type": "application/json"})
        with self.urlopen(req, timeout=30):
            pass

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
                with self.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if proc is not None and not proc.alive():
                raise RuntimeError(f"{proc.name} exited during start:\n{proc.tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} not ready after {timeout} s")
            time.sleep(0.1)

    def urlopen(self, url_or_path: str | urllib.request.Request, *, timeout: float = 10,
                token: str | None = None) -> Any:
        """urllib's urlopen against the API: verified against the fleet CA, with the
        admin token (or `token`; "" for none). A path is relative to the API."""
        req = url_or_path
        if isinstance(req, str):
            req = urllib.request.Request(req if "://" in req else f"{self.api}{req}")
        bearer = self.admin_token if token is None else token
        if bearer and not req.has_header("Authorization"):
            req.add_header("Authorization", f"Bearer {bearer}")
        return urllib.request.urlopen(req, timeout=timeout, context=self._ssl)

    def get(self, path: str) -> Any:
        with self.urlopen(path, timeout=10) as r:
            return json.loads(r.read())

    def post(self, path: str, body: Any) -> Any:
        req = urllib.request.Request(f"{self.api}{path}", data=json.dumps(body).encode(),
                                     headers={"content-type": "application/json"})
        with self.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    def delete(self, path: str) -> Any:
        req = urllib.request.Request(f"{self.api}{path}", method="DELETE")
        with self.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    def pod_page(self, pod: str, *, port: int, path: str = "/", namespace: str = "default",
                 timeout: float = 5) -> str:
        """What a pod serves over HTTP on `port`: at its own IP when it has one (its own
        network namespace) or its node's (hostNetwork), else from inside the pod with
        `fedctl exec ... wget` (authenticated end to end like every request to a node)."""
        obj = self.get(f"/api/v1/pods/{namespace}/{pod}")
        node = (obj.get("status") or {}).get("nodeName") or (obj.get("spec") or {}).get(
            "nodeName")
        ips = [(obj.get("status") or {}).get("podIP")]
        ips += [a.address for a in self.agents if a.name == node]
        for ip in filter(None, ips):
            try:
                with urllib.request.urlopen(f"http://{ip}:{port}{path}", timeout=timeout) as r:
                    return str(r.read().decode(errors="replace").strip())
            except (urllib.error.URLError, OSError):
                continue
        r = self.fedctl("exec", "-n", namespace, pod, "--", "wget", "-qO-",
                        f"http://127.0.0.1:{port}{path}", check=False, timeout=timeout + 30)
        if r.returncode != 0:
            raise OSError(f"pod {namespace}/{pod} serves nothing on port {port}: "
                          f"{r.stderr.strip()}")
        return r.stdout.strip()

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
        """Wait until every agent's node is Ready; a TimeoutError names those that are
        not and their state (NotReady and why, or not registered)."""
        want = {a.name for a in self.agents}
        behind: list[str] = []

        def ready() -> bool:
            status = {n["metadata"]["name"]: n.get("status") or {} for n in self.nodes()}
            behind[:] = [
                f"{name} ({status[name].get('ready', 'Unknown')}"
                + (f": {status[name]['reason']}" if status[name].get("reason") else "") + ")"
                if name in status else f"{name} (not registered)"
                for name in sorted(want) if status.get(name, {}).get("ready") != "Ready"]
            return not behind

        try:
            self.wait(ready, timeout=timeout, what="nodes Ready")
        except TimeoutError:
            raise TimeoutError(f"nodes not Ready after {timeout} s: "
                               f"{', '.join(behind) or '(the API did not answer)'}") from None

    # ---- stop ----------------------------------------------------------------
    def stop(self) -> None:
        """Stop everything; each step runs even when one before it failed (a failed
        container cleanup once left the network behind, and every later fleet of the
        test run failed to start on it). The first failure is raised at the end."""
        steps: list[tuple[str, Callable[[], object]]] = [
            (f"stop agent {a.name}", a.proc.stop) for a in self.agents]
        for a in self.agents:
            steps.append((f"clean up agent {a.name}", functools.partial(self._clean_agent, a)))
        if self.cloud:
            steps.append(("stop cloudcore", self.cloud.stop))
        if self.registry is not None:
            steps.append(("stop the registry", self.registry.stop))
        if self.broker:
            steps += [("stop the broker", self.broker.stop),
                      ("remove the broker", self.broker.remove)]
        if self.net:
            steps.append(("remove the network", self.net.close))
        first: BaseException | None = None
        for what, step in steps:
            try:
                step()
            except Exception as exc:
                log.error("fleet stop: %s failed: %s", what, exc)
                first = first or exc
        self.agents.clear()
        if first is not None:
            raise first

    def _clean_agent(self, a: Agent) -> None:
        remove_containers(a.state_dir, nsenter=a.host.nsenter() if a.host else None)
        unmount_below(a.state_dir)  # Secret volumes are tmpfs mounts of their own
        if self.s.state_tmpfs_mib and os.path.ismount(a.state_dir):
            subprocess.run(["umount", "-l", str(a.state_dir)], check=False,
                           capture_output=True)

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Fleet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def earlier_run(workdir: Path) -> list[str]:
    """What a fleet started in `workdir` takes over from an earlier run there, in words
    (empty: nothing): the cloud's state (its objects, nodes, tokens and fleet CA) and
    the agents' state dirs (their join, desired set and images)."""
    found: list[str] = []
    if (workdir / "cloud").is_dir() and any((workdir / "cloud").iterdir()):
        found.append("the cloud's state (workloads and other objects, nodes, tokens, CA)")
    nodes = sorted(p.name for p in (workdir / "nodes").glob("*") if p.is_dir())
    if nodes:
        found.append(f"the state of agents {', '.join(nodes)} (joins, images, pods)")
    return found


WORKDIR_MARKERS = ("cloud", "nodes", "logs", "mosquitto", "fedctl.yaml")
"""What a fleet's work directory holds; `clear_workdir` deletes nothing else."""


def clear_workdir(workdir: Path) -> None:
    """Remove an earlier run's work directory: the containers its agents left running,
    the mounts below it, then the files. Refuses a non-empty directory that does not
    look like a fleet's (no cloud/, nodes/, logs/, mosquitto/ or fedctl.yaml)."""
    workdir = workdir.resolve()
    if not workdir.exists():
        return
    entries = [p.name for p in workdir.iterdir()]
    if entries and not any(m in entries for m in WORKDIR_MARKERS):
        raise RuntimeError(f"{workdir} does not look like a testbed work directory "
                           f"(it holds {', '.join(sorted(entries)[:5])}); not deleting it")
    for state in sorted((workdir / "nodes").glob("*")):
        if state.is_dir():
            remove_containers(state)
            unmount_below(state)
            if os.path.ismount(state):
                subprocess.run(["umount", "-l", str(state)], check=False, capture_output=True)
    shutil.rmtree(workdir)


def unmount_below(directory: Path) -> None:
    """Lazily unmount whatever is mounted below `directory` (deepest first), so the
    directory can be deleted; the state dir's own tmpfs (state_tmpfs_mib) stays."""
    root = str(directory.resolve()) + "/"
    try:
        mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return
    for m in sorted((m for m in mounts if m.startswith(root)), key=len, reverse=True):
        subprocess.run(["umount", "-l", m], check=False, capture_output=True)


def remove_containers(state_dir: Path, *, nsenter: list[str] | None = None) -> None:
    """Stop and delete every container an agent left behind (they outlive agents), then
    their pods' network namespaces and veths, which outlive them too: a fleet stopped
    without this left one `/run/netns/edgefed-*` per pod behind (about a thousand a day
    of test runs here), and each of them lengthens the mount table that every wrapped
    crun call copies on a hybrid-cgroup host. `nsenter`: the node's namespace (testbed
    nodes live in one), where the pod network's cleanup runs, so that a pod with host
    ports does not make the host's namespace the node's bridge and nft table."""
    from edgecore.runtime import ContainerNotFound, ContainerRuntimeError, CrunRuntime

    root = state_dir / "runtime"

    async def clean() -> None:
        rt = CrunRuntime(root)
        for c in await rt.list():
            # a container listed a moment ago can be gone by now (its conmon reaped it
            # after the agent's kill): a CI run's teardown failed on that, and every
            # later fleet of the run then found this one's network still there
            with contextlib.suppress(ContainerNotFound):
                await rt.stop(c.id, grace_s=1)
            try:
                await rt.remove(c.id)
            except ContainerRuntimeError as exc:
                log.warning("could not remove container %s of %s: %s", c.id, state_dir, exc)

    if root.exists():
        asyncio.run(clean())
    if not (state_dir / "podnet").is_dir():
        return
    code = ("import asyncio, sys; from pathlib import Path; "
            "from edgecore.join import remove_pod_network; "
            "asyncio.run(remove_pod_network(Path(sys.argv[1])))")
    done = subprocess.run([*(nsenter or []), sys.executable, "-c", code, str(state_dir)],
                          capture_output=True, text=True, check=False)
    if done.returncode:
        log.warning("could not remove the pod network of %s: %s", state_dir,
                    done.stderr.strip()[-300:])


__all__ = ["Agent", "Fleet", "FleetSettings", "clear_workdir", "earlier_run",
           "remove_containers", "wait_port"]
