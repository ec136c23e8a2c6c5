"""Secret values at rest: the store's records that hold them are encrypted with a key file.

In the spirit of Kubernetes' EncryptionConfiguration (`aesgcm` provider): a key file
holds one or more named 256-bit keys; the first encrypts, every one decrypts, so a key
can be rotated while records written under the old one stay readable until they are
rewritten (`rotate`). Each encrypted record names its key:

    b"edgefed:enc:aesgcm:v1:" + key name + b":" + nonce (12 bytes) + AES-256-GCM(msgpack)

with the database and the record's key as associated data, so a record cannot be moved
to another key or database. A record without the prefix is plain msgpack (every other
database, and records written before encryption existed, which `Store.load` encrypts).

Which records: every record of `secrets`, and a node's `desired` record while it holds a
Secret's entry (its bytes contain a `secret/` key; a false positive only encrypts a
record that did not need it). Nonces are random: AES-GCM's limit of about 2**32
encryptions per key is far beyond what Secret writes reach, and `rotate` starts over.

The key file: one `name:base64-of-32-bytes` per line, `#` comments. cloudcore creates
`<state_dir>/encryption.keys` (0600) on first start if no key file is given. The key
protects copies of the store (backups, a stolen disk image of data.mdb); whoever can
read the state directory can read the key too, so the directory is 0700.

Only this package imports lmdb; this module does not either: `Store` and `rotate`
(in lmdbstore) hand it bytes.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from cloudcore.errors import StoreError

PREFIX = b"edgefed:enc:aesgcm:v1:"
KEY_FILE = "encryption.keys"
"""Its name in the state directory when cloudcore creates it."""
ENCRYPTED_DBS = frozenset({"secrets"})
"""Databases whose every record is encrypted."""
MARKER = b"secret/"
"""A `desired` record holding these bytes holds a Secret's entry: it is encrypted too."""
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_NONCE = 12


def should_encrypt(db: str, raw: bytes) -> bool:
    """Whether a record of `db` with these (plain msgpack) bytes is stored encrypted."""
    return db in ENCRYPTED_DBS or (db == "desired" and MARKER in raw)


def is_encrypted(raw: bytes) -> bool:
    return raw.startswith(PREFIX)


def key_name(raw: bytes) -> str | None:
    """The name of the key an encrypted record was written with (None: plain)."""
    if not is_encrypted(raw):
        return None
    name, _, _ = raw[len(PREFIX):].partition(b":")
    return name.decode("ascii", "replace")


@dataclass(frozen=True)
class KeyRing:
    """Named AES-256-GCM keys: `keys[0]` encrypts, all decrypt."""

    keys: tuple[tuple[str, bytes], ...]
    path: Path | None = None
    """The file they came from (named in errors)."""

    def __post_init__(self) -> None:
        if not self.keys:
            raise StoreError(f"{self._where()}: no encryption key")
        names = [n for n, _ in self.keys]
        if len(set(names)) != len(names):
            raise StoreError(f"{self._where()}: key names must be unique")

    @property
    def primary(self) -> str:
        """The name of the key that encrypts."""
        return self.keys[0][0]

    def _where(self) -> str:
        return str(self.path) if self.path is not None else "encryption keys"

    def _aad(self, db: str, key: bytes) -> bytes:
        return db.encode() + b"\x00" + key

    def encrypt(self, db: str, key: bytes, plain: bytes) -> bytes:
        name, secret = self.keys[0]
        nonce = os.urandom(_NONCE)
        return (PREFIX + name.encode() + b":" + nonce
                + AESGCM(secret).encrypt(nonce, plain, self._aad(db, key)))

    def decrypt(self, db: str, key: bytes, raw: bytes) -> bytes:
        """The plain bytes of a record (a plain record is returned as it is); raises
        StoreError naming the record and the key if it cannot be decrypted."""
        if not is_encrypted(raw):
            return raw
        raw_name, sep, rest = raw[len(PREFIX):].partition(b":")
        name = raw_name.decode("ascii", "replace")
        where = f"{db}/{key.decode(errors='replace')}"
        secret = dict(self.keys).get(name)
        if not sep or secret is None:
            held = ", ".join(n for n, _ in self.keys)
            raise StoreError(
                f"store record {where} is encrypted with key {name!r}, which "
                f"{self._where()} does not hold (it holds: {held}); start cloudcore with "
                "the key file the store was written with")
        try:
            return AESGCM(secret).decrypt(rest[:_NONCE], rest[_NONCE:], self._aad(db, key))
        except (InvalidTag, ValueError):
            raise StoreError(
                f"store record {where} does not decrypt with key {name!r} of "
                f"{self._where()}: wrong key file, or the record is corrupt") from None

    # -- the key file -------------------------------------------------------------------

    @classmethod
    def load(cls, path: Path) -> KeyRing:
        """Read a key file; raises StoreError naming the file and the line."""
        try:
            text = path.read_text()
        except OSError as exc:
            raise StoreError(f"cannot read encryption key file {path}: {exc}") from exc
        keys = []
        for n, raw_line in enumerate(text.splitlines(), 1):
            line = raw_line.strip()
            if not line or line.startswith("#"):
                continue
            name, sep, b64 = line.partition(":")
            try:
                secret = base64.b64decode(b64.strip(), validate=True)
            except (binascii.Error, ValueError):
                secret = b""
            if not sep or not _NAME.match(name) or len(secret) != 32:
                raise StoreError(f"{path}:{n}: expected `name:base64 of 32 bytes` (name: "
                                 "letters, digits, '.', '_', '-')")
            keys.append((name, secret))
        return cls(tuple(keys), path)

    @classmethod
    def generate(cls, path: Path | None = None) -> KeyRing:
        """One new random key, named for the time it was made."""
        name = time.strftime("key-%Y%m%dT%H%M%SZ", time.gmtime())
        return cls(((name, secrets.token_bytes(32)),), path)

    def with_new_key(self) -> KeyRing:
        """A new random key first; the old ones kept after it (they still decrypt)."""
        new = KeyRing.generate().keys[0]
        if any(n == new[0] for n, _ in self.keys):
            new = (f"{new[0]}-{secrets.token_hex(2)}", new[1])
        return KeyRing((new, *self.keys), self.path)

    def only_primary(self) -> KeyRing:
        return KeyRing(self.keys[:1], self.path)

    def save(self, path: Path | None = None) -> None:
        """Write the key file atomically, mode 0600."""
        path = path or self.path
        if path is None:
            raise StoreError("no path to write the encryption keys to")
        lines = ["# edgefed cloudcore encryption keys (AES-256-GCM): the first encrypts,",
                 "# every one decrypts. Keep a copy apart from the store's backups.",
                 *(f"{n}:{base64.b64encode(k).decode()}" for n, k in self.keys)]
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write("\n".join(lines) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise StoreError(f"cannot write encryption key file {path}: {exc}") from exc

    @classmethod
    def open(cls, state_dir: Path, key_file: Path | None) -> KeyRing:
        """The given key file (which must exist), or `<state_dir>/encryption.keys`,
        created with a new key on first start."""
        if key_file is not None:
            return cls.load(key_file)
        path = state_dir / KEY_FILE
        if path.exists():
            return cls.load(path)
        ring = cls.generate(path)
        ring.save()
        return ring
