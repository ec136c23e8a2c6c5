"""The client certificate's lifetime, read without cryptography (issue 16).

An agent that logs in to the broker with a client certificate reads its validity at
start (the renewal is due when a third of it is left). Read with cryptography's x509,
that left 11.8 MiB of RSS in every mutual-TLS agent for good; `certificate_lifetime`
walks the DER itself now. These tests hold it to cryptography's reading and to clear
errors on bad files.
"""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from edgecore.join import certificate_lifetime, der_validity

UTC = datetime.UTC


def certificate(not_before: datetime.datetime, not_after: datetime.datetime,
                key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "n" * 64),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edgefed")])
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(not_before).not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))


# UTCTime before 2050, GeneralizedTime from 2050 on (RFC 5280 4.1.2.5), both centuries
# of UTCTime's two-digit years, and the largest date there is.
BOUNDS = [
    (datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
     datetime.datetime(2027, 6, 7, 8, 9, 10, tzinfo=UTC)),
    (datetime.datetime(1999, 12, 31, 23, 59, 59, tzinfo=UTC),
     datetime.datetime(2050, 1, 1, tzinfo=UTC)),
    (datetime.datetime(1950, 1, 1, tzinfo=UTC),
     datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)),
]


@pytest.mark.parametrize("kind", ["ec", "rsa"])
@pytest.mark.parametrize(("not_before", "not_after"), BOUNDS)
def test_the_lifetime_is_cryptographys(tmp_path: Path, kind: str,
                                       not_before: datetime.datetime,
                                       not_after: datetime.datetime) -> None:
    key = ec.generate_private_key(ec.SECP256R1()) if kind == "ec" else \
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = certificate(not_before, not_after, key)
    path = tmp_path / "client.crt"
    # text before the block and a second certificate after it: the first one counts
    other = certificate(BOUNDS[0][0], BOUNDS[0][1], key)
    path.write_bytes(b"subject=CN = n\n" + cert.public_bytes(serialization.Encoding.PEM)
                     + other.public_bytes(serialization.Encoding.PEM))
    assert certificate_lifetime(path) == (cert.not_valid_before_utc.timestamp(),
                                          cert.not_valid_after_utc.timestamp())


def test_bad_files_get_a_clear_value_error(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    der = certificate(*BOUNDS[0], key).public_bytes(serialization.Encoding.DER)
    path = tmp_path / "client.crt"
    path.write_text("not a certificate\n")
    with pytest.raises(ValueError, match="no PEM certificate"):
        certificate_lifetime(path)
    path.write_text("-----BEGIN CERTIFICATE-----\n@@@@\n-----END CERTIFICATE-----\n")
    with pytest.raises(ValueError, match="no PEM certificate"):
        certificate_lifetime(path)
    path.write_text("-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n")
    with pytest.raises(ValueError, match="not base64"):
        certificate_lifetime(path)
    for cut in (1, 10, 40, len(der) // 3):
        with pytest.raises(ValueError, match=r"truncated|DER"):
            der_validity(der[:cut])
    with pytest.raises(ValueError, match="DER tag"):
        der_validity(b"\x02\x01\x00")  # an INTEGER, not a certificate
    # notBefore made into a time that is no date (month 13), as a bad issuer might
    good = der.index(b"260102030405Z")
    with pytest.raises(ValueError, match="not a date"):
        der_validity(der[:good] + b"261302030405Z" + der[good + 13:])
    with pytest.raises(ValueError, match="not a DER time"):
        der_validity(der[:good] + b"2601020304\x00\x00Z" + der[good + 13:])


def test_reading_the_lifetime_loads_no_cryptography(tmp_path: Path) -> None:
    # What the agent's renewal task does at start: cryptography must not load (the
    # agent would hold it for good).
    key = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "client.crt"
    path.write_bytes(certificate(*BOUNDS[0], key).public_bytes(serialization.Encoding.PEM))
    code = ("import json, sys\nfrom pathlib import Path\n"
            "from edgecore.join import certificate_lifetime\n"
            "got = certificate_lifetime(Path(sys.argv[1]))\n"
            "print(json.dumps({'got': got, 'loaded': sorted(m for m in sys.modules "
            "if m.split('.')[0] == 'cryptography')}))")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                         text=True, check=True, timeout=60).stdout
    result = json.loads(out)
    assert result["got"] == [BOUNDS[0][0].timestamp(), BOUNDS[0][1].timestamp()]
    assert result["loaded"] == []
