"""The fleet CA with real cryptography: files and modes, issuing, TLS that verifies."""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cloudcore.__main__ import main
from cloudcore.auth import pki
from cloudcore.auth.pki import FleetCA, ca_cert_hash, cert_names
from cloudcore.errors import ConfigError
from shared.names import reserved_node_name


def _mode(p: Path) -> int:
    return p.stat().st_mode & 0o777


def test_ca_is_made_once_with_safe_modes(tmp_path: Path) -> None:
    d = tmp_path / "pki"
    ca = FleetCA.open(d)
    assert _mode(d) == 0o700 and _mode(d / "ca.key") == 0o600
    assert _mode(d / "ca.crt") == 0o644
    cert = x509.load_pem_x509_certificate((d / "ca.crt").read_bytes())
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    days = (cert.not_valid_after_utc - cert.not_valid_before_utc).days
    assert 3649 <= days <= 3651
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    der = cert.public_bytes(serialization.Encoding.DER)
    assert ca.hash == ca_cert_hash(ca.cert_pem) == "sha256:" + hashlib.sha256(der).hexdigest()
    assert ca.pin == ca.hash.removeprefix("sha256:")
    # opened again: the same CA, not a new one
    assert FleetCA.open(d).hash == ca.hash
    # half a CA is refused rather than silently replaced
    (d / "ca.key").unlink()
    with pytest.raises(ConfigError, match="only one of"):
        FleetCA.open(d)


def test_server_cert_names_renewal_and_a_real_handshake(tmp_path: Path) -> None:
    now = [1_800_000_000.0]
    ca = FleetCA.open(tmp_path / "pki", clock=lambda: now[0])
    crt, key = ca.ensure_server_cert("api", pki.api_hosts("0.0.0.0", ["api.example", "10.1.2.3"]))
    names = cert_names(crt.read_bytes())
    assert {"127.0.0.1", "localhost", "api.example", "10.1.2.3"} <= names
    assert "0.0.0.0" not in names
    assert _mode(key) == 0o600
    first = crt.read_bytes()
    hosts = pki.api_hosts("0.0.0.0", ["api.example", "10.1.2.3"])
    ca.ensure_server_cert("api", hosts)
    assert crt.read_bytes() == first  # same names, far from expiry: kept
    ca.ensure_server_cert("api", [*hosts, "other.example"])
    assert crt.read_bytes() != first and "other.example" in cert_names(crt.read_bytes())
    second = crt.read_bytes()
    now[0] += 340 * 86400  # within 30 days of expiry: issued again
    ca.ensure_server_cert("api", [*hosts, "other.example"])
    assert crt.read_bytes() != second
    cert = x509.load_pem_x509_certificate(crt.read_bytes())
    cert.verify_directly_issued_by(ca.cert)


async def _handshake(ca_file: Path, crt: Path, key: Path, host: str) -> bytes:
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(crt, key)

    async def serve(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"hello")
        await w.drain()
        w.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        client_ctx = ssl.create_default_context(cafile=str(ca_file))
        r, w = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx,
                                             server_hostname=host)
        data = await r.read()
        w.close()
        return data
    finally:
        server.close()
        await server.wait_closed()


async def test_tls_verifies_against_the_fleet_ca_only(tmp_path: Path) -> None:
    ca = FleetCA.open(tmp_path / "pki")
    crt, key = ca.ensure_server_cert("api", ["127.0.0.1", "localhost"])
    assert await _handshake(ca.cert_path, crt, key, "localhost") == b"hello"
    assert await _handshake(ca.cert_path, crt, key, "127.0.0.1") == b"hello"
    with pytest.raises(ssl.SSLCertVerificationError, match="match"):
        await _handshake(ca.cert_path, crt, key, "elsewhere.example")
    other = FleetCA.open(tmp_path / "other")
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        await _handshake(other.cert_path, crt, key, "localhost")


def test_client_cert_is_the_node(tmp_path: Path) -> None:
    ca = FleetCA.open(tmp_path / "pki", clock=lambda: 1_800_000_000.0)
    issued = ca.issue_client("edge-7")
    cert = x509.load_pem_x509_certificate(issued.cert.encode())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "edge-7"
    assert cert.serial_number == issued.serial
    assert issued.not_after == int(cert.not_valid_after_utc.timestamp())
    assert 89 <= (cert.not_valid_after_utc - cert.not_valid_before_utc).days <= 90
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    cert.verify_directly_issued_by(ca.cert)
    key = serialization.load_pem_private_key(issued.key.encode(), password=None)
    assert key.public_key() == cert.public_key()  # type: ignore[comparison-overlap]


def test_pki_broker_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state, out = tmp_path / "state", tmp_path / "broker"
    assert main(["pki", "broker", "--state-dir", str(state), "--out", str(out),
                 "--host", "mqtt.example", "--host", "192.0.2.7"]) == 0
    assert (state / "pki" / "ca.crt").read_bytes() == (out / "ca.crt").read_bytes()
    assert _mode(out / "broker.key") == 0o640 and _mode(out / "broker.crt") == 0o644
    assert cert_names((out / "broker.crt").read_bytes()) == {"mqtt.example", "192.0.2.7"}
    printed = capsys.readouterr().out
    assert "broker.crt" in printed and FleetCA.open(state / "pki").hash in printed
    with pytest.raises(SystemExit):  # --host is required
        main(["pki", "broker", "--state-dir", str(state), "--out", str(out)])


@pytest.mark.parametrize(("name", "reserved"), [
    ("edge-1", False), ("cloudcore", True), ("cloudcore-2", True), ("edgefed", True),
    ("mosquitto.lan", True), ("admin", True), ("root", True), ("rooted", False),
    ("cloudcore_sub", True), ("my-cloudcore", False)])
def test_reserved_names(name: str, reserved: bool) -> None:
    assert (reserved_node_name(name) is not None) is reserved


async def test_running_service_reloads_a_renewed_api_cert(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from cloudcore.config import Settings
    from cloudcore.service import _renew_api_cert

    now = [1_800_000_000.0]
    settings = Settings()
    settings.store.state_dir = tmp_path
    ca = FleetCA.open(settings.pki_dir, clock=lambda: now[0])
    crt, _ = ca.ensure_server_cert("api", pki.api_hosts(settings.http.host, []))
    loads: list[str] = []
    ctx = SimpleNamespace(load_cert_chain=lambda c, k: loads.append(Path(c).read_text()))
    server = SimpleNamespace(config=SimpleNamespace(ssl=ctx))
    task = asyncio.create_task(_renew_api_cert(settings, ca, server, every=0.01))  # type: ignore[arg-type]
    try:
        await asyncio.sleep(0.05)
        assert loads == []  # far from expiry: nothing to do
        now[0] += 340 * 86400
        for _ in range(100):
            if loads:
                break
            await asyncio.sleep(0.01)
        assert loads == [crt.read_text()]
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
