"""An agent stopped (SIGTERM) while its MQTT connect is under way stops cleanly.

Seen in CI: the stop arrived while paho's TCP connect ran in its worker thread; the
socket opened during `asyncio.run`'s shutdown, after the loop's tasks were cancelled,
and was closed by the garbage collector on a closed loop (a traceback at exit, a pending
task destroyed, and no DISCONNECT, so the broker would publish the node's will). The
link now waits for such a connect and closes it, without waiting out a broker that
never answers. Both brokers here are plain sockets: one whose listen backlog is full
(the connect completes only when the test accepts), one that never sends a CONNACK."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

DISCONNECT = b"\xe0\x00"


def _start_agent(tmp_path: Path, port: int) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFED_")}
    metrics = tmp_path / "metrics.prom"
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgecore", "run", "--insecure", "--name", "stopping-1",
         "--state-dir", str(tmp_path / "state"), "--mqtt-host", "127.0.0.1",
         "--mqtt-port", str(port), "--metrics-file", str(metrics),
         "--metrics-interval", "1", "--no-discover-accelerators", "--plain-python"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not metrics.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if proc.poll() is not None or not metrics.exists():
        proc.kill()
        pytest.fail(f"the agent did not start: {proc.communicate()[1][-2000:]}")
    return proc


def _stop(proc: subprocess.Popen[str]) -> tuple[float, str]:
    """SIGTERM; (seconds to exit, stderr). The exit code must be 0."""
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"the agent did not stop in 60 s: {err[-2000:]}")
    assert proc.returncode == 0, err[-2000:]
    return time.monotonic() - t0, err


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    """Sockets the test opens or accepts; closed at teardown, whatever the outcome."""
    opened: list[socket.socket] = []
    yield opened
    for s in opened:
        s.close()


@pytest.fixture
def listener(sockets: list[socket.socket]) -> socket.socket:
    srv = socket.socket()
    sockets.append(srv)
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)
    return srv


@pytest.fixture
def runnable() -> None:
    if os.geteuid() != 0:
        pytest.skip("a started agent sets up its pod network: needs root")


@pytest.mark.usefixtures("runnable")
def test_a_connect_that_completes_during_the_stop_is_closed_before_the_loop(
        tmp_path: Path, listener: socket.socket, sockets: list[socket.socket]) -> None:
    port = listener.getsockname()[1]
    # Fill the backlog: the agent's SYN is dropped, and retried ~1 s and ~3 s later.
    fillers = []
    for _ in range(3):
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        fillers.append(s)
    sockets.extend(fillers)
    proc = _start_agent(tmp_path, port)
    time.sleep(0.3)  # the agent's connect is now blocked in paho's worker thread
    accepted: list[socket.socket] = []

    def drain() -> None:  # from now on, the SYN retry gets through: during the stop
        time.sleep(0.1)
        listener.settimeout(0.05)
        while proc.poll() is None:
            try:
                accepted.append(listener.accept()[0])
                sockets.append(accepted[-1])
            except TimeoutError:
                pass

    drainer = threading.Thread(target=drain, daemon=True)
    drainer.start()
    took, err = _stop(proc)
    drainer.join(timeout=10)
    assert len(accepted) > len(fillers) - 1, "the agent's connect never reached the listener"
    assert "Traceback" not in err, err[-3000:]
    assert "Task was destroyed but it is pending" not in err, err[-3000:]
    assert took < 10, f"the stop took {took:.1f} s"


@pytest.mark.usefixtures("runnable")
def test_a_stop_waits_briefly_for_a_silent_broker_and_disconnects(
        tmp_path: Path, listener: socket.socket, sockets: list[socket.socket]) -> None:
    """The broker accepts and reads but never answers the CONNECT: the stop does not wait
    out the 15 s operation timeout, and the agent sends DISCONNECT (no will)."""
    port = listener.getsockname()[1]
    received = bytearray()

    def serve() -> None:
        listener.settimeout(60)
        conn, _ = listener.accept()
        sockets.append(conn)
        conn.settimeout(60)
        while True:
            try:
                chunk = conn.recv(4096)
            except OSError:
                return
            if not chunk:
                return
            received.extend(chunk)

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    proc = _start_agent(tmp_path, port)
    deadline = time.monotonic() + 30
    while not received and time.monotonic() < deadline:
        time.sleep(0.05)
    assert received[:1] == b"\x10", "no CONNECT from the agent"
    took, err = _stop(proc)
    server.join(timeout=10)
    assert took < 10, f"the stop took {took:.1f} s (waited out the CONNACK timeout)"
    assert bytes(received).endswith(DISCONNECT), bytes(received[-8:])
    assert "Traceback" not in err, err[-3000:]
