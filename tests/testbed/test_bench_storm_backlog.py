"""The brokers' listen backlog for `testbed bench storm` (issue 14): mosquitto 2.0 listens
with a fixed backlog of 100; `Mosquitto(listen_backlog=N)` runs it with a listen() shim
that raises it, on its first start and on every start after a kill -9 (the storm), and a
broker without it keeps mosquitto's own. A real mosquitto; the backlog read back from the
kernel (`ss`: a listening socket's Send-Q is its backlog)."""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
from pathlib import Path

import aiomqtt
import pytest

from testbed.bench_storm import bench_storm
from testbed.broker import Mosquitto, somaxconn

pytestmark = [
    pytest.mark.skipif(shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto")
                       .exists(), reason="mosquitto is not installed"),
    pytest.mark.skipif(shutil.which("ss") is None, reason="ss (iproute2) is not installed"),
    pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                       reason="no C compiler for the listen() shim"),
    pytest.mark.timeout(60),
]


def _backlog(port: int) -> int:
    out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True,
                         text=True, check=True).stdout.split()
    assert out and out[0] == "LISTEN", out
    return int(out[2])


async def _round_trip(port: int) -> bytes:
    async with aiomqtt.Client("127.0.0.1", port, timeout=5) as c:
        await c.subscribe("t/x", qos=1)
        await c.publish("t/x", b"hello", qos=1)
        async for msg in c.messages:
            return bytes(msg.payload)
    raise AssertionError("no message")


async def test_listen_backlog_raised_and_kept_after_kill(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, "testbed.broker")  # the open broker's warning
    want = min(2048, somaxconn() or 2048)
    mq = Mosquitto(workdir=tmp_path / "mq", insecure=True, listen_backlog=want).start()
    try:
        assert _backlog(mq.port) == want
        assert await _round_trip(mq.port) == b"hello"
        mq.kill()
        mq.start()  # as the storm restarts it, on the same port
        assert _backlog(mq.port) == want
        assert await asyncio.wait_for(_round_trip(mq.port), 10) == b"hello"
    finally:
        mq.stop()
    plain = Mosquitto(workdir=tmp_path / "plain", insecure=True).start()
    try:
        assert _backlog(plain.port) == 100  # mosquitto 2.0's own
    finally:
        plain.stop()


def test_a_backlog_below_one_is_refused(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="listen_backlog"):
        Mosquitto(workdir=tmp_path / "mq", insecure=True, listen_backlog=0)
    assert bench_storm(nodes=10, workdir=tmp_path / "b", listen_backlog=-1) == 2
    assert "--listen-backlog -1" in capsys.readouterr().err
