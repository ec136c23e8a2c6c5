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
"""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from testbed.ports import free_port, wait_port

log = logging.getLogger("testbed.broker")

INSECURE_WARNING = (
    "INSECURE broker: plain MQTT, anonymous clients allowed. Anyone who reaches "
    "{where} can read every node's desired state (Secret values included), forge "
    "reports and requests, and take over any client id. Use it for tests only."
)


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
                 ) -> None:
        if (security is None) != insecure:
            raise ValueError("give the broker its security (BrokerSecurity), or ask for the "
                             "open broker explicitly with insecure=True; not both, not neither")
        if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
            raise RuntimeError("mosquitto is not installed (apt-get install mosquitto)")
        self.hosts = hosts
        self.host = hosts[0]
        self.port = port or free_port(self.host)
        self.rundir = Path(tempfile.mkdtemp(prefix="edgefed-mosquitto-"))
        self._own_dir = workdir is None
        self.workdir = workdir or self.rundir
        self.persistence = persistence
        self.security = security
        self.passwd = self.rundir / "passwd"
        self.acl = self.rundir / "acl"
        self.tls_dir = self.rundir / "tls"
        self.cert_port: int | None = None
        if security is not None and security.client_cert_port is not None:
            self.cert_port = security.client_cert_port or free_port(self.host)
        self.probe_port: int | None = None
        self._probe_passwd = self.rundir / "probe.passwd"
        self._probe_acl = self.rundir / "probe.acl"
        if security is not None and security.probe_password is not None:
            self.probe_port = free_port("127.0.0.1")
        self.log_types = log_types
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
        conf = self.rundir / "mosquitto.conf"
        conf.write_text(self.config())
        self._prepare_files([conf])
        if self.insecure:
            log.warning(INSECURE_WARNING.format(
                where=", ".join(f"{h}:{self.port}" for h in self.hosts)))
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        try:
            wait_port(self.host, self.port, timeout=10)
        except TimeoutError:
            err = self.log_tail()
            self.stop()
            raise RuntimeError(f"mosquitto did not start; its log:\n{err}") from None
        if self.security is not None and self._watcher is None:
            self._unwatch.clear()
            self._watcher = threading.Thread(target=self._watch_files, daemon=True,
                                             name="mosquitto-auth-watch")
            self._watcher.start()
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


__all__ = ["BrokerSecurity", "Mosquitto"]
