"""A production-style broker: no anonymous clients, a password file that cloudcore
keeps (its own user and every joined node), per-node ACLs. cloudcore logs in with its
own credentials; a device joins with a token and runs with the credentials it got.

Real mosquitto, cloudcore and edgecore processes; no containers are started."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from shared import topics
from testbed.broker import Mosquitto
from testbed.ports import free_port
from testbed.procs import Proc

CLOUD_USER = "cloudcore"
CLOUD_PASSWORD = "s3cret-cloud-pw"


def wait(check: Any, *, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if value := check():
                return value
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def http(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, None


async def connect(port: int, **kw: Any) -> str:
    """'ok' or the broker's refusal, for one login attempt."""
    try:
        async with aiomqtt.Client("127.0.0.1", port, timeout=5, **kw):
            return "ok"
    except aiomqtt.MqttError as exc:
        return str(exc)


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[tuple[Mosquitto, str, Proc]]:
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        pytest.fail("mosquitto is not installed (make test installs it)")
    broker = Mosquitto(auth_user=CLOUD_USER).start()
    secret = tmp_path / "mqtt.password"
    secret.write_text(CLOUD_PASSWORD + "\n")
    secret.chmod(0o600)
    port = free_port("127.0.0.1")
    url = f"http://127.0.0.1:{port}"
    proc = Proc("cloudcore", [
        sys.executable, "-m", "cloudcore", "--state-dir", str(tmp_path / "cloud"),
        "--mqtt-host", "127.0.0.1", "--mqtt-port", str(broker.port),
        "--mqtt-username", CLOUD_USER, "--mqtt-password-file", str(secret),
        "--mosquitto-passwd", str(broker.passwd),
        "--advertise-mqtt", f"127.0.0.1:{broker.port}",
        "--http-host", "127.0.0.1", "--http-port", str(port), "--heartbeat", "1",
    ], log=tmp_path / "cloudcore.log").start()
    try:
        yield broker, url, proc
    finally:
        proc.stop()
        broker.__exit__(None, None, None)


def test_cloudcore_and_a_joined_node_log_in_others_do_not(
        cloud: tuple[Mosquitto, str, Proc], tmp_path: Path) -> None:
    broker, url, proc = cloud
    # cloudcore wrote its own user (hashed) into the broker's password file, the broker
    # reloaded it, and cloudcore's subscriber got in: /readyz says the broker is connected
    wait(lambda: http(url + "/readyz")[0] == 200, timeout=20,
         what=f"cloudcore ready; its log:\n{proc.tail()}")
    passwd = broker.passwd.read_text()
    assert passwd.startswith(f"{CLOUD_USER}:$7$101$") and CLOUD_PASSWORD not in passwd
    assert broker.reloads >= 1

    # anonymous and wrong-password clients are refused
    assert asyncio.run(connect(broker.port)) != "ok"
    assert asyncio.run(connect(broker.port, username=CLOUD_USER, password="wrong")) != "ok"

    # a device joins with a token and runs with the credentials it was given
    fedctl = [sys.executable, "-m", "fedctl", "--server", url]
    token = subprocess.run([*fedctl, "token", "create", "--ttl", "10m"], check=True,
                           capture_output=True, text=True).stdout.strip()
    state = tmp_path / "edge"
    joined = subprocess.run([sys.executable, "-m", "edgecore", "join", "--cloud", url,
                             "--token", token, "--name", "edge-a", "--state-dir", str(state)],
                            check=False, capture_output=True, text=True, timeout=60)
    assert joined.returncode == 0, joined.stderr
    creds = json.loads((state / "edgecore.json").read_text())["credentials"]
    assert creds["username"] == "edge-a"
    wait(lambda: "\nedge-a:$7$" in broker.passwd.read_text(), timeout=10,
         what="the node's hash in the password file")
    agent = Proc("edgecore", [sys.executable, "-m", "edgecore", "run", "--state-dir", str(state),
                              "--heartbeat", "1", "--no-discover-accelerators"],
                 log=tmp_path / "edgecore.log").start()
    try:
        def ready() -> bool:
            _, node = http(url + "/api/v1/nodes/edge-a")
            return bool(node) and node["status"]["ready"] == "Ready"
        wait(ready, timeout=30, what=f"edge-a Ready; agent log:\n{agent.tail()}")
    finally:
        agent.stop()

    # the node's credentials reach its own topics only (the ACL): it neither reads
    # another node's deltas nor can it write as another node
    async def isolation() -> tuple[str, str]:
        node = {"username": "edge-a", "password": creds["password"], "timeout": 5}
        cloud = {"username": CLOUD_USER, "password": CLOUD_PASSWORD, "timeout": 5}
        async with aiomqtt.Client("127.0.0.1", broker.port, identifier="probe-a", **node) as a, \
                aiomqtt.Client("127.0.0.1", broker.port, identifier="probe-c", **cloud) as c:
            await a.subscribe([(topics.down("edge-b"), 1), (topics.down("edge-a"), 1)])
            await c.subscribe([(topics.up("edge-b"), 1), (topics.up("edge-a"), 1)])
            await c.publish(topics.down("edge-b"), b"for b", qos=1)
            await c.publish(topics.down("edge-a"), b"for a", qos=1)
            await a.publish(topics.up("edge-b"), b"forged by a", qos=1)
            await a.publish(topics.up("edge-a"), b"from a", qos=1)
            async with asyncio.timeout(5):
                got_a = await anext(aiter(a.messages))
                got_c = await anext(aiter(c.messages))
            return bytes(got_a.payload), bytes(got_c.payload)  # type: ignore[arg-type]
    # in order per sender: had the ACL let the first message through, it would come first
    assert asyncio.run(isolation()) == (b"for a", b"from a")


def test_a_bad_password_file_fails_fast(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "cloudcore", "--state-dir", str(tmp_path / "s"),
                        "--mqtt-username", "cloudcore",
                        "--mqtt-password-file", str(tmp_path / "missing")],
                       check=False, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "--mqtt-password-file" in r.stderr and "missing" in r.stderr
