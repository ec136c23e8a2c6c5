"""The testbed's secure mosquitto: TLS from the fleet CA, no anonymous clients, the
password file and ACL it is handed (as cloudcore writes them), one session per
identity, a reload when the files change, a log file; and the open mode, which warns.

A real mosquitto; certificates from cloudcore's fleet CA module."""

from __future__ import annotations

import asyncio
import logging
import shutil
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from cloudcore.auth.pki import FleetCA
from testbed.broker import BrokerSecurity, Mosquitto

ACL = """\
user svc_sub
topic readwrite fed/v1/#

pattern read fed/v1/+/%u/down
pattern write fed/v1/+/%u/up
pattern write fed/v1/+/%u/will
"""


def _passwd(path: Path, users: dict[str, str]) -> None:
    path.unlink(missing_ok=True)
    path.touch()
    for u, p in users.items():
        subprocess.run(["mosquitto_passwd", "-b", str(path), u, p], check=True,
                       capture_output=True)


@pytest.fixture
def secure(tmp_path: Path) -> Iterator[tuple[Mosquitto, FleetCA]]:
    if shutil.which("mosquitto_passwd") is None:
        pytest.skip("mosquitto_passwd is not installed")
    ca = FleetCA.open(tmp_path / "pki")
    sec = BrokerSecurity(client_cert_port=0, probe_password="probe-pw")
    broker = Mosquitto(workdir=tmp_path / "mosquitto", security=sec)
    ca.write_broker_certs(broker.tls_dir, ["127.0.0.1"])
    _passwd(broker.passwd, {"svc_sub": "svc-pw", "edge-a": "a-pw", "edge-b": "b-pw"})
    broker.acl.write_text(ACL)
    with broker:
        yield broker, ca


def _tls(ca: Path, cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    if cert:
        ctx.load_cert_chain(*cert)
    return ctx


async def _login(port: int, **kw: Any) -> str:
    try:
        async with aiomqtt.Client("127.0.0.1", port, timeout=5, **kw):
            return "ok"
    except aiomqtt.MqttError as exc:
        return str(exc) or type(exc).__name__


def test_tls_and_credentials_are_required(secure: tuple[Mosquitto, FleetCA]) -> None:
    broker, _ = secure
    assert broker.ca_file is not None and broker.tls and not broker.insecure
    tls = _tls(broker.ca_file)
    assert asyncio.run(_login(broker.port, tls_context=tls, username="edge-a",
                              password="a-pw")) == "ok"
    # anonymous, a wrong password, and plain TCP to the TLS listener are all refused
    assert asyncio.run(_login(broker.port, tls_context=tls)) != "ok"
    assert asyncio.run(_login(broker.port, tls_context=tls, username="edge-a",
                              password="b-pw")) != "ok"
    assert asyncio.run(_login(broker.port, username="edge-a", password="a-pw")) != "ok"
    # a client that does not know the fleet CA does not trust the broker
    assert asyncio.run(_login(broker.port, tls_context=ssl.create_default_context(),
                              username="edge-a", password="a-pw")) != "ok"
    conf = (broker.rundir / "mosquitto.conf").read_text()
    for line in ("allow_anonymous false", "use_username_as_clientid true",
                 "require_certificate true", "use_identity_as_username true"):
        assert line in conf
    assert "log_dest none" not in conf
    text = broker.log.read_text()
    assert "edge-a" in text and "not authorised" in text.lower()


def test_client_id_is_the_username_so_no_takeover(secure: tuple[Mosquitto, FleetCA]) -> None:
    broker, _ = secure
    assert broker.ca_file is not None
    tls = _tls(broker.ca_file)

    async def scenario() -> bool:
        # edge-b asks for svc's client id: the broker gives it its own (edge-b), so
        # svc's session stays up and keeps receiving
        async with aiomqtt.Client("127.0.0.1", broker.port, timeout=5, tls_context=tls,
                                  username="svc_sub", password="svc-pw",
                                  identifier="svc_sub") as svc, \
                aiomqtt.Client("127.0.0.1", broker.port, timeout=5, tls_context=tls,
                               username="edge-b", password="b-pw", identifier="svc_sub"):
            await svc.subscribe("fed/v1/x/edge-a/up", qos=1)
            async with aiomqtt.Client("127.0.0.1", broker.port, timeout=5,
                                      tls_context=tls, username="edge-a",
                                      password="a-pw") as a:
                await a.publish("fed/v1/x/edge-a/up", b"hello", qos=1)
            async with asyncio.timeout(5):
                msg = await anext(aiter(svc.messages))
            return bytes(msg.payload) == b"hello"  # type: ignore[arg-type]
    assert asyncio.run(scenario())


def test_node_client_certificate_listener(secure: tuple[Mosquitto, FleetCA],
                                          tmp_path: Path) -> None:
    broker, ca = secure
    assert broker.ca_file is not None and broker.cert_port
    issued = ca.issue_client("edge-a")
    crt, key = tmp_path / "edge-a.crt", tmp_path / "edge-a.key"
    crt.write_text(issued.cert)
    key.write_text(issued.key)
    assert asyncio.run(_login(broker.cert_port, tls_context=_tls(broker.ca_file,
                                                                  (crt, key)))) == "ok"
    # without a certificate that listener takes nobody, password or not
    assert asyncio.run(_login(broker.cert_port, tls_context=_tls(broker.ca_file),
                              username="edge-a", password="a-pw")) != "ok"


def test_changed_files_reload_the_broker(secure: tuple[Mosquitto, FleetCA]) -> None:
    broker, _ = secure
    assert broker.ca_file is not None
    tls = _tls(broker.ca_file)
    before = broker.reloads
    _passwd(broker.passwd, {"svc_sub": "svc-pw", "edge-c": "c-pw"})
    deadline = time.monotonic() + 5
    while broker.reloads == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert broker.reloads > before
    time.sleep(0.3)
    assert asyncio.run(_login(broker.port, tls_context=tls, username="edge-c",
                              password="c-pw")) == "ok"
    assert asyncio.run(_login(broker.port, tls_context=tls, username="edge-a",
                              password="a-pw")) != "ok"


def test_open_mode_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="testbed.broker"), \
            Mosquitto(workdir=tmp_path / "m", insecure=True) as broker:
        assert broker.insecure and not broker.tls
        assert asyncio.run(_login(broker.port)) == "ok"
    assert "INSECURE broker" in caplog.text


def test_the_probe_listener_has_its_own_user(secure: tuple[Mosquitto, FleetCA]) -> None:
    broker, _ = secure
    assert broker.ca_file is not None and broker.probe_port
    tls = _tls(broker.ca_file)

    async def scenario() -> bytes:
        async with aiomqtt.Client("127.0.0.1", broker.port, timeout=5, tls_context=tls,
                                  username="edge-a", password="a-pw") as a, \
                aiomqtt.Client("127.0.0.1", broker.probe_port, timeout=5, tls_context=tls,
                               username="probe", password="probe-pw") as probe:
            await a.subscribe("fed/v1/x/edge-a/down", qos=1)
            await probe.publish("fed/v1/x/edge-a/down", b"from the probe", qos=1)
            async with asyncio.timeout(5):
                msg = await anext(aiter(a.messages))
            return bytes(msg.payload)  # type: ignore[arg-type]
    assert asyncio.run(scenario()) == b"from the probe"
    # the probe's password is good on its own listener only
    assert asyncio.run(_login(broker.port, tls_context=tls, username="probe",
                              password="probe-pw")) != "ok"


def test_an_open_broker_must_be_asked_for(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="insecure=True"):
        Mosquitto(workdir=tmp_path / "m")


def test_a_picked_port_taken_before_start_is_picked_again(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A port free when picked may be taken (by any process's connection) before mosquitto
    binds it; on two addresses, it must be free on both. CI failed four fleets' setup so
    (`Address already in use` on the second listener). A port asked for is never moved."""
    import socket

    broker = Mosquitto(workdir=tmp_path / "m", hosts=("127.0.0.1", "127.0.0.2"), insecure=True)
    taken = broker.port
    with socket.socket() as squat:
        squat.bind(("127.0.0.2", taken))
        squat.listen()
        with caplog.at_level(logging.WARNING, logger="testbed.broker"), broker:
            assert broker.port != taken
            assert asyncio.run(_login(broker.port)) == "ok"
        assert f"port {taken} was taken" in caplog.text
        asked = Mosquitto(workdir=tmp_path / "n", hosts=("127.0.0.1", "127.0.0.2"),
                          port=taken, insecure=True)
        with pytest.raises(RuntimeError, match="Address already in use"):
            asked.start()
