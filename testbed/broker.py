"""A real mosquitto on a free port, as a context manager (tests, `testbed up`, the demo).

Two shapes, chosen explicitly:

- secure (`BrokerSecurity`), what `testbed up`, `make demo` and docs/operations.md
  run: no anonymous clients; `password_file` and `acl_file` written by cloudcore
  (`--mosquitto-passwd`, `--mosquitto-acl`: its own service users and every joined
  node, nodes by pattern to their own topics); `use_username_as_clientid true`, so
  a client id is an identity and nobody can kick another's session; a TLS listener
  with the certificates of the fleet CA (`cloudcore pki broker`), and optionally a
  second one that requires a node client certificate and takes its CN as the username.
  The files are watched and the broker reloaded (SIGHUP) when cloudcore rewrites one.
- open (`security=None`): plain TCP, anonymous, anyone may read and write every topic.
  For unit tests of the link and the hub, and for `--insecure` (which warns).

The broker always logs to a file, `log` (`WORKDIR/run/mosquitto.log`; a silent broker
once hid fd exhaustion); `log_tail()` reads it.

The listen backlog (`listen_backlog`, issue 14's storm): mosquitto 2.0 calls
`listen(sock, 100)` with no setting to change it, so when thousands of sessions reconnect
at once (every broker restarted) the kernel drops the handshakes that do not fit in
100, and TCP retries each 1, 2, 4, 8, 16, 32 s later: the waits, not the CPU, set how
long a restarted broker takes to get its sessions back. Given a backlog, the broker runs
with a small `listen()` shim preloaded (`LD_PRELOAD`, built once with the system's C
compiler into the temporary directory) that raises every backlog it asks for to that
number; the kernel still caps it at `net.core.somaxconn`.

A broker tier (issue 14, `testbed bench brokers`): `spread_partitions` gives each of
several brokers a contiguous share of the 256 partitions, and `NatsCluster` starts a
cluster of Debian's nats-server with routes, JetStream (which its MQTT listener needs)
and, on each server, a TLS MQTT listener whose users are the same identities as
mosquitto's (`nats_users`: a node may publish only its own `up`/`will` and read only its
own `down`, the NATS form of `topics.acl_rules()`).
"""

from __future__ import annotations

import contextlib
import grp
import hashlib
import logging
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from shared import topics
from testbed.ports import free_port, free_port_on, wait_port
from testbed.procs import ServerGroup

log = logging.getLogger("testbed.broker")

INSECURE_WARNING = (
    "INSECURE broker: plain MQTT, anonymous clients allowed. Anyone who reaches "
    "{where} can read every node's desired state (Secret values included), forge "
    "reports and requests, and take over any client id. Use it for tests only."
)


LISTEN_SHIM_C = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <sys/socket.h>

/* edgefed testbed: raise mosquitto's fixed listen(sock, 100) to EDGEFED_LISTEN_BACKLOG */
int listen(int fd, int backlog) {
    static int (*real)(int, int);
    if (!real) real = (int (*)(int, int))dlsym(RTLD_NEXT, "listen");
    const char *want = getenv("EDGEFED_LISTEN_BACKLOG");
    if (want) {
        int b = atoi(want);
        if (b > backlog) backlog = b;
    }
    return real(fd, backlog);
}
"""


def somaxconn() -> int | None:
    """The kernel's cap on any listen backlog (`net.core.somaxconn`), if readable."""
    try:
        return int(Path("/proc/sys/net/core/somaxconn").read_text())
    except (OSError, ValueError):
        return None


def listen_shim() -> Path:
    """The shared object that raises mosquitto's listen backlog (module docstring), built
    on first use into the temporary directory; RuntimeError naming the missing compiler
    or the compiler's complaint."""
    digest = hashlib.sha256(LISTEN_SHIM_C.encode()).hexdigest()[:12]
    out = Path(tempfile.gettempdir()) / f"edgefed-listen-backlog-{digest}.so"
    if out.is_file():
        return out
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise RuntimeError("a listen backlog for mosquitto needs a C compiler to build its "
                           "listen() shim (apt-get install gcc); or leave the backlog out "
                           "(mosquitto's own is 100)")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "listen_backlog.c"
        src.write_text(LISTEN_SHIM_C)
        built = Path(tmp) / "listen_backlog.so"
        done = subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", str(built), str(src),
                               "-ldl"], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"building mosquitto's listen() shim failed: {done.stderr}")
        built.chmod(0o755)
        tmp_out = out.with_suffix(f".{os.getpid()}.tmp")
        shutil.copy(built, tmp_out)
        tmp_out.replace(out)  # atomic: brokers started at once never load a partial file
    return out


@dataclass(frozen=True)
class BrokerSecurity:
    """The secure shape. Its files live in the broker's run directory (`Mosquitto.passwd`,
    `.acl`, `.tls_dir`), which the caller fills before `start()`: cloudcore writes the
    first two (`--mosquitto-passwd`, `--mosquitto-acl`), `cloudcore pki broker --out`
    the third."""

    tls: bool = True  # False: no TLS (passwords cross the network in clear; tests only)
    client_cert_port: int | None = None  # >0 or 0 (a free port): a second TLS listener that
    # requires a client certificate from the fleet CA and uses its CN as the username
    probe_password: str | None = None  # tests only: a loopback TLS listener of its own
    # where user `probe` may read and write every topic: "a client with broker access"
    # (a broker admin, or the broker itself compromised) without borrowing cloudcore's
    # identities, which would kick cloudcore's own sessions


class Mosquitto:
    """mosquitto listening on `hosts` (all on one port), no persistence unless asked.

    Queues are generous so a fleet of QoS 1 sessions is not throttled by the broker's
    defaults (100 queued, 20 in flight per client).

    Everything the broker reads or writes lives in a run directory of its own under
    the system's temporary directory (`rundir`; `workdir/run` links to it): mosquitto
    drops root for the `mosquitto` user and re-reads its files on every reload as that
    user, so they must not sit below a private (0700) directory such as pytest's,
    whose mode other processes reset at will.
    """

    def __init__(self, *, hosts: tuple[str, ...] = ("127.0.0.1",), port: int | None = None,
                 workdir: Path | None = None, persistence: bool = False,
                 security: BrokerSecurity | None = None, insecure: bool = False,
                 log_types: tuple[str, ...] = ("error", "warning", "notice", "information"),
                 shared_auth: tuple[Path, Path] | None = None,
                 listen_backlog: int | None = None,
                 ) -> None:
        if (security is None) != insecure:
            raise ValueError("give the broker its security (BrokerSecurity), or ask for the "
                             "open broker explicitly with insecure=True; not both, not neither")
        if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
            raise RuntimeError("mosquitto is not installed (apt-get install mosquitto)")
        self.hosts = hosts
        self.host = hosts[0]
        self._picked = port is None
        """The ports were picked here (not asked for): a first start that finds one taken
        meanwhile (another process's connection) picks again instead of failing."""
        self.port = port or free_port_on(hosts)
        self.rundir = Path(tempfile.mkdtemp(prefix="edgefed-mosquitto-"))
        self._own_dir = workdir is None
        self.workdir = workdir or self.rundir
        self.persistence = persistence
        self.security = security
        # A broker of a tier (issue 14) reads the password file and ACL another broker's
        # cloudcore keeps (`shared_auth` = (passwd, acl)): every broker knows every node.
        self.passwd, self.acl = shared_auth or (self.rundir / "passwd", self.rundir / "acl")
        self.tls_dir = self.rundir / "tls"
        self.cert_port: int | None = None
        if security is not None and security.client_cert_port is not None:
            self.cert_port = security.client_cert_port or free_port_on(hosts)
        self.probe_port: int | None = None
        self._probe_passwd = self.rundir / "probe.passwd"
        self._probe_acl = self.rundir / "probe.acl"
        if security is not None and security.probe_password is not None:
            self.probe_port = free_port("127.0.0.1")
        self.log_types = log_types
        if listen_backlog is not None and listen_backlog < 1:
            raise ValueError(f"listen_backlog: at least 1, not {listen_backlog}")
        self.listen_backlog = listen_backlog
        """The listen backlog of the broker's next start (None: mosquitto's own 100);
        see the module docstring. May be set between starts."""
        self.log = self.rundir / "mosquitto.log"
        self.reloads = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._unwatch = threading.Event()
        self._watcher: threading.Thread | None = None
        self._prepare_rundir()

    @property
    def tls(self) -> bool:
        return self.security is not None and self.security.tls

    @property
    def insecure(self) -> bool:
        return self.security is None

    @property
    def ca_file(self) -> Path | None:
        """The fleet CA that signs the broker's certificate, if it speaks TLS."""
        return self.tls_dir / "ca.crt" if self.tls else None

    def config(self) -> str:
        sec = self.security
        if sec is None:
            lines = ["per_listener_settings false"]
            lines += [f"listener {self.port} {h}" for h in self.hosts]
            lines += ["allow_anonymous true"]
        else:
            # Settings per listener, so a test probe can have its own password file; each
            # listener carries its own auth lines. use_username_as_clientid is a listener
            # option in any case: without it on a listener, a client there can take over
            # another identity's session.
            lines = ["per_listener_settings true"]
            tls: list[str] = []
            if sec.tls:
                tls = [f"cafile {self.tls_dir / 'ca.crt'}",
                       f"certfile {self.tls_dir / 'broker.crt'}",
                       f"keyfile {self.tls_dir / 'broker.key'}",
                       "tls_version tlsv1.2"]
            auth = ["allow_anonymous false", f"password_file {self.passwd}",
                    f"acl_file {self.acl}", "use_username_as_clientid true"]
            for h in self.hosts:
                lines += [f"listener {self.port} {h}", *tls, *auth]
            if self.cert_port is not None and tls:
                for h in self.hosts:
                    lines += [f"listener {self.cert_port} {h}", *tls,
                              f"crlfile {self.tls_dir / 'crl.pem'}",
                              "require_certificate true", "use_identity_as_username true",
                              "allow_anonymous false", f"acl_file {self.acl}",
                              "use_username_as_clientid true"]
            if self.probe_port is not None:
                lines += [f"listener {self.probe_port} 127.0.0.1", *tls,
                          "allow_anonymous false", f"password_file {self._probe_passwd}",
                          f"acl_file {self._probe_acl}", "use_username_as_clientid true"]
        lines += [
            "max_queued_messages 1000000",
            "max_inflight_messages 0",
            "max_keepalive 3600",
            "set_tcp_nodelay true",
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {self.rundir}/",
            f"log_dest file {self.log}",
            *(f"log_type {t}" for t in self.log_types),
            "connection_messages true",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        ]
        return "\n".join(lines) + "\n"

    def _prepare_rundir(self) -> None:
        """The run directory, owned by the broker's user when we are root (it writes its
        log and persistence there), and the link to it from the work directory."""
        self.rundir.chmod(0o700)
        self.tls_dir.mkdir(exist_ok=True)
        if os.geteuid() == 0:
            with contextlib.suppress(KeyError):
                os.chown(self.rundir, pwd.getpwnam("mosquitto").pw_uid, 0)
        if not self._own_dir:
            self.workdir.mkdir(parents=True, exist_ok=True)
            link = self.workdir / "run"
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(self.rundir)

    def start(self) -> Mosquitto:
        """Start (or restart, on the same ports) the broker. Ports picked by this object are
        free when picked but may be taken before mosquitto binds them (a port is free only
        until someone uses it): the first start then picks new ones, up to three times."""
        for attempt in range(3):
            try:
                return self._start()
            except RuntimeError as e:
                if not (self._picked and attempt < 2 and "Address already in use" in str(e)):
                    raise
                log.warning("mosquitto: port %d was taken before it could bind; picking "
                            "another", self.port)
                self.port = free_port_on(self.hosts)
                if self.cert_port is not None and not (
                        self.security is not None and self.security.client_cert_port):
                    self.cert_port = free_port_on(self.hosts)
                if self.probe_port is not None:
                    self.probe_port = free_port("127.0.0.1")
        raise AssertionError("unreachable")

    def _start(self) -> Mosquitto:
        conf = self.rundir / "mosquitto.conf"
        conf.write_text(self.config())
        self._prepare_files([conf])
        if self.insecure:
            log.warning(INSECURE_WARNING.format(
                where=", ".join(f"{h}:{self.port}" for h in self.hosts)))
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        env = None
        if self.listen_backlog is not None:
            env = {**os.environ, "LD_PRELOAD": str(listen_shim()),
                   "EDGEFED_LISTEN_BACKLOG": str(self.listen_backlog)}
        self.proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, env=env)
        try:
            deadline = time.monotonic() + 10
            while True:  # until it listens, or has exited (a port taken: say so at once)
                try:
                    wait_port(self.host, self.port, timeout=0.2)
                    break
                except TimeoutError:
                    if self.proc.poll() is not None or time.monotonic() > deadline:
                        raise
        except TimeoutError:
            err = self.log_tail()
            self.stop()
            raise RuntimeError(f"mosquitto did not start; its log:\n{err}") from None
        if self.security is not None and self._watcher is None:
            self._unwatch.clear()
            self._watcher = threading.Thread(target=self._watch_files, daemon=True,
                                             name="mosquitto-auth-watch")
            self._watcher.start()
        self._picked = False  # a restart keeps its ports: clients know them
        return self

    def _prepare_files(self, files: list[Path]) -> None:
        """Files the broker reads after it drops root for the `mosquitto` user: the
        config, the password file and ACL (empty until cloudcore writes them; cloudcore
        keeps the group when it rewrites one) and the TLS files: group `mosquitto`,
        0640, as in docs/operations.md."""
        sec = self.security
        if sec is not None:
            for f in (self.passwd, self.acl):
                if not f.exists():
                    f.touch(0o600)
            files += [self.passwd, self.acl]
            if sec.probe_password is not None:
                self._probe_acl.write_text("user probe\ntopic readwrite #\n")
                self._probe_passwd.unlink(missing_ok=True)
                self._probe_passwd.touch(0o600)
                subprocess.run(["mosquitto_passwd", "-b", str(self._probe_passwd), "probe",
                                sec.probe_password], check=True, capture_output=True)
                files += [self._probe_passwd, self._probe_acl]
            if sec.tls:
                names = ("ca.crt", "broker.crt", "broker.key")
                missing = [n for n in names if not (self.tls_dir / n).is_file()]
                if missing:
                    raise RuntimeError(f"broker TLS files missing in {self.tls_dir}: {missing} "
                                       "(cloudcore pki broker --out DIR writes them)")
                files += [self.tls_dir / n for n in names]
                if self.cert_port is not None:  # cloudcore keeps deleted nodes' certificates
                    if not (self.tls_dir / "crl.pem").is_file():  # here (pki broker makes it)
                        raise RuntimeError(f"no crl.pem in {self.tls_dir} for the client "
                                           "certificate listener")
                    files.append(self.tls_dir / "crl.pem")
        self.log.touch()
        if os.geteuid() != 0:
            return
        try:
            uid, gid = pwd.getpwnam("mosquitto").pw_uid, grp.getgrnam("mosquitto").gr_gid
        except KeyError:  # no such user: the broker keeps running as this user
            return
        os.chown(self.log, uid, gid)
        for f in files:
            os.chown(f, -1, gid)
            f.chmod(0o640)
        self.tls_dir.chmod(0o750)
        os.chown(self.tls_dir, -1, gid)

    def _watch_files(self, interval: float = 0.1) -> None:
        watched = (self.passwd, self.acl)

        def stamp() -> tuple[tuple[int, int] | None, ...]:
            out: list[tuple[int, int] | None] = []
            for f in watched:
                try:
                    st = f.stat()
                except OSError:
                    out.append(None)
                else:
                    out.append((st.st_mtime_ns, st.st_ino))
            return tuple(out)

        seen = stamp()
        while not self._unwatch.wait(interval):
            now = stamp()
            if now != seen:
                seen = now
                proc = self.proc
                if proc is not None and proc.poll() is None:
                    proc.send_signal(signal.SIGHUP)
                    self.reloads += 1

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def kill(self) -> None:
        """kill -9, for fault injection."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        self._unwatch.set()
        if self._watcher is not None:
            self._watcher.join(2)
            self._watcher = None
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc and self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
        self.remove()

    def remove(self) -> None:
        """Delete the run directory (after `stop()`; the broker is gone for good)."""
        shutil.rmtree(self.rundir, ignore_errors=True)
        link = self.workdir / "run"
        if not self._own_dir and link.is_symlink():
            link.unlink()


# --- a broker tier: several brokers by partition, or one NATS cluster (issue 14) -------


def spread_partitions(brokers: int, partitions: int = topics.PARTITIONS) -> list[int]:
    """partition -> broker index: each broker a contiguous range, sizes differing by at
    most one (256 over 7: 37, 37, 37, 37, 36, 36, 36). Contiguous ranges keep a move
    simple to describe: draining a broker hands its range to its neighbours."""
    if brokers < 1 or brokers > partitions:
        raise ValueError(f"brokers: {brokers} is not in 1..{partitions}")
    base, extra = divmod(partitions, brokers)
    out: list[int] = []
    for b in range(brokers):
        out += [b] * (base + (1 if b < extra else 0))
    return out


def contract_partitions(names: list[str], partitions: int = topics.PARTITIONS,
                        ) -> list[list[str]]:
    """partition -> broker names as proposal 0007's `BrokerMap.spread` orders them (the
    map cloudcore makes from its `--broker` flags): partition p's home is broker
    `p % n` in name order, the others follow as fallbacks in rotation. For a cloudcore
    that does not serve its map (`GET /api/v1/brokermap`)."""
    if not names:
        raise ValueError("names: at least one broker")
    order = sorted(names)
    n = len(order)
    return [[order[(p + k) % n] for k in range(n)] for p in range(partitions)]


def brokers_for(sessions: int, *, per_broker: int) -> int:
    """How many broker processes hold `sessions` with at most about `per_broker` each
    (at least one; a process's file descriptors bound what it can hold)."""
    if per_broker < 1:
        raise ValueError("per_broker: must be >= 1")
    return max(1, -(-sessions // per_broker))


def broker_map(brokers: dict[str, str], partitions: list[list[str]]) -> dict[str, object]:
    """The partition -> broker map as the testbed hands it to simulators (`--broker-map`):
    `{"brokers": {name: "host:port"}, "partitions": [[name, ...] x 256]}`, each
    partition's brokers in the order a node tries them (the first is its home, the rest
    its fallbacks). The shape proposal 0007 builds on."""
    if len(partitions) != topics.PARTITIONS:
        raise ValueError(f"partitions: {len(partitions)} entries, need {topics.PARTITIONS}")
    for p, names in enumerate(partitions):
        unknown = [n for n in names if n not in brokers]
        if not names or unknown:
            raise ValueError(f"partitions[{p}]: " + (f"unknown broker(s) {unknown}" if unknown
                                                      else "no broker"))
    return {"brokers": dict(brokers), "partitions": [list(n) for n in partitions]}


def parse_broker_map(doc: object) -> list[tuple[tuple[str, int], ...]]:
    """partition -> ((host, port), ...) from a `broker_map` document; ValueError naming
    the entry that is wrong."""
    if not isinstance(doc, dict) or not isinstance(doc.get("brokers"), dict):
        raise ValueError("broker map: needs an object with 'brokers' and 'partitions'")
    ends: dict[str, tuple[str, int]] = {}
    for name, addr in doc["brokers"].items():
        host, sep, port = str(addr).rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"broker map: brokers[{name!r}] = {addr!r} is not host:port")
        ends[str(name)] = (host, int(port))
    parts = doc.get("partitions")
    if not isinstance(parts, list) or len(parts) != topics.PARTITIONS:
        raise ValueError(f"broker map: 'partitions' must list {topics.PARTITIONS} entries")
    out: list[tuple[tuple[str, int], ...]] = []
    for p, names in enumerate(parts):
        if not isinstance(names, list) or not names or any(n not in ends for n in names):
            raise ValueError(f"broker map: partitions[{p}] = {names!r}: a non-empty list of "
                             "names from 'brokers'")
        out.append(tuple(ends[n] for n in names))
    return out


def nats_subject(mqtt_filter: str) -> str:
    """The NATS subject of an MQTT topic or filter, as nats-server's MQTT listener maps
    them: levels `/` -> `.`, `+` -> `*`, `#` -> `>`."""
    if "." in mqtt_filter or " " in mqtt_filter:
        raise ValueError(f"{mqtt_filter!r}: '.' and ' ' have no NATS form")
    return ".".join({"+": "*", "#": ">"}.get(level, level) for level in mqtt_filter.split("/"))


_NATS_QOS1_DELIVERY = "$MQTT.sub.>"  # where nats-server delivers a QoS 1 subscription's
# messages from its JetStream consumer; a client must be allowed to subscribe there


def _nats_quote(text: str) -> str:
    if any(c in text for c in '"\\\n'):
        raise ValueError(f"{text!r}: no quotes, backslashes or newlines in a NATS config value")
    return f'"{text}"'


def nats_users(*, services: dict[str, str], nodes: Iterable[tuple[str, str]]) -> str:
    """The `users` of a NATS `authorization` block (one line per identity): services
    (name -> password) publish and subscribe the protocol's whole tree; each node
    (name, password) publishes only its own `up` and `will` and subscribes only its own
    `down` (plus the QoS 1 delivery subjects nats-server needs), the rules of
    `topics.acl_rules()` with the node's name for `%u`."""
    rules = topics.acl_rules()
    tree = [nats_subject(f) for a, f in rules if a == "service"]
    lines = []
    for name, pw in services.items():
        subjects = ", ".join(_nats_quote(s) for s in tree)
        lines.append(f"  {{user: {_nats_quote(name)}, password: {_nats_quote(pw)}, "
                     f"permissions: {{publish: [{subjects}], subscribe: [{subjects}, "
                     f"{_nats_quote(_NATS_QOS1_DELIVERY)}]}}}}")
    for name, pw in nodes:
        if not topics.valid_node_name(name):
            raise ValueError(f"nodes: {name!r} is not a valid node name")
        pub = [nats_subject(f.replace("%u", name)) for a, f in rules if a == "write"]
        sub = [nats_subject(f.replace("%u", name)) for a, f in rules if a == "read"]
        lines.append(f"  {{user: {_nats_quote(name)}, password: {_nats_quote(pw)}, "
                     f"permissions: {{publish: [{', '.join(map(_nats_quote, pub))}], "
                     f"subscribe: [{', '.join(map(_nats_quote, [*sub, _NATS_QOS1_DELIVERY]))}]}}}}")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class NatsPorts:
    client: int  # NATS protocol (JetStream API, monitoring clients)
    cluster: int  # routes between the servers
    mqtt: int  # the TLS MQTT listener the fleet uses
    http: int  # monitoring (/healthz, /varz)


@dataclass(frozen=True)
class NatsSettings:
    """One cluster's shape; every size in the unit its name says."""

    servers: int = 3
    host: str = "127.0.0.1"
    cluster_name: str = "edgefed"
    jetstream_memory_mb: int = 512  # JetStream memory store per server
    jetstream_file_mb: int = 4096  # JetStream file store per server
    mqtt_stream_replicas: int | None = None  # None: nats-server's default (min(3, servers))
    mqtt_consumer_replicas: int | None = None  # None: the streams' replicas
    mqtt_consumer_memory: bool = False  # QoS 1 consumers in memory, not on disk
    mqtt_max_ack_pending: int | None = None  # QoS 1 messages unacked per session
    extra: dict[str, str] = field(default_factory=dict)  # more top-level `key: value`


def nats_config(*, name: str, settings: NatsSettings, ports: NatsPorts,
                routes: list[int], store_dir: Path, tls_dir: Path, users_file: Path) -> str:
    """The config of one server of the cluster: routes to the `routes` ports of the
    others, JetStream, and the MQTT listener over TLS (the fleet CA's certificates in
    `tls_dir`, as `cloudcore pki broker` writes them) and the `authorization` block of
    `users_file` (in the same directory; the users of `nats_users`). No anonymous access:
    every listener takes only those users."""
    h = settings.host
    mqtt = [f"  listen: {h}:{ports.mqtt}",
            f"  tls {{ cert_file: {_nats_quote(str(tls_dir / 'broker.crt'))}, "
            f"key_file: {_nats_quote(str(tls_dir / 'broker.key'))}, "
            f"ca_file: {_nats_quote(str(tls_dir / 'ca.crt'))} }}"]
    if settings.mqtt_stream_replicas is not None:
        mqtt.append(f"  stream_replicas: {settings.mqtt_stream_replicas}")
    if settings.mqtt_consumer_replicas is not None:
        mqtt.append(f"  consumer_replicas: {settings.mqtt_consumer_replicas}")
    if settings.mqtt_consumer_memory:
        mqtt.append("  consumer_memory_storage: true")
    if settings.mqtt_max_ack_pending is not None:
        mqtt.append(f"  max_ack_pending: {settings.mqtt_max_ack_pending}")
    lines = [f"server_name: {_nats_quote(name)}",
             f"listen: {h}:{ports.client}",
             f"http: {h}:{ports.http}",
             "jetstream {",
             f"  store_dir: {_nats_quote(str(store_dir))}",
             f"  max_memory_store: {settings.jetstream_memory_mb}MB",
             f"  max_file_store: {settings.jetstream_file_mb}MB",
             "}",
             *(["cluster {",
                f"  name: {_nats_quote(settings.cluster_name)}",
                f"  listen: {h}:{ports.cluster}",
                f"  routes: [{', '.join(f'nats-route://{h}:{p}' for p in routes)}]",
                "}"] if settings.servers > 1 else []),
             "mqtt {", *mqtt, "}",
             # the authorization block, kept beside this file (nats-server resolves an
             # include relative to the including file)
             f"include {_nats_quote(users_file.name)}",
             *(f"{k}: {v}" for k, v in settings.extra.items())]
    return "\n".join(lines) + "\n"


class NatsCluster(ServerGroup):
    """`settings.servers` nats-server processes in one cluster, each with an MQTT
    listener over TLS; `users` (the text of `nats_users`) is every server's user list.

    Each server logs to `rundir/nats-<i>.log` (`log_tail(i)`); `start()` returns once
    every MQTT port accepts and JetStream has a metadata leader (the MQTT listener
    refuses sessions until then), or raises RuntimeError with the logs."""

    def __init__(self, *, settings: NatsSettings, tls_dir: Path, users: str,
                 rundir: Path) -> None:
        if settings.servers < 1:
            raise ValueError("servers: at least 1")
        if shutil.which("nats-server") is None:
            raise RuntimeError("nats-server is not installed (apt-get install nats-server)")
        self.settings = settings
        self.tls_dir = tls_dir
        self.rundir = rundir
        rundir.mkdir(parents=True, exist_ok=True)
        self.users_file = rundir / "users.conf"
        fd = os.open(self.users_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("authorization {\n  users: [\n" + users + "  ]\n}\n")
        h = settings.host
        self.ports = [NatsPorts(client=free_port(h), cluster=free_port(h), mqtt=free_port(h),
                                http=free_port(h)) for _ in range(settings.servers)]
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * settings.servers

    @property
    def host(self) -> str:
        return self.settings.host

    def name(self, i: int) -> str:
        return f"nats-{i}"

    def log(self, i: int) -> Path:
        return self.rundir / f"nats-{i}.log"

    def config(self, i: int) -> str:
        others = [p.cluster for j, p in enumerate(self.ports) if j != i]
        return nats_config(name=self.name(i), settings=self.settings, ports=self.ports[i],
                           routes=others, store_dir=self.rundir / f"js-{i}",
                           tls_dir=self.tls_dir, users_file=self.users_file)

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p is not None and p.poll() is None]

    def start(self, *, timeout: float = 60.0) -> NatsCluster:
        for i in range(self.settings.servers):
            conf = self.rundir / f"nats-{i}.conf"
            conf.write_text(self.config(i))
            with self.log(i).open("ab") as out:
                self.procs[i] = subprocess.Popen(
                    ["nats-server", "-c", str(conf), "-l", str(self.log(i))],
                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    start_new_session=True)
        deadline = time.monotonic() + timeout
        try:
            for p in self.ports:
                wait_port(self.host, p.mqtt, timeout=max(1.0, deadline - time.monotonic()))
            while not any("metadata leader" in self.log_tail(i, 400)
                          for i in range(self.settings.servers)):
                dead = [self.name(i) for i, pr in enumerate(self.procs)
                        if pr is None or pr.poll() is not None]
                if dead or time.monotonic() > deadline:
                    raise TimeoutError(f"dead: {dead}" if dead else
                                       f"no JetStream metadata leader after {timeout:.0f} s")
                time.sleep(0.2)
        except TimeoutError as exc:
            logs = "\n".join(f"--- {self.name(i)}:\n{self.log_tail(i)}"
                             for i in range(self.settings.servers))
            self.stop()
            raise RuntimeError(f"the NATS cluster did not start ({exc}); its logs:\n{logs}") \
                from None
        return self



__all__ = [
    "BrokerSecurity",
    "Mosquitto",
    "NatsCluster",
    "NatsPorts",
    "NatsSettings",
    "broker_map",
    "brokers_for",
    "contract_partitions",
    "nats_config",
    "nats_subject",
    "nats_users",
    "parse_broker_map",
    "spread_partitions",
]
