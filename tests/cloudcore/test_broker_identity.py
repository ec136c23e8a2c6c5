"""The broker files cloudcore keeps, against a real mosquitto: service identities log
in, nodes reach only their own topics, and deleting a node closes its session at once
(the password file is rewritten, the broker reloaded with SIGHUP)."""

from __future__ import annotations

import asyncio
import shutil
import signal
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import pytest
from cloudcore_fakes import FakeStore

from cloudcore.auth import Auth
from cloudcore.auth.broker import BrokerFiles, mosquitto_acl, service_identities
from cloudcore.auth.pki import FleetCA
from cloudcore.auth.secrets import mosquitto_hash
from cloudcore.config import MqttSettings
from cloudcore.synchub.mqtt import Publisher, SessionCloser, Subscriber, client_tls
from shared import topics
from testbed.ports import free_port, wait_port

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
pytestmark = pytest.mark.skipif(not Path(MOSQUITTO).exists(), reason="needs mosquitto")


class Broker:
    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.port = free_port()
        self.passwd, self.acl = workdir / "passwd", workdir / "acl"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        conf = self.dir / "mosquitto.conf"
        conf.write_text("\n".join([
            f"listener {self.port} 127.0.0.1", "allow_anonymous false",
            f"password_file {self.passwd}", f"acl_file {self.acl}",
            "use_username_as_clientid true", "persistence false", "log_dest none",
            "user root", ""]))
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port("127.0.0.1", self.port, timeout=10)

    def reload(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(5)


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Broker, Auth, BrokerFiles, dict[str, str]]]:
    broker = Broker(tmp_path)
    users = service_identities("cloudcore", 1)
    own = dict.fromkeys(users, mosquitto_hash("svc-pw"))
    auth: Auth
    files = BrokerFiles(passwd=broker.passwd, acl=broker.acl,
                        passwd_text=lambda: auth.mosquitto_passwd(own),
                        acl_text=mosquitto_acl(users), min_interval=0.05)
    auth = Auth(store=FakeStore(), enabled=True, on_credentials=files.changed)
    pw = {n: auth.issue_credentials(n).password for n in ("edge-1", "edge-2")}
    files.write_now()
    broker.start()
    try:
        yield broker, auth, files, pw
    finally:
        broker.stop()


async def _login(port: int, user: str, pw: str) -> str:
    try:
        async with aiomqtt.Client("127.0.0.1", port, username=user, password=pw,
                                  identifier=user, timeout=5):
            return "ok"
    except aiomqtt.MqttError as exc:
        return str(exc)


async def test_acl_and_revocation_with_real_mosquitto(
        setup: tuple[Broker, Auth, BrokerFiles, dict[str, str]]) -> None:
    broker, auth, files, pw = setup
    port = broker.port
    assert await _login(port, "cloudcore_sub", "svc-pw") == "ok"
    assert await _login(port, "cloudcore_pub0", "svc-pw") == "ok"
    assert await _login(port, "cloudcore", "svc-pw") != "ok"  # not an identity
    assert await _login(port, "edge-1", "wrong") != "ok"

    async with aiomqtt.Client("127.0.0.1", port, username="cloudcore_sub", password="svc-pw",
                              identifier="cloudcore_sub", timeout=5) as cloud, \
            aiomqtt.Client("127.0.0.1", port, username="edge-1", password=pw["edge-1"],
                           identifier="edge-1", timeout=5) as e1, \
            aiomqtt.Client("127.0.0.1", port, username="edge-2", password=pw["edge-2"],
                           identifier="edge-2", timeout=5) as e2:
        await cloud.subscribe([(f, 1) for f in topics.all_up_filters()])
        await e1.subscribe(topics.down("edge-1"), qos=1)
        await e1.subscribe(topics.down("edge-2"), qos=1)  # not its own: the ACL denies
        await asyncio.sleep(0.2)
        # edge-1 writes another's up: silently dropped by the ACL; its own arrives
        await e1.publish(topics.up("edge-2"), b"forged", qos=1)
        await e1.publish(topics.up("edge-1"), b"mine", qos=1)
        async with asyncio.timeout(5):
            msg = await anext(aiter(cloud.messages))
        assert (msg.topic.value, msg.payload) == (topics.up("edge-1"), b"mine")
        # cloud -> edge-2's down: edge-1 does not receive it
        await e2.subscribe(topics.down("edge-2"), qos=1)
        await asyncio.sleep(0.2)
        await cloud.publish(topics.down("edge-2"), b"for-2", qos=1)
        async with asyncio.timeout(5):
            got = await anext(aiter(e2.messages))
        assert got.payload == b"for-2"
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                await anext(aiter(e1.messages))

        # revoke edge-1: forget it, the debounced writer rewrites the file, reload
        assert auth.forget_node("edge-1")
        writer = asyncio.create_task(files.run())
        try:
            for _ in range(50):
                if "edge-1:" not in broker.passwd.read_text():
                    break
                await asyncio.sleep(0.02)
            assert "edge-1:" not in broker.passwd.read_text()
            assert "edge-2:" in broker.passwd.read_text()
            broker.reload()
            with pytest.raises(aiomqtt.MqttError):  # mosquitto closes the session
                async with asyncio.timeout(5):
                    async for _ in e1.messages:
                        pass
            # edge-2 and cloudcore keep theirs
            await e2.publish(topics.up("edge-2"), b"still here", qos=1)
            async with asyncio.timeout(5):
                msg = await anext(aiter(cloud.messages))
            assert msg.payload == b"still here"
        finally:
            writer.cancel()
            with pytest.raises(asyncio.CancelledError):
                await writer
    assert await _login(port, "edge-1", pw["edge-1"]) != "ok"


async def test_rewrites_are_debounced(tmp_path: Path) -> None:
    auth: Auth
    files = BrokerFiles(passwd=tmp_path / "passwd", acl=None,
                        passwd_text=lambda: auth.mosquitto_passwd(),  # noqa: PLW0108 (auth is bound below)
                        acl_text="",
                        min_interval=0.1)
    auth = Auth(store=FakeStore(), on_credentials=files.changed)
    task = asyncio.create_task(files.run())
    try:
        for i in range(300):
            auth.issue_credentials(f"n{i}")
            if i % 50 == 0:
                await asyncio.sleep(0)
        await asyncio.sleep(0.3)
        text = (tmp_path / "passwd").read_text()
        assert text.count("\n") == 300 and "n299:$7$" in text
        assert 1 <= files.writes <= 8  # not 300
        assert (tmp_path / "passwd").stat().st_mode & 0o777 == 0o640
        before = files.writes
        auth.forget_node("n0")  # a change after a quiet spell is written at once
        await asyncio.sleep(0.05)
        assert files.writes == before + 1 and "n0:" not in (tmp_path / "passwd").read_text()
        auth.forget_node("n1")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert "n1:" not in (tmp_path / "passwd").read_text()  # pending change flushed on stop


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[tuple[FleetCA, int, subprocess.Popen[bytes]]]:
    """mosquitto with a TLS listener from the fleet CA that requires client
    certificates and takes the CN as the username (the --node-certs setup)."""
    ca = FleetCA.open(tmp_path / "pki")
    files = ca.write_broker_certs(tmp_path / "broker", ["127.0.0.1", "localhost"])
    port = free_port()
    (tmp_path / "acl").write_text(mosquitto_acl(service_identities("cloudcore", 1)))
    conf = tmp_path / "mosquitto.conf"
    conf.write_text("\n".join([
        f"listener {port} 127.0.0.1", f"cafile {files['ca']}", f"certfile {files['cert']}",
        f"keyfile {files['key']}", "require_certificate true",
        "use_identity_as_username true", "use_username_as_clientid true",
        "allow_anonymous false", f"acl_file {tmp_path / 'acl'}", "persistence false",
        f"crlfile {files['crl']}", "log_dest none", "user root", ""]))
    proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_port("127.0.0.1", port, timeout=10)
        yield ca, port, proc
    finally:
        proc.terminate()
        proc.wait(5)


async def test_mqtt_tls_with_fleet_certificates(
        tmp_path: Path, tls_broker: tuple[FleetCA, int, subprocess.Popen[bytes]]) -> None:
    """cloudcore's own connections over TLS to a listener that wants client
    certificates: its identities present fleet-CA certificates, a node logs in with
    the certificate issued at join, a client without one or with another CA's cannot."""
    ca, port, _ = tls_broker
    def cert_files(name: str) -> tuple[Path, Path]:
        issued = ca.issue_client(name)
        crt, key = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
        crt.write_text(issued.cert)
        key.write_text(issued.key)
        return crt, key

    settings = MqttSettings(host="127.0.0.1", port=port, tls=True,
                            reconnect_base=0.05, reconnect_cap=0.2)
    got: list[tuple[str, bytes]] = []
    up = asyncio.Event()
    sub = Subscriber(settings, handler=lambda t, p: got.append((t, p)),
                     on_connected=lambda ok: up.set() if ok else None,
                     tls=client_tls(ca.cert_path, cert=cert_files("cloudcore_sub")))
    pub = Publisher(settings, index=0,
                    tls=client_tls(ca.cert_path, cert=cert_files("cloudcore_pub0")))
    tasks = [asyncio.create_task(sub.run()), asyncio.create_task(pub.run())]
    try:
        async with asyncio.timeout(10):
            await up.wait()
        edge_tls = client_tls(ca.cert_path, cert=cert_files("edge-1"))
        async with aiomqtt.Client("127.0.0.1", port, tls_context=edge_tls,
                                  identifier="edge-1", timeout=5) as edge:
            await edge.subscribe(topics.down("edge-1"), qos=1)
            await edge.publish(topics.up("edge-1"), b"hi", qos=1)
            pub.enqueue(topics.down("edge-1"), b"down")
            async with asyncio.timeout(5):
                msg = await anext(aiter(edge.messages))
            assert msg.payload == b"down"
        while not got:
            await asyncio.sleep(0.02)
        assert got == [(topics.up("edge-1"), b"hi")]
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    # no client certificate, or one from another CA: refused
    with pytest.raises(aiomqtt.MqttError):
        async with aiomqtt.Client("127.0.0.1", port, timeout=1, identifier="x",
                                  tls_context=client_tls(ca.cert_path)):
            pass
    other = FleetCA.open(tmp_path / "other")
    issued = other.issue_client("edge-1")
    (tmp_path / "o.crt").write_text(issued.cert)
    (tmp_path / "o.key").write_text(issued.key)
    with pytest.raises(aiomqtt.MqttError):
        async with aiomqtt.Client("127.0.0.1", port, timeout=1, identifier="edge-1",
                                  tls_context=client_tls(
                                      ca.cert_path,
                                      cert=(tmp_path / "o.crt", tmp_path / "o.key"))):
            pass


async def test_revoking_a_node_certificate_closes_its_session(
        tmp_path: Path, tls_broker: tuple[FleetCA, int, subprocess.Popen[bytes]]) -> None:
    """--node-certs: deleting the node writes the CRL (the reload refuses the
    certificate from then on) and the closer takes the client id over, so the session
    that mosquitto would keep across the reload ends at once."""
    ca, port, proc = tls_broker
    clock_now = 1_800_000_000.0
    closer = SessionCloser("127.0.0.1", port, tls_for=lambda n: _tls(ca, tmp_path, n),
                           delay=0.0)
    auth = Auth(store=FakeStore(), on_revoked=closer.close, clock=lambda: clock_now)
    auth.issue_credentials("edge-1")
    issued = ca.issue_client("edge-1")
    auth.record_client_cert("edge-1", serial=issued.serial, not_after=issued.not_after)
    (tmp_path / "e.crt").write_text(issued.cert)
    (tmp_path / "e.key").write_text(issued.key)
    edge_tls = client_tls(ca.cert_path, cert=(tmp_path / "e.crt", tmp_path / "e.key"))
    crl_file = tmp_path / "broker" / "crl.pem"
    task = asyncio.create_task(closer.run())
    try:
        async with aiomqtt.Client("127.0.0.1", port, tls_context=edge_tls,
                                  identifier="edge-1", timeout=5) as edge:
            await edge.subscribe(topics.down("edge-1"), qos=1)
            assert auth.forget_node("edge-1")
            crl_file.write_bytes(ca.crl(auth.revoked_serials()))
            proc.send_signal(signal.SIGHUP)
            with pytest.raises(aiomqtt.MqttError):
                async with asyncio.timeout(5):
                    async for _ in edge.messages:
                        pass
        async with asyncio.timeout(5):  # it was the takeover that closed it
            while closer.closed != 1:
                await asyncio.sleep(0.02)
        with pytest.raises(aiomqtt.MqttError):  # and it cannot come back
            async with aiomqtt.Client("127.0.0.1", port, tls_context=edge_tls,
                                      identifier="edge-1", timeout=1):
                pass
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def _tls(ca: FleetCA, d: Path, node: str) -> ssl.SSLContext:
    issued = ca.issue_client(node, days=1)
    (d / "k.crt").write_text(issued.cert)
    (d / "k.key").write_text(issued.key)
    return client_tls(ca.cert_path, cert=(d / "k.crt", d / "k.key"))


async def test_service_keeps_the_broker_files_and_logs_in_as_its_identities(
        tmp_path: Path, settings: Any, service_factory: Any) -> None:
    """cloudcore as shipped (secure) with --mosquitto-passwd/--mosquitto-acl and no
    password given: it makes its own, writes its identities and the ACL, logs in to a
    broker that allows nobody else, and a node that joins can log in once the file is
    rewritten and the broker reloaded."""
    broker = Broker(tmp_path / "mq")
    broker.dir.mkdir()
    settings.insecure = False
    settings.forecast.enabled = False
    settings.mqtt.port = broker.port
    settings.mqtt.publishers = 2
    settings.auth.mosquitto_passwd, settings.auth.mosquitto_acl = broker.passwd, broker.acl
    running = await service_factory().start()
    state = settings.store.state_dir
    password = (state / "mqtt.password").read_text().strip()
    assert (state / "mqtt.password").stat().st_mode & 0o777 == 0o600 and len(password) >= 24
    users = [line.split(":")[0] for line in broker.passwd.read_text().splitlines()]
    assert users == ["cloudcore_pub0", "cloudcore_pub1", "cloudcore_sub"]
    assert "user cloudcore_pub1\n" in broker.acl.read_text()
    broker.start()
    try:
        ca = ssl.create_default_context(cafile=str(state / "pki" / "ca.crt"))
        admin = {"Authorization": "Bearer " + (state / "admin.token").read_text().strip()}
        async with httpx.AsyncClient(base_url=running.url, verify=ca, headers=admin) as api:
            async with asyncio.timeout(10):
                while (await api.get("/readyz")).status_code != 200:
                    await asyncio.sleep(0.05)
            token = (await api.post("/api/v1/jointokens", json={})).json()["token"]
            r = await api.post("/api/v1/join", json={"token": token, "name": "edge-1"})
            assert r.status_code == 200, r.text
            creds = r.json()["credentials"]
        async with asyncio.timeout(5):
            while "edge-1:" not in broker.passwd.read_text():
                await asyncio.sleep(0.05)
        broker.reload()
        await asyncio.sleep(0.3)
        assert await _login(broker.port, "edge-1", creds["password"]) == "ok"
        # a node's password opens only its own identity
        assert await _login(broker.port, "cloudcore_sub", creds["password"]) != "ok"
    finally:
        broker.stop()
