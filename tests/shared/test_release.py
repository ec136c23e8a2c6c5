"""shared.release: bundles are deterministic, and verify refuses a wrong digest, a bad
signature, a key it does not trust, a version other than the one asked for, and a node
with no key; unpack refuses a bundle whose inside names another version."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from shared import release
from shared.errors import ReleaseError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bundle() -> bytes:
    return release.build_bundle(ROOT, version="9.9.9")


@pytest.fixture
def key(tmp_path: Path):  # type: ignore[no-untyped-def]
    return release.generate_key(tmp_path / "release.key")


def _signed(key, bundle: bytes, version: str = "9.9.9") -> release.Release:  # type: ignore[no-untyped-def]
    digest = hashlib.sha256(bundle).hexdigest()
    return release.Release(version=version, sha256=digest,
                           signature=release.sign(key, version=version, sha256=digest))


def _pub(key) -> bytes:  # type: ignore[no-untyped-def]
    return release.parse_public_key(release.public_key_b64(key))


def test_bundle_is_deterministic_and_holds_the_packages(bundle: bytes) -> None:
    assert release.build_bundle(ROOT, version="9.9.9") == bundle
    with tarfile.open(fileobj=io.BytesIO(bundle), mode="r:gz") as tar:
        names = tar.getnames()
        inner = json.loads(tar.extractfile("release.json").read())  # type: ignore[union-attr]
    assert inner == {"version": "9.9.9"}
    assert "edgecore/__main__.py" in names and "shared/release.py" in names
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
    assert not any(n.startswith(("cloudcore", "tests")) for n in names)
    assert release.bundle_version(bundle) == "9.9.9"


def test_verify_accepts_a_signed_release_and_unpacks(tmp_path: Path, key, bundle: bytes) -> None:  # type: ignore[no-untyped-def]
    rel = _signed(key, bundle)
    other = release.generate_key(tmp_path / "other.key")
    release.verify(rel, bundle, trusted=[_pub(other), _pub(key)], version="9.9.9")
    release.unpack(bundle, tmp_path / "slot", version="9.9.9")
    assert (tmp_path / "slot/edgecore/__init__.py").is_file()
    assert (tmp_path / "slot/shared/release.py").read_bytes() == (
        ROOT / "shared/release.py").read_bytes()


def test_make_release_writes_a_manifest_that_reads_back(tmp_path: Path, key) -> None:  # type: ignore[no-untyped-def]
    rel = release.make_release(ROOT, version="1.2.3", key=key, out_dir=tmp_path / "out")
    assert release.read_manifest(tmp_path / "out" / release.MANIFEST) == rel
    data = (tmp_path / "out" / release.BUNDLE).read_bytes()
    release.verify(rel, data, trusted=[_pub(key)])


def _reason(rel: release.Release, bundle: bytes, trusted: list[bytes],
            version: str | None = None) -> ReleaseError:
    with pytest.raises(ReleaseError) as info:
        release.verify(rel, bundle, trusted=trusted, version=version)
    return info.value


def test_bad_digest(key, bundle: bytes) -> None:  # type: ignore[no-untyped-def]
    rel = _signed(key, bundle)
    err = _reason(rel, bundle + b"x", [_pub(key)])
    assert err.reason == "digest" and rel.sha256 in str(err)


def test_bad_signature(key, bundle: bytes) -> None:  # type: ignore[no-untyped-def]
    rel = _signed(key, bundle)
    sig = bytearray(base64.b64decode(rel.signature))
    sig[0] ^= 1
    bad = release.Release(rel.version, rel.sha256, base64.b64encode(bytes(sig)).decode())
    assert _reason(bad, bundle, [_pub(key)]).reason == "signature"
    notb64 = release.Release(rel.version, rel.sha256, "%%%")
    assert _reason(notb64, bundle, [_pub(key)]).reason == "signature"


def test_unknown_key(tmp_path: Path, key, bundle: bytes) -> None:  # type: ignore[no-untyped-def]
    other = release.generate_key(tmp_path / "other.key")
    err = _reason(_signed(key, bundle), bundle, [_pub(other)])
    assert err.reason == "signature"
    assert release.key_id(_pub(other)) in str(err)


def test_no_trusted_key(key, bundle: bytes) -> None:  # type: ignore[no-untyped-def]
    err = _reason(_signed(key, bundle), bundle, [])
    assert err.reason == "nokeys" and "--release-key" in str(err)


def test_version_mismatch(tmp_path: Path, key, bundle: bytes) -> None:  # type: ignore[no-untyped-def]
    # the manifest is not the version asked for
    assert _reason(_signed(key, bundle), bundle, [_pub(key)], version="9.9.8").reason == "version"
    # a signature binds the version: the same bytes relabelled do not verify
    rel = _signed(key, bundle)
    relabelled = release.Release("9.9.8", rel.sha256, rel.signature)
    assert _reason(relabelled, bundle, [_pub(key)]).reason == "signature"
    # a bundle signed as 1.0 whose inside says 9.9.9 is refused at unpack
    signed_as_other = _signed(key, bundle, version="1.0")
    release.verify(signed_as_other, bundle, trusted=[_pub(key)])
    with pytest.raises(ReleaseError) as info:
        release.unpack(bundle, tmp_path / "slot", version="1.0")
    assert info.value.reason == "version"
    assert not (tmp_path / "slot").exists()


def test_manifest_errors_name_the_field() -> None:
    with pytest.raises(ReleaseError, match="'sha256'"):
        release.read_manifest(b'{"version": "1", "signature": "x"}')
    with pytest.raises(ReleaseError, match="not JSON"):
        release.read_manifest(b"{")
    with pytest.raises(ReleaseError, match="version"):
        release.read_manifest(json.dumps(
            {"version": "../x", "sha256": "0" * 64, "signature": ""}).encode())


def test_public_key_forms(tmp_path: Path, key) -> None:  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives import serialization

    raw = _pub(key)
    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "k.pem").write_bytes(pem)
    assert release.load_public_key(tmp_path / "k.pem") == raw
    with pytest.raises(ReleaseError, match="32 bytes"):
        release.parse_public_key(base64.b64encode(b"short").decode())
    assert release.load_or_generate_key(tmp_path / "release.key").public_key() is not None
    assert (tmp_path / "release.key").stat().st_mode & 0o777 == 0o600
    with pytest.raises(FileExistsError):
        release.generate_key(tmp_path / "release.key")


def test_unpack_refuses_members_outside_the_packages(tmp_path: Path) -> None:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for name, data in (("release.json", b'{"version": "1"}'), ("etc/passwd", b"x")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(ReleaseError, match="outside"):
        release.unpack(raw.getvalue(), tmp_path / "slot", version="1")


@pytest.mark.parametrize("name", ["edgecore/../../escape.py", "/edgecore/abs.py",
                                  "edgecore//x.py"])
def test_unpack_refuses_paths_that_leave_the_slot(tmp_path: Path, name: str) -> None:
    """A signed bundle is still checked member by member: a name under a package that
    climbs out (`..`), an absolute one, or an empty part is refused before anything is
    written (Python 3.11.2, Debian 12's, has no tarfile extraction filters)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for n, data in (("release.json", b'{"version": "1"}'), (name, b"x")):
            info = tarfile.TarInfo(n)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(ReleaseError, match="plain relative path"):
        release.unpack(raw.getvalue(), tmp_path / "slot", version="1")
    assert not (tmp_path / "escape.py").exists() and not (tmp_path / "slot").exists()
