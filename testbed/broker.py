"""A real mosquitto on a free port, as a context manager (tests and `testbed up`)."""

from __future__ import annotations

import grp
import os
import shutil
import signal
import subprocess
import tempfile
import threading
from pathlib import Path
from types import TracebackType

from testbed.ports import free_port, wait_port

ACL = """\
user {cloud_user}
topic readwrite fed/v1/#

pattern read fed/v1/+/%u/down
pattern write fed/v1/+/%u/up
pattern write fed/v1/+/%u/will
"""
"""The ACL of docs/operations.md: cloudcore's user everywhere, each node only its own
topics (its username is its node name)."""


class Mosquitto:
    """mosquitto listening on `hosts` (all on one port), no persistence, anonymous.

    Queues are generous so a fleet of QoS 1 sessions is not throttled by the broker's
    defaults (100 queued, 20 in flight per client).

    With `auth_user` (cloudcore's broker username) it is set up as docs/operations.md
    says for production: no anonymous clients, `password_file` at `passwd` (cloudcore
    keeps it, `--mosquitto-passwd`), the ACL above, and a watcher that reloads the
    broker (SIGHUP) when the file changes, as the documented systemd path unit does.
    """

    def __init__(self, *, hosts: tuple[str, ...] = ("127.0.0.1",), port: int | None = None,
                 workdir: Path | None = None, persistence: bool = False,
                 auth_user: str | None = None) -> None:
        if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
            raise RuntimeError("mosquitto is not installed (apt-get install mosquitto)")
        self.hosts = hosts
        self.host = hosts[0]
        self.port = port or free_port(self.host)
        self._own_dir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="edgefed-mosquitto-"))
        self.persistence = persistence
        self.auth_user = auth_user
        self.passwd = self.workdir / "passwd"
        self.reloads = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._unwatch = threading.Event()
        self._watcher: threading.Thread | None = None

    def config(self) -> str:
        lines = [f"listener {self.port} {h}" for h in self.hosts]
        if self.auth_user:
            lines += ["allow_anonymous false", f"password_file {self.passwd}",
                      f"acl_file {self.workdir / 'acl'}"]
        lines += [
            *([] if self.auth_user else ["allow_anonymous true"]),
            "max_queued_messages 1000000",
            "max_inflight_messages 0",
            "max_keepalive 3600",
            "set_tcp_nodelay true",
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {self.workdir}/",
            "log_dest none",
        ]
        return "\n".join(lines) + "\n"

    def start(self) -> Mosquitto:
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(self.config())
        if self.auth_user:
            self._auth_files()
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        try:
            wait_port(self.host, self.port, timeout=10)
        except TimeoutError:
            self.stop()
            raise
        if self.auth_user and self._watcher is None:
            self._unwatch.clear()
            self._watcher = threading.Thread(target=self._watch_passwd, daemon=True,
                                             name="mosquitto-passwd-watch")
            self._watcher.start()
        return self

    def _auth_files(self) -> None:
        """The ACL and an empty password file, readable by the broker after it drops
        root for the `mosquitto` user: group `mosquitto`, mode 0640, as in
        docs/operations.md (cloudcore keeps the file's group when it rewrites it)."""
        acl = self.workdir / "acl"
        acl.write_text(ACL.format(cloud_user=self.auth_user))
        if not self.passwd.exists():
            self.passwd.touch()
        try:
            gid = grp.getgrnam("mosquitto").gr_gid
        except KeyError:  # no such group: the broker keeps running as this user
            return
        if os.geteuid() == 0:
            self.workdir.chmod(0o711)
            for f in (acl, self.passwd):
                os.chown(f, -1, gid)
                f.chmod(0o640)

    def _watch_passwd(self, interval: float = 0.1) -> None:
        def stamp() -> tuple[int, int] | None:
            try:
                st = self.passwd.stat()
            except OSError:
                return None
            return st.st_mtime_ns, st.st_ino

        seen = stamp()
        while not self._unwatch.wait(interval):
            now = stamp()
            if now != seen:
                seen = now
                proc = self.proc
                if proc is not None and proc.poll() is None:
                    proc.send_signal(signal.SIGHUP)
                    self.reloads += 1

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
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)
