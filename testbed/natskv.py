"""Real nats-server processes for the shards' shared state (JetStream KV, issue 14).

`NatsKV` starts one server, or a cluster of N with routes, on free loopback ports, each
with JetStream and nothing else (no MQTT listener: that is `testbed.broker.NatsCluster`,
the broker-tier variant `bench brokers` uses, whose client port is plain and whose
users are the fleet's MQTT identities). Secure by default, like the rest of the
testbed:

- the client listener speaks TLS only, with a server certificate from the fleet CA
  (`cloudcore.auth.pki.FleetCA`, made in `rundir/pki` unless a CA directory is given);
- no anonymous access: `users` (name -> password) are the only logins, each allowed the
  whole account (a shard is a service identity);
- routes between servers need a route user and password of their own, so nothing else
  on the machine can join the cluster. They are not encrypted: they stay on loopback
  here (a production cluster puts TLS on its routes, with a certificate valid for both
  server and client authentication, which the fleet CA's broker certificate is not).

`insecure=True` gives plain `nats://` and anonymous access, and says so in the log.

`start()` returns once every server answers `/healthz` (JetStream ready, a metadata
leader elected on a cluster), or raises RuntimeError with the servers' logs.
`kill(i)` (SIGKILL) and `restart(i)` are for fault tests.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from testbed.ports import free_port, wait_port
from testbed.procs import ServerGroup

log = logging.getLogger("testbed.nats")


def _quote(text: str) -> str:
    if any(c in text for c in '"\\\n'):
        raise ValueError(f"{text!r}: no quotes, backslashes or newlines in a NATS config value")
    return f'"{text}"'


class NatsKV(ServerGroup):
    """`servers` nats-server processes with JetStream, as a context manager.

    `urls` is what a client (`cloudcore.cluster.kv.KVSettings.urls`) connects to;
    `ca_file` the fleet CA certificate to verify them with."""

    def __init__(self, *, rundir: Path, servers: int = 1, users: dict[str, str] | None = None,
                 ca_dir: Path | None = None, insecure: bool = False,
                 host: str = "127.0.0.1", jetstream_memory_mb: int = 256,
                 jetstream_file_mb: int = 1024) -> None:
        if servers < 1:
            raise ValueError("servers: at least 1")
        if shutil.which("nats-server") is None:
            raise RuntimeError("nats-server is not installed (apt-get install nats-server)")
        self.rundir = Path(rundir)
        self.rundir.mkdir(parents=True, exist_ok=True)
        self.servers = servers
        self.host = host
        self.insecure = insecure
        self.users = dict(users or {}) if not insecure else {}
        if not insecure and not self.users:
            self.users = {"cloudcore": secrets.token_urlsafe(18)}
        self.js_memory_mb = jetstream_memory_mb
        self.js_file_mb = jetstream_file_mb
        self.client_ports = [free_port(host) for _ in range(servers)]
        self.cluster_ports = [free_port(host) for _ in range(servers)]
        self.http_ports = [free_port(host) for _ in range(servers)]
        self._route_password = secrets.token_urlsafe(18)
        self.tls_dir = self.rundir / "tls"
        self.ca_file: Path | None = None
        if not insecure:
            from cloudcore.auth.pki import FleetCA

            ca = FleetCA.open(ca_dir or self.rundir / "pki")
            files = ca.write_broker_certs(self.tls_dir, [host, "localhost"])
            self.ca_file = files["ca"]
            self._cert, self._key = files["cert"], files["key"]
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * servers

    # -- what clients need -------------------------------------------------------------

    @property
    def urls(self) -> list[str]:
        scheme = "nats" if self.insecure else "tls"
        return [f"{scheme}://{self.host}:{p}" for p in self.client_ports]

    def url(self, i: int) -> str:
        return self.urls[i]

    @property
    def user(self) -> str | None:
        return next(iter(self.users), None)

    @property
    def password(self) -> str | None:
        return self.users.get(self.user) if self.user else None

    def password_file(self, user: str | None = None) -> Path:
        """A 0600 file holding the user's password (for `--nats-password-file`)."""
        name = user or self.user
        if name is None:
            raise ValueError("an insecure server has no users")
        path = self.rundir / f"{name}.password"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.users[name] + "\n")
        return path

    # -- configuration -----------------------------------------------------------------

    def name(self, i: int) -> str:
        return f"kv-{i}"

    def log(self, i: int) -> Path:
        return self.rundir / f"{self.name(i)}.log"

    def config(self, i: int) -> str:
        h = self.host
        tls = ""
        if not self.insecure:
            tls = (f"tls {{ cert_file: {_quote(str(self._cert))}, "
                   f"key_file: {_quote(str(self._key))}, "
                   f"ca_file: {_quote(str(self.ca_file))}, timeout: 5 }}")
        lines = [f"server_name: {_quote(self.name(i))}",
                 f"listen: {h}:{self.client_ports[i]}",
                 f"http: {h}:{self.http_ports[i]}",
                 "jetstream {",
                 f"  store_dir: {_quote(str(self.rundir / f'js-{i}'))}",
                 f"  max_memory_store: {self.js_memory_mb}MB",
                 f"  max_file_store: {self.js_file_mb}MB",
                 "}"]
        if tls:
            lines.append(tls)
        if self.users:
            users = ", ".join(f"{{user: {_quote(u)}, password: {_quote(p)}}}"
                              for u, p in self.users.items())
            lines += ["authorization {", f"  users: [{users}]", "}"]
        if self.servers > 1:
            cred = "" if self.insecure else f"route:{self._route_password}@"
            routes = ", ".join(f"nats-route://{cred}{h}:{p}"
                               for j, p in enumerate(self.cluster_ports) if j != i)
            lines += ["cluster {", '  name: "edgefed-kv"', f"  listen: {h}:{self.cluster_ports[i]}",
                      f"  routes: [{routes}]"]
            if not self.insecure:
                lines.append("  authorization { user: \"route\", password: "
                             f"{_quote(self._route_password)} }}")
            lines.append("}")
        return "\n".join(lines) + "\n"

    # -- processes ---------------------------------------------------------------------

    def _spawn(self, i: int) -> None:
        conf = self.rundir / f"{self.name(i)}.conf"
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.config(i))
        with self.log(i).open("ab") as out:
            self.procs[i] = subprocess.Popen(
                ["nats-server", "-c", str(conf), "-l", str(self.log(i))],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)

    def healthy(self, i: int) -> bool:
        try:
            with urllib.request.urlopen(
                    f"http://{self.host}:{self.http_ports[i]}/healthz", timeout=2) as r:
                return bool(json.load(r).get("status") == "ok")
        except (OSError, ValueError, urllib.error.URLError):
            return False

    def wait_ready(self, indexes: list[int] | None = None, *, timeout: float = 60.0) -> None:
        indexes = list(range(self.servers)) if indexes is None else indexes
        deadline = time.monotonic() + timeout
        try:
            for i in indexes:
                wait_port(self.host, self.client_ports[i],
                          timeout=max(1.0, deadline - time.monotonic()))
            while not all(self.healthy(i) for i in indexes):
                dead = [self.name(i) for i in indexes
                        if self.procs[i] is None or self.procs[i].poll() is not None]  # type: ignore[union-attr]
                if dead or time.monotonic() > deadline:
                    raise TimeoutError(f"exited: {dead}" if dead else
                                       f"JetStream not ready after {timeout:.0f} s")
                time.sleep(0.1)
        except TimeoutError as exc:
            logs = "\n".join(f"--- {self.name(i)}:\n{self.log_tail(i)}" for i in indexes)
            self.stop()
            raise RuntimeError(f"nats-server did not start ({exc}); its logs:\n{logs}") \
                from None

    def start(self, *, timeout: float = 60.0) -> NatsKV:
        if self.insecure:
            log.warning("INSECURE nats-server: plain text, anonymous clients (%s)",
                        ", ".join(self.urls))
        for i in range(self.servers):
            self._spawn(i)
        self.wait_ready(timeout=timeout)
        return self

    def kill(self, i: int) -> None:
        """SIGKILL server i (its JetStream data stays in rundir for `restart`)."""
        p = self.procs[i]
        if p is not None and p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
        self.procs[i] = None

    def restart(self, i: int, *, timeout: float = 60.0) -> None:
        self.kill(i)
        self._spawn(i)
        self.wait_ready([i], timeout=timeout)

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p is not None and p.poll() is None]



class MemberProc:
    """One `python -m cloudcore.cluster member` process against a `NatsKV`, its JSON
    lines in `out` (read with `events()`), its log in `err`."""

    def __init__(self, nats: NatsKV, name: str, *, workdir: Path, lease_period: float = 3.0,
                 replicas: int = 1, python: str | None = None,
                 extra: list[str] | None = None) -> None:
        import sys

        self.name = name
        self.out = workdir / f"member-{name}.jsonl"
        self.err = workdir / f"member-{name}.log"
        cmd = [python or sys.executable, "-m", "cloudcore.cluster", "member",
               *[a for u in nats.urls for a in ("--nats", u)], "--name", name,
               "--lease-period", str(lease_period), "--replicas", str(replicas),
               "--log-level", "INFO", *(extra or [])]
        if nats.insecure:
            cmd.append("--insecure")
        else:
            cmd += ["--user", str(nats.user), "--password-file", str(nats.password_file()),
                    "--ca", str(nats.ca_file)]
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=err,
                                         stdin=subprocess.DEVNULL)

    def events(self) -> list[dict[str, object]]:
        """Every complete JSON line printed so far."""
        try:
            text = self.out.read_text()
        except OSError:
            return []
        complete = text[:text.rfind("\n") + 1]  # a line still being written waits
        return [json.loads(line) for line in complete.splitlines() if line.strip()]

    def owned(self) -> set[int]:
        """The partitions of its last change (empty before any)."""
        changes = [e for e in self.events() if e.get("event") in ("change", "stopped")]
        return set(changes[-1]["partitions"]) if changes else set()  # type: ignore[call-overload]

    def holds_global(self) -> bool:
        changes = [e for e in self.events() if e.get("event") == "change"]
        return bool(changes[-1]["global"]) if changes else False

    def kill(self) -> float:
        """SIGKILL; returns the wall-clock time just before the signal."""
        at = time.time()
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        return at

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait; a member still running after `timeout` has its asyncio
        tasks' and threads' stacks written to its log (SIGUSR1, SIGUSR2), then is
        killed."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                for sig in (signal.SIGUSR1, signal.SIGUSR2):
                    with contextlib.suppress(ProcessLookupError):
                        self.proc.send_signal(sig)
                    time.sleep(0.5)
                self.proc.kill()
        return self.proc.wait()


__all__ = ["MemberProc", "NatsKV"]
