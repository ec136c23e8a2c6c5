"""The fleet CA: the one root of trust for TLS in a fleet (proposal 0002).

cloudcore makes the CA on its first start (`STATE/pki/ca.crt` + `ca.key`, EC P-256,
10 years; the directory 0700, the key 0600) and issues from it:

- the API's server certificate (`STATE/pki/api.crt` + `.key`, about a year, issued
  again when less than 30 days are left or the names it must carry change);
- the broker's server certificate (`cloudcore pki broker`, or `--broker-cert-dir` at
  start): `DIR/ca.crt`, `DIR/broker.crt`, `DIR/broker.key`, readable by the broker;
- node client certificates (CN = node name, 90 days) with `--node-certs`, the key made
  here and handed over once, in the join or renewal answer.

Clients pin the CA by `ca_cert_hash()`: "sha256:" + the hex SHA-256 of its DER, the
third part of a printed join token. Everything is done with `cryptography`; nothing
shells out to openssl. The module is synchronous and small: a CA is a certificate, a
key and the directory they live in.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import grp
import hashlib
import ipaddress
import os
import secrets
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cloudcore.errors import ConfigError

CA_DAYS = 3650
"""Lifetime of the fleet CA, days (10 years)."""
SERVER_DAYS = 365
"""Lifetime of a server certificate (API, broker), days."""
CLIENT_DAYS = 90
"""Lifetime of a node client certificate, days (renewed when a third is left)."""
RENEW_BEFORE = 30 * 86400.0
"""A server certificate with less than this many seconds left is issued again at start."""
_BACKDATE = 300.0
"""Seconds a certificate's notBefore lies in the past, for clocks a little behind."""


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key, both PEM, and when it expires (unix s)."""

    cert: str
    key: str
    not_after: int
    serial: int = 0


def ca_cert_hash(cert: x509.Certificate | str | bytes) -> str:
    """`sha256:<hex>` of the certificate's DER (a PEM string or bytes, or a loaded cert)."""
    if isinstance(cert, str | bytes):
        raw = cert.encode() if isinstance(cert, str) else cert
        cert = x509.load_pem_x509_certificate(raw)
    der = cert.public_bytes(serialization.Encoding.DER)
    return "sha256:" + hashlib.sha256(der).hexdigest()


def not_after(cert_pem: str | bytes) -> float:
    """The expiry of a PEM certificate, unix seconds."""
    raw = cert_pem.encode() if isinstance(cert_pem, str) else cert_pem
    return x509.load_pem_x509_certificate(raw).not_valid_after_utc.timestamp()


def cert_names(cert_pem: str | bytes) -> set[str]:
    """The DNS names and IP addresses (as text) of a PEM certificate's SAN."""
    raw = cert_pem.encode() if isinstance(cert_pem, str) else cert_pem
    cert = x509.load_pem_x509_certificate(raw)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return ({str(n) for n in san.get_values_for_type(x509.DNSName)}
            | {str(n) for n in san.get_values_for_type(x509.IPAddress)})


class FleetCA:
    """The CA certificate and key, and the directory they are kept in."""

    def __init__(self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey,
                 directory: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.cert = cert
        self.key = key
        self.directory = directory
        self.clock = clock
        self.cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
        self.hash = ca_cert_hash(cert)
        """`sha256:<hex of the DER>`, as `GET /api/v1/ca` answers."""

    @property
    def pin(self) -> str:
        """The hex digest alone: the third part of a printed join token."""
        return self.hash.removeprefix("sha256:")

    @property
    def cert_path(self) -> Path:
        return self.directory / "ca.crt"

    # -- creating and loading ------------------------------------------------------

    @classmethod
    def open(cls, directory: Path, *, clock: Callable[[], float] = time.time) -> FleetCA:
        """Load the CA from `directory` (ca.crt + ca.key), creating both if neither exists.

        A directory with only one of them is refused (ConfigError): making a new CA
        there would silently cut every node off from the old one."""
        directory = Path(directory)
        crt, key = directory / "ca.crt", directory / "ca.key"
        if crt.exists() != key.exists():
            raise ConfigError(f"pki: {directory} has only one of ca.crt and ca.key; restore "
                              "the other or remove both to make a new fleet CA",
                              field="pki")
        if not crt.exists():
            return cls._create(directory, clock=clock)
        try:
            cert = x509.load_pem_x509_certificate(crt.read_bytes())
            loaded = serialization.load_pem_private_key(key.read_bytes(), password=None)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"pki: cannot read the fleet CA in {directory}: {exc}",
                              field="pki") from exc
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise ConfigError(f"pki: {key} is not an EC private key", field="pki")
        return cls(cert, loaded, directory, clock=clock)

    @classmethod
    def _create(cls, directory: Path, *, clock: Callable[[], float]) -> FleetCA:
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o700)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edgefed"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"edgefed fleet CA {secrets.token_hex(4)}"),
        ])
        now = _utc(clock() - _BACKDATE)
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (x509.CertificateBuilder()
                .subject_name(name).issuer_name(name)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now)
                .not_valid_after(now + dt.timedelta(days=CA_DAYS))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(
                    digital_signature=True, key_cert_sign=True, crl_sign=True,
                    content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, encipher_only=False,
                    decipher_only=False), critical=True)
                .add_extension(ski, critical=False)
                .sign(key, hashes.SHA256()))
        _write(directory / "ca.key", _key_pem(key), 0o600)
        _write(directory / "ca.crt", cert.public_bytes(serialization.Encoding.PEM), 0o644)
        return cls(cert, key, directory, clock=clock)

    # -- issuing -------------------------------------------------------------------

    def issue_server(self, hosts: Iterable[str], *, days: int = SERVER_DAYS,
                     common_name: str | None = None) -> Issued:
        """A server certificate for `hosts` (DNS names or IP addresses)."""
        names = _unique(hosts)
        if not names:
            raise ConfigError("pki: a server certificate needs at least one host name",
                              field="pki")
        return self._issue(common_name or names[0], days=days, sans=names,
                           usage=ExtendedKeyUsageOID.SERVER_AUTH)

    def issue_client(self, name: str, *, days: int = CLIENT_DAYS) -> Issued:
        """A client certificate with CN = `name` (a node or a service identity)."""
        return self._issue(name, days=days, sans=[],
                           usage=ExtendedKeyUsageOID.CLIENT_AUTH)

    def _issue(self, cn: str, *, days: int, sans: list[str],
               usage: x509.ObjectIdentifier) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        now = _utc(self.clock() - _BACKDATE)
        end = min(now + dt.timedelta(days=days), self.cert.not_valid_after_utc)
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
                   .issuer_name(self.cert.subject)
                   .public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now)
                   .not_valid_after(end)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None),
                                  critical=True)
                   .add_extension(x509.KeyUsage(
                       digital_signature=True, key_cert_sign=False, crl_sign=False,
                       content_commitment=False, key_encipherment=False,
                       data_encipherment=False, key_agreement=True, encipher_only=False,
                       decipher_only=False), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                                  critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                       self.key.public_key()), critical=False))
        if sans:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([_general_name(h) for h in sans]),
                critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return Issued(cert=cert.public_bytes(serialization.Encoding.PEM).decode(),
                      key=_key_pem(key).decode(), not_after=int(end.timestamp()),
                      serial=cert.serial_number)

    def ensure_server_cert(self, name: str, hosts: Iterable[str], *,
                           directory: Path | None = None, days: int = SERVER_DAYS,
                           key_mode: int = 0o600) -> tuple[Path, Path]:
        """`directory/<name>.crt` + `.key` for `hosts`, issued again when missing, near
        expiry (RENEW_BEFORE), for other names, or not from this CA. Returns the paths."""
        where = Path(directory) if directory is not None else self.directory
        crt, key = where / f"{name}.crt", where / f"{name}.key"
        names = _unique(hosts)
        if not self._still_good(crt, key, names):
            issued = self.issue_server(names, days=days)
            where.mkdir(parents=True, exist_ok=True)
            _write(key, issued.key.encode(), key_mode)
            _write(crt, issued.cert.encode(), 0o644)
        return crt, key

    def _still_good(self, crt: Path, key: Path, names: list[str]) -> bool:
        try:
            cert = x509.load_pem_x509_certificate(crt.read_bytes())
            if not key.exists():
                return False
        except (OSError, ValueError):
            return False
        if cert.issuer != self.cert.subject:
            return False
        try:
            cert.verify_directly_issued_by(self.cert)
        except (ValueError, TypeError, InvalidSignature):
            return False
        if cert.not_valid_after_utc.timestamp() - self.clock() < RENEW_BEFORE:
            return False
        return cert_names(crt.read_bytes()) == {_canonical(h) for h in names}

    def crl(self, revoked: Iterable[tuple[int, float]]) -> bytes:
        """A PEM CRL of `revoked` (serial, notAfter) certificates, for the broker's
        `crlfile`. Its nextUpdate is the CA's own expiry: cloudcore pushes a new CRL
        when it revokes, and an expired CRL would make OpenSSL refuse every client."""
        now = _utc(self.clock() - _BACKDATE)
        builder = (x509.CertificateRevocationListBuilder()
                   .issuer_name(self.cert.subject)
                   .last_update(now)
                   .next_update(self.cert.not_valid_after_utc)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                       self.key.public_key()), critical=False))
        for serial, _ in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial)
                .revocation_date(now).build())
        return builder.sign(self.key, hashes.SHA256()).public_bytes(
            serialization.Encoding.PEM)

    def write_broker_certs(self, out: Path, hosts: Iterable[str]) -> dict[str, Path]:
        """`out/ca.crt`, `out/broker.crt` (0644) and `out/broker.key` (0640; group kept,
        or `mosquitto` when run as root and that group exists) for a broker's TLS
        listener, and `out/crl.pem` (empty, if missing; cloudcore rewrites it when it
        revokes node certificates). Issued again only when needed (ensure_server_cert)."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        _write(out / "ca.crt", self.cert_pem.encode(), 0o644)
        crt, key = self.ensure_server_cert("broker", hosts, directory=out, key_mode=0o640)
        _broker_group(key)
        if not (out / "crl.pem").exists():
            write_file(out / "crl.pem", self.crl([]), 0o644)
        return {"ca": out / "ca.crt", "cert": crt, "key": key, "crl": out / "crl.pem"}


def api_hosts(bind_host: str, extra: Iterable[str] = ()) -> list[str]:
    """The names the API certificate carries: loopback, the bind address, this
    machine's host name and `extra` (`--api-san`). For a wildcard bind, also the
    addresses the host name resolves to (other addresses need `--api-san`)."""
    hosts = ["127.0.0.1", "localhost"]
    wildcard = bind_host in ("0.0.0.0", "::", "")
    if not wildcard:
        hosts.append(bind_host)
    with contextlib.suppress(OSError):
        name = socket.gethostname()
        hosts.append(name)
        if wildcard:
            hosts += [str(info[4][0]) for info in socket.getaddrinfo(
                name, None, type=socket.SOCK_STREAM) if "%" not in str(info[4][0])]
    hosts.extend(extra)
    return _unique(hosts)


# -- helpers -------------------------------------------------------------------------


def _utc(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(int(ts), tz=dt.UTC)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _canonical(host: str) -> str:
    host = host.strip().strip("[]")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host.lower()


def _unique(hosts: Iterable[str]) -> list[str]:
    out: list[str] = []
    for h in hosts:
        c = _canonical(h)
        if c and c not in out:
            out.append(c)
    return out


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def write_file(path: Path, data: bytes, mode: int) -> None:
    """Write `path` atomically with `mode` (see `_write`)."""
    _write(path, data, mode)


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write atomically with `mode` from the first byte (a key is never world-readable,
    not even for a moment), keeping an existing file's group."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)  # the umask may have taken bits away
        with contextlib.suppress(FileNotFoundError, PermissionError):
            gid = path.stat().st_gid
            if gid != tmp.stat().st_gid:
                os.chown(tmp, -1, gid)
        tmp.replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _broker_group(key: Path) -> None:
    """Give a new broker key to group `mosquitto` when run as root (the broker reads it
    after dropping root); an existing file's group was kept by `_write`."""
    if os.geteuid() != 0 or key.stat().st_gid != 0:
        return
    try:
        gid = grp.getgrnam("mosquitto").gr_gid
    except KeyError:
        return
    os.chown(key, -1, gid)
