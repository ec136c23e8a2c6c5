"""Agent releases (proposal 0006): build a bundle, sign it, verify it; one module for
both sides (`cloudcore release publish` builds and signs, the agent verifies).

A **bundle** is a deterministic gzip'd tar of the pure-Python packages the agent runs
from (`edgecore/`, `shared/`, no `__pycache__`) plus `release.json` {"version"} at its
root. The same source and version always give the same bytes (sorted members, mtime 0,
uid/gid 0, no gzip timestamp), so a digest names a release.

A **release** is the bundle plus its manifest `release.json` = {"version", "sha256"
(hex of the bundle's bytes), "signature" (base64 ed25519)}; in a registry both sit in
an OCI image's only layer under `/release/` (`RELEASE_DIR`).

The **signature** is ed25519 over `signed_message(version, sha256)` =
`b"edgefed-agent-release\\x00" + version + b"\\x00" + sha256 hex`: it binds the version
to the bytes, so a signed bundle cannot be replayed under another version.

`verify` checks, in this order, and raises `ReleaseError` with its `reason`:
`nokeys` (nothing trusted), `malformed` (manifest fields), `version` (the manifest is
not the version asked for), `digest` (bytes differ from the manifest's sha256),
`signature` (no trusted key verifies it: ed25519 cannot tell an altered signature
from one made by a key not in the list, so both are `signature`, and the message
names the trusted keys).
`unpack` then checks that the bundle's own `release.json` names the same version.

`cryptography`, `tarfile` and `gzip` are imported only by the functions that use
them, so importing this module (for its names) costs the agent nothing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.errors import ReleaseError

if TYPE_CHECKING:
    import tarfile

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

RELEASE_DIR = "release"
"""Directory of the release image's layer holding BUNDLE and MANIFEST."""
BUNDLE = "bundle.tar.gz"
MANIFEST = "release.json"
PACKAGES = ("edgecore", "shared")
"""What a bundle carries: the agent and the protocol it speaks."""
CONTEXT = b"edgefed-agent-release\x00"
VERSION_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}$")
"""A version names a slot directory: letters, digits, `.+_-`, at most 64."""
MAX_BUNDLE_BYTES = 64 * 1024 * 1024
"""Largest bundle `unpack` accepts, unpacked (64 MiB): a release is source code."""


@dataclass(frozen=True)
class Release:
    """A release's manifest."""

    version: str
    sha256: str
    signature: str  # base64 of the 64-byte ed25519 signature

    def to_json(self) -> bytes:
        return (json.dumps({"version": self.version, "sha256": self.sha256,
                            "signature": self.signature}, sort_keys=True) + "\n").encode()


def check_version(version: object) -> str:
    """`version` if it is a valid release version, else ReleaseError (malformed)."""
    if not isinstance(version, str) or not VERSION_RE.match(version):
        raise ReleaseError(f"release version {version!r} is not valid (letters, digits and "
                           "'.+_-', at most 64 characters, starting with a letter or digit)",
                           reason="malformed")
    return version


def signed_message(version: str, sha256: str) -> bytes:
    """The bytes a release signature covers (proposal 0006)."""
    return CONTEXT + version.encode() + b"\x00" + sha256.encode()


# --- building -------------------------------------------------------------------------


def _members(source: Path) -> list[tuple[str, Path]]:
    """(archive name, path) of every file of PACKAGES under `source`, sorted."""
    out: list[tuple[str, Path]] = []
    for pkg in PACKAGES:
        root = source / pkg
        if not (root / "__init__.py").is_file():
            raise ReleaseError(f"{root} is not a Python package (no __init__.py); a bundle "
                               f"needs {', '.join(PACKAGES)} under the source directory",
                               reason="malformed")
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
            for name in filenames:
                if name.endswith((".pyc", ".pyo")):
                    continue
                path = Path(dirpath) / name
                if path.is_file() and not path.is_symlink():
                    out.append((path.relative_to(source).as_posix(), path))
    return sorted(out)


def _add(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    import tarfile

    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def build_bundle(source: Path, *, version: str) -> bytes:
    """The bundle of `source` (a directory holding `edgecore/` and `shared/`, e.g. a
    checkout) for `version`: the same inputs give the same bytes."""
    import gzip
    import tarfile

    check_version(version)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        _add(tar, MANIFEST, json.dumps({"version": version}).encode() + b"\n")
        for name, path in _members(source):
            _add(tar, name, path.read_bytes())
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0, compresslevel=9) as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


def sign(key: Ed25519PrivateKey, *, version: str, sha256: str) -> str:
    """The base64 signature of (version, sha256) with `key`."""
    return base64.b64encode(key.sign(signed_message(version, sha256))).decode()


def make_release(source: Path, *, version: str, key: Ed25519PrivateKey,
                 out_dir: Path) -> Release:
    """Build, sign and write `out_dir/BUNDLE` and `out_dir/MANIFEST` (what a release
    image's `/release/` holds); returns the manifest."""
    bundle = build_bundle(source, version=version)
    digest = hashlib.sha256(bundle).hexdigest()
    release = Release(version=version, sha256=digest,
                      signature=sign(key, version=version, sha256=digest))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / BUNDLE).write_bytes(bundle)
    (out_dir / MANIFEST).write_bytes(release.to_json())
    return release


# --- keys -----------------------------------------------------------------------------


def generate_key(path: Path) -> Ed25519PrivateKey:
    """A new ed25519 key written to `path` (PEM, PKCS8, mode 0600, never overwritten:
    FileExistsError if it exists)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return key


def load_key(path: Path) -> Ed25519PrivateKey:
    """The ed25519 private key in `path` (PEM); ReleaseError if it is not one."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise ReleaseError(f"{path}: not a PEM private key ({exc})",
                           reason="malformed") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ReleaseError(f"{path}: a {type(key).__name__}, not an ed25519 key",
                           reason="malformed")
    return key


def load_or_generate_key(path: Path) -> Ed25519PrivateKey:
    """The key in `path`, made (0600) if the file does not exist."""
    if path.exists():
        return load_key(path)
    return generate_key(path)


def public_key_b64(key: Ed25519PrivateKey) -> str:
    """The raw 32-byte public key of `key` in base64 (what a join answer carries)."""
    from cryptography.hazmat.primitives import serialization

    raw = key.public_key().public_bytes(serialization.Encoding.Raw,
                                        serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def parse_public_key(text: str) -> bytes:
    """Raw 32 bytes of a public key given as base64 of the raw key (as in a join
    answer) or as a PEM `PUBLIC KEY`; ReleaseError (malformed) otherwise."""
    text = text.strip()
    if text.startswith("-----BEGIN"):
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        try:
            pub = serialization.load_pem_public_key(text.encode())
        except ValueError as exc:
            raise ReleaseError(f"not a PEM public key ({exc})", reason="malformed") from exc
        if not isinstance(pub, Ed25519PublicKey):
            raise ReleaseError(f"a {type(pub).__name__}, not an ed25519 public key",
                               reason="malformed")
        return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ReleaseError("a release key must be base64 of 32 bytes or a PEM public key",
                           reason="malformed") from None
    if len(raw) != 32:
        raise ReleaseError(f"a release key is 32 bytes, this one {len(raw)}",
                           reason="malformed")
    return raw


def load_public_key(path: Path) -> bytes:
    """Raw public key from a file (base64 or PEM, see `parse_public_key`)."""
    try:
        return parse_public_key(path.read_text())
    except ReleaseError as exc:
        raise ReleaseError(f"{path}: {exc}", reason=exc.reason) from None


def key_id(raw: bytes) -> str:
    """A short name of a public key for messages: its sha256's first 12 hex digits."""
    return hashlib.sha256(raw).hexdigest()[:12]


# --- reading and verifying ------------------------------------------------------------


def read_manifest(data: bytes | Path) -> Release:
    """A release manifest from its bytes or file; ReleaseError (malformed) naming the
    field that is missing or wrong."""
    if isinstance(data, Path):
        try:
            data = data.read_bytes()
        except OSError as exc:
            raise ReleaseError(f"cannot read the release manifest: {exc}",
                               reason="malformed") from exc
    try:
        doc: Any = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ReleaseError(f"release manifest is not JSON: {exc}", reason="malformed") from exc
    if not isinstance(doc, dict):
        raise ReleaseError("release manifest must be a JSON object", reason="malformed")
    for field in ("version", "sha256", "signature"):
        if not isinstance(doc.get(field), str):
            raise ReleaseError(f"release manifest: {field!r} is missing or not a string",
                               reason="malformed")
    if not re.fullmatch(r"[0-9a-f]{64}", doc["sha256"]):
        raise ReleaseError("release manifest: 'sha256' must be 64 lower-case hex digits",
                           reason="malformed")
    return Release(version=check_version(doc["version"]), sha256=doc["sha256"],
                   signature=doc["signature"])


def verify(release: Release, bundle: bytes, *, trusted: Sequence[bytes],
           version: str | None = None) -> None:
    """Accept `bundle` as `release` (and as `version`, if given) or raise ReleaseError.

    `trusted` holds raw 32-byte ed25519 public keys; the signature must verify under
    one of them. See the module docstring for the order of the checks.
    """
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if not trusted:
        raise ReleaseError("this node trusts no release key (re-join, or run with "
                           "--release-key FILE)", reason="nokeys")
    check_version(release.version)
    if version is not None and release.version != version:
        raise ReleaseError(f"the release is version {release.version!r}, not the "
                           f"{version!r} asked for", reason="version")
    digest = hashlib.sha256(bundle).hexdigest()
    if digest != release.sha256:
        raise ReleaseError(f"bundle digest sha256:{digest} does not match the manifest's "
                           f"sha256:{release.sha256}", reason="digest")
    try:
        sig = base64.b64decode(release.signature, validate=True)
    except (binascii.Error, ValueError):
        raise ReleaseError("release signature is not base64", reason="signature") from None
    message = signed_message(release.version, release.sha256)
    for raw in trusted:
        try:
            Ed25519PublicKey.from_public_bytes(raw).verify(sig, message)
        except (InvalidSignature, ValueError):
            continue
        return
    raise ReleaseError(
        f"signature of release {release.version} verifies under none of the "
        f"{len(trusted)} trusted release key(s) ({', '.join(key_id(k) for k in trusted)})",
        reason="signature")


def bundle_version(bundle: bytes) -> str:
    """The version in a bundle's own `release.json`; ReleaseError (malformed)."""
    import tarfile

    try:
        with tarfile.open(fileobj=io.BytesIO(bundle), mode="r:gz") as tar:
            f = tar.extractfile(MANIFEST)
            doc: Any = json.loads(f.read()) if f is not None else None
    except (tarfile.TarError, KeyError, OSError, ValueError) as exc:
        raise ReleaseError(f"bundle has no readable {MANIFEST}: {exc}",
                           reason="malformed") from exc
    if not isinstance(doc, dict):
        raise ReleaseError(f"bundle's {MANIFEST} is not a JSON object", reason="malformed")
    return check_version(doc.get("version"))


def unpack(bundle: bytes, dest: Path, *, version: str) -> None:
    """Unpack a verified bundle into `dest` (which must not exist), after checking that
    its own `release.json` says `version` (reason `version` otherwise), that it holds
    every package of PACKAGES and only regular files and directories under them."""
    import tarfile

    inner = bundle_version(bundle)
    if inner != version:
        raise ReleaseError(f"the bundle says version {inner!r} inside, its manifest "
                           f"{version!r}", reason="version")
    with tarfile.open(fileobj=io.BytesIO(bundle), mode="r:gz") as tar:
        members = tar.getmembers()
        _check_members(members)
        dest.mkdir(parents=True)
        # Written out by hand, not `extractall(filter="data")`: Debian 12's Python 3.11.2
        # predates extraction filters. Only directories and regular files (checked
        # above), no owners, no modes from the archive, nothing outside `dest`.
        for m in members:
            path = dest / m.name
            if m.isdir():
                path.mkdir(parents=True, exist_ok=True)
                continue
            src = tar.extractfile(m)
            if src is None:
                raise ReleaseError(f"bundle member {m.name!r} has no content",
                                   reason="malformed")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(src.read())
            path.chmod(0o644)
    for pkg in PACKAGES:
        if not (dest / pkg / "__init__.py").is_file():
            raise ReleaseError(f"bundle lacks the package {pkg}/", reason="malformed")


def _check_members(members: Iterable[tarfile.TarInfo]) -> None:
    total = 0
    for m in members:
        parts = m.name.split("/")
        if m.name.startswith("/") or ".." in parts or "" in parts[:-1]:
            raise ReleaseError(f"bundle member {m.name!r} is not a plain relative path",
                               reason="malformed")
        top = parts[0]
        if m.name != MANIFEST and top not in PACKAGES:
            raise ReleaseError(f"bundle member {m.name!r} is outside "
                               f"{', '.join(PACKAGES)}", reason="malformed")
        if not (m.isfile() or m.isdir()):
            raise ReleaseError(f"bundle member {m.name!r} is not a regular file",
                               reason="malformed")
        total += m.size
        if total > MAX_BUNDLE_BYTES:
            raise ReleaseError(f"bundle unpacks to more than {MAX_BUNDLE_BYTES} bytes",
                               reason="malformed")
