"""The link over TLS to a real mosquitto that requires a client certificate from the
fleet CA (mosquitto `require_certificate` + `use_identity_as_username`)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edgecore.link import Link, TlsFiles
from shared import seal, topics
from shared.codec import Resync, decode

NODE = "edge-tls-1"
KEY = bytes(range(32))
pytestmark = pytest.mark.timeout(60)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key: Any) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _issue(d: Path, name: str, cn: str, ca_key: Any, ca: x509.Certificate | None,
           *, server: bool = False) -> tuple[Any, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    b = (x509.CertificateBuilder().subject_name(_name(cn))
         .issuer_name(ca.subject if ca else _name(cn)).public_key(key.public_key())
         .serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(minutes=1))
         .not_valid_after(now + datetime.timedelta(days=1)))
    if ca is None:
        b = b.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    if server:
        b = b.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    cert = b.sign(ca_key or key, hashes.SHA256())
    (d / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / f"{name}.key").write_bytes(_pem_key(key))
    return key, cert


@pytest.fixture
def tls_broker() -> Iterator[tuple[int, Path]]:
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(exe).exists():
        pytest.skip("mosquitto is not installed")
    # mosquitto drops root for its own user: the files must be readable outside the
    # 0700 pytest tree (throwaway test keys only)
    d = Path(tempfile.mkdtemp(prefix="edgefed-tls-"))
    d.chmod(0o755)
    ca_key, ca = _issue(d, "ca", "fleet CA", None, None)
    _issue(d, "broker", "broker", ca_key, ca, server=True)
    _issue(d, "node", NODE, ca_key, ca)
    _issue(d, "cloud", "cloudcore_sub", ca_key, ca)
    _issue(d, "rogue-ca", "rogue", None, None)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for f in d.iterdir():
        f.chmod(0o644)
    conf = d / "mosquitto.conf"
    conf.write_text("\n".join([
        f"listener {port} 127.0.0.1", "allow_anonymous true",
        f"cafile {d / 'ca.crt'}", f"certfile {d / 'broker.crt'}", f"keyfile {d / 'broker.key'}",
        "require_certificate true", "use_identity_as_username true", ""]))
    proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            assert time.monotonic() < deadline, "mosquitto did not start"
            time.sleep(0.05)
        yield port, d
    finally:
        proc.terminate()
        proc.wait(5)
        shutil.rmtree(d, ignore_errors=True)


class _Handler:
    def hello(self) -> Resync:
        return Resync(node=NODE, gen=0)

    def pending(self, after: int) -> list[tuple[int, bytes]]:
        return []

    async def handle(self, msg: Any) -> list[Any]:
        return []


async def test_link_speaks_tls_with_a_client_certificate(tls_broker: tuple[int, Path]) -> None:
    port, d = tls_broker
    keys = seal.NodeKeys.derive(KEY)
    cloud_tls = ssl.create_default_context(cafile=str(d / "ca.crt"))
    cloud_tls.load_cert_chain(str(d / "cloud.crt"), str(d / "cloud.key"))
    async with aiomqtt.Client("127.0.0.1", port, identifier="cloudcore_sub",
                              tls_context=cloud_tls) as cloud:
        await cloud.subscribe(topics.up(NODE), qos=1)
        link = Link(node=NODE, host="127.0.0.1", port=port, handler=_Handler(), keys=keys,
                    tls=TlsFiles(ca_file=d / "ca.crt", client_cert=d / "node.crt",
                                 client_key=d / "node.key"))
        task = asyncio.create_task(link.run())
        try:
            async with asyncio.timeout(10):
                async for m in cloud.messages:
                    hello = decode(seal.unseal(keys.up, m.topic.value, bytes(m.payload)))  # type: ignore[arg-type]
                    assert isinstance(hello, Resync) and hello.node == NODE
                    break
            assert link.connected and link.stats.connects == 1
            # a renewed certificate: the link reconnects on request, and says hello again
            link.reconnect()
            async with asyncio.timeout(10):
                async for m in cloud.messages:
                    again = decode(seal.unseal(keys.up, m.topic.value, bytes(m.payload)))  # type: ignore[arg-type]
                    assert isinstance(again, Resync)
                    break
            assert link.stats.connects == 2
            # stopped at once, here often with the hello's PUBACK arriving in the same
            # loop turn as the cancel (which aiomqtt's wait_for swallowed before
            # link._resume_cancel)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


@pytest.mark.parametrize("case", ["no-client-cert", "wrong-ca"])
async def test_link_without_the_right_certificates_never_connects(
        tls_broker: tuple[int, Path], case: str) -> None:
    port, d = tls_broker
    tls = (TlsFiles(ca_file=d / "ca.crt") if case == "no-client-cert" else
           TlsFiles(ca_file=d / "rogue-ca.crt", client_cert=d / "node.crt",
                    client_key=d / "node.key"))
    link = Link(node=NODE, host="127.0.0.1", port=port, handler=_Handler(), tls=tls,
                op_timeout_s=2)
    task = asyncio.create_task(link.run())
    try:
        deadline = time.monotonic() + 10
        while link.stats.connect_failures < 1:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        assert not link.connected and link.stats.connects == 0
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
