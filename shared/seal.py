"""End-to-end authentication of every MQTT payload, and sealing of Secret values
(docs/proposals/0002-zero-trust.md, "End-to-end message authentication").

Why it exists: the broker, and anyone with broker access, sits between cloudcore and
each node. A key only those two hold (the 32-byte node key made at join) lets each
side prove to the other that a message is genuine and unaltered, whatever the
broker does; and lets the cloud encrypt Secret values for the one node that mounts
them, so neither the broker, its persistence file nor a packet capture sees them.

What it owns:
- key derivation: `k_down` = HMAC(node_key, b"edgefed/v1 down"), `k_up` likewise with
  b"edgefed/v1 up", `k_secret` with b"edgefed/v1 secret" (`NodeKeys.derive`);
- framing: a payload is `inner || tag`, tag = HMAC-SHA256(k_dir, topic || 0x00 ||
  inner)[:16]. The topic names the node and the direction, so a message can be
  neither moved to another node nor reflected back the other way. `unseal` compares
  the tag in constant time BEFORE anything looks at `inner`: nothing unauthenticated
  is ever unpacked. A bad tag is `AuthFailed`;
- Secret values: `{"enc": "c20p1305", "n": nonce12, "ct": bytes}` per Secret,
  ChaCha20-Poly1305 under k_secret with associated data node || 0x00 || entry key, so
  a sealed value cannot be moved to another node or another entry.

Message tags need only the standard library (hmac, hashlib): the agent verifies
every message with nothing else. A Secret value is opened with the libcrypto that `ssl`
already mapped (shared.aead: ChaCha20-Poly1305 through ctypes; `cryptography` only where
there is none) and sealed with `cryptography`, imported then and not before.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any

import msgpack

from shared.errors import AuthFailed

KEY_BYTES = 32
"""Length of a node key (random, made by cloudcore at join)."""
TAG_BYTES = 16
"""Bytes of HMAC-SHA256 kept as the tag (128 bits: forging one is 2^-128 per try)."""
NONCE_BYTES = 12
SECRET_ENC = "c20p1305"

_DOWN_LABEL = b"edgefed/v1 down"
_UP_LABEL = b"edgefed/v1 up"
_SECRET_LABEL = b"edgefed/v1 secret"


def new_node_key() -> bytes:
    """A fresh random node key."""
    return secrets.token_bytes(KEY_BYTES)


def _kdf(node_key: bytes, label: bytes) -> bytes:
    return hmac.new(node_key, label, hashlib.sha256).digest()


@dataclass(frozen=True, slots=True)
class NodeKeys:
    """The three keys derived from one node key; `repr` shows none of them."""

    down: bytes
    up: bytes
    secret: bytes

    def __repr__(self) -> str:
        return "NodeKeys(<redacted>)"

    @classmethod
    def derive(cls, node_key: bytes) -> NodeKeys:
        if not isinstance(node_key, bytes | bytearray) or len(node_key) != KEY_BYTES:
            raise ValueError(f"a node key is {KEY_BYTES} bytes")
        k = bytes(node_key)
        return cls(down=_kdf(k, _DOWN_LABEL), up=_kdf(k, _UP_LABEL),
                   secret=_kdf(k, _SECRET_LABEL))


def _tag(key_dir: bytes, topic: str, inner: bytes) -> bytes:
    mac = hmac.new(key_dir, topic.encode(), hashlib.sha256)
    mac.update(b"\x00")
    mac.update(inner)
    return mac.digest()[:TAG_BYTES]


def seal(key_dir: bytes, topic: str, inner: bytes) -> bytes:
    """`inner || tag` for `topic`, with the key of the direction (k_down or k_up)."""
    return inner + _tag(key_dir, topic, inner)


def unseal(key_dir: bytes, topic: str, data: bytes) -> bytes:
    """The inner bytes of a sealed payload; `AuthFailed` unless its tag verifies for
    this key and topic. The inner bytes are not looked at before that."""
    if len(data) < TAG_BYTES:
        raise AuthFailed("message too short to carry a tag")
    inner, tag = data[:-TAG_BYTES], data[-TAG_BYTES:]
    if not hmac.compare_digest(tag, _tag(key_dir, topic, inner)):
        raise AuthFailed("message tag does not verify (wrong key, topic or altered bytes)")
    return inner


def renew_mac(k_up: bytes, name: str, ts: int) -> str:
    """The proof of the node key in a certificate renewal call: hex HMAC(k_up,
    "renew|name|ts") (proposal 0002, "Fleet CA and TLS")."""
    return hmac.new(k_up, f"renew|{name}|{ts}".encode(), hashlib.sha256).hexdigest()


# -- Secret values ----------------------------------------------------------------------


def _aad(node: str, entry_key: str) -> bytes:
    return node.encode() + b"\x00" + entry_key.encode()


def is_sealed(value: Any) -> bool:
    """Whether a desired-set value is a sealed Secret (as opposed to a clear one)."""
    return isinstance(value, dict) and value.get("enc") == SECRET_ENC


def seal_secret(k_secret: bytes, *, node: str, entry_key: str, value: Any) -> dict[str, Any]:
    """A `secret/...` desired value sealed for `node`: only that node's agent can open
    it, and only as `entry_key`."""
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    nonce = secrets.token_bytes(NONCE_BYTES)
    plain = msgpack.packb(value, use_bin_type=True)
    ct = ChaCha20Poly1305(k_secret).encrypt(nonce, plain, _aad(node, entry_key))
    return {"enc": SECRET_ENC, "n": nonce, "ct": ct}


def sealed_size(value: Any) -> int:
    """Bytes of the ciphertext `seal_secret` makes for `value` (for size limits)."""
    return len(msgpack.packb(value, use_bin_type=True)) + 16


def open_secret(k_secret: bytes, *, node: str, entry_key: str, sealed: Any) -> Any:
    """The clear value of a sealed Secret; `AuthFailed` if it was not sealed for this
    node and entry, or was altered."""
    if not is_sealed(sealed):
        raise AuthFailed(f"{entry_key}: not a sealed value")
    nonce, ct = sealed.get("n"), sealed.get("ct")
    if not isinstance(nonce, bytes) or len(nonce) != NONCE_BYTES or not isinstance(ct, bytes):
        raise AuthFailed(f"{entry_key}: malformed sealed value")
    from shared import aead

    failed = AuthFailed(f"{entry_key}: sealed value does not open with this node's key")
    try:
        # the process's own libcrypto (the agent's ssl maps it), else cryptography
        plain = aead.open_chacha20_poly1305(k_secret, nonce, ct, _aad(node, entry_key))
    except (aead.InvalidTag, ValueError):
        raise failed from None
    if plain is None:
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

        try:
            plain = ChaCha20Poly1305(k_secret).decrypt(nonce, ct, _aad(node, entry_key))
        except InvalidTag:
            raise failed from None
    return msgpack.unpackb(plain, raw=False, strict_map_key=True)
