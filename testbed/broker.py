"""A real mosquitto on a free port, as a context manager (tests and `testbed up`)."""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

from testbed.ports import free_port, wait_port


class Mosquitto:
    """mosquitto listening on `hosts` (all on one port), no persistence, anonymous.

    Queues are generous so a fleet of QoS 1 sessions is not throttled by the broker's
    defaults (100 queued, 20 in flight per client).
    """

    def __init__(self, *, hosts: tuple[str, ...] = ("127.0.0.1",), port: int | None = None,
                 workdir: Path | None = None, persistence: bool = False) -> None:
        if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
            raise RuntimeError("mosquitto is not installed (apt-get install mosquitto)")
        self.hosts = hosts
        self.host = hosts[0]
        self.port = port or free_port(self.host)
        self._own_dir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="edgefed-mosquitto-"))
        self.persistence = persistence
        self.proc: subprocess.Popen[bytes] | None = None

    def config(self) -> str:
        lines = [f"listener {self.port} {h}" for h in self.hosts]
        lines += [
            "allow_anonymous true",
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
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        try:
            wait_port(self.host, self.port, timeout=10)
        except TimeoutError:
            self.stop()
            raise
        return self

    def kill(self) -> None:
        """kill -9, for fault injection."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
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
