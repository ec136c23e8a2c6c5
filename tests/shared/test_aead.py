"""ChaCha20-Poly1305 opened with the process's own libcrypto (shared.aead, issue 16).

The agent opens its sealed Secret values through ctypes on the libcrypto `ssl` maps,
so that `cryptography` (8.6 MiB of RSS, for good) never loads into it. These tests
hold it to `cryptography`'s encryption, byte for byte, and to refusing every altered
ciphertext, tag, nonce or associated data.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import given, settings
from hypothesis import strategies as st

from shared import aead, seal
from shared.errors import AuthFailed

HAVE_LIBCRYPTO = aead._library() is not None


def encrypt(key: bytes, nonce: bytes, plain: bytes, aad: bytes) -> bytes:
    return ChaCha20Poly1305(key).encrypt(nonce, plain, aad)


def test_this_machine_opens_with_libcrypto() -> None:
    # The Debian Python the project runs on links OpenSSL dynamically: the fast path
    # must be the one taken here, or the tests below would test nothing of it.
    assert HAVE_LIBCRYPTO


@settings(max_examples=300, deadline=None)
@given(key=st.binary(min_size=32, max_size=32), nonce=st.binary(min_size=12, max_size=12),
       plain=st.binary(max_size=5000), aad=st.binary(max_size=64))
def test_opens_what_cryptography_seals(key: bytes, nonce: bytes, plain: bytes,
                                       aad: bytes) -> None:
    assert aead.open_chacha20_poly1305(key, nonce, encrypt(key, nonce, plain, aad),
                                       aad) == plain


@settings(max_examples=300, deadline=None)
@given(plain=st.binary(max_size=300), aad=st.binary(min_size=1, max_size=40),
       where=st.integers(min_value=0), bit=st.integers(min_value=0, max_value=7),
       part=st.sampled_from(["data", "aad", "nonce", "key"]))
def test_refuses_any_flipped_bit(plain: bytes, aad: bytes, where: int, bit: int,
                                 part: str) -> None:
    key, nonce = os.urandom(32), os.urandom(12)
    parts = {"key": key, "nonce": nonce, "data": encrypt(key, nonce, plain, aad), "aad": aad}
    bad = bytearray(parts[part])
    bad[where % len(bad)] ^= 1 << bit
    parts[part] = bytes(bad)
    with pytest.raises(aead.InvalidTag):
        aead.open_chacha20_poly1305(parts["key"], parts["nonce"], parts["data"], parts["aad"])


def test_wrong_sizes_are_value_errors() -> None:
    with pytest.raises(ValueError):
        aead.open_chacha20_poly1305(bytes(31), bytes(12), bytes(16), b"")
    with pytest.raises(ValueError):
        aead.open_chacha20_poly1305(bytes(32), bytes(11), bytes(16), b"")
    with pytest.raises(ValueError):
        aead.open_chacha20_poly1305(bytes(32), bytes(12), bytes(15), b"")  # no room for a tag


def test_open_secret_is_the_same_with_or_without_libcrypto(monkeypatch) -> None:
    keys = seal.NodeKeys.derive(os.urandom(32))
    value = {"user": "app", "password": "s3cret", "blob": os.urandom(100)}
    sealed = seal.seal_secret(keys.secret, node="n-1", entry_key="secret/default/db",
                              value=value)
    assert seal.open_secret(keys.secret, node="n-1", entry_key="secret/default/db",
                            sealed=sealed) == value
    # moved to another entry: refused on either path
    with pytest.raises(AuthFailed):
        seal.open_secret(keys.secret, node="n-1", entry_key="secret/default/other",
                         sealed=sealed)
    monkeypatch.setattr(aead, "_library", lambda: None)  # as on a host without libcrypto
    assert seal.open_secret(keys.secret, node="n-1", entry_key="secret/default/db",
                            sealed=sealed) == value
    with pytest.raises(AuthFailed):
        seal.open_secret(keys.secret, node="n-2", entry_key="secret/default/db",
                         sealed=sealed)


def test_opening_a_secret_loads_no_cryptography() -> None:
    keys = seal.NodeKeys.derive(bytes(range(32)))
    sealed = seal.seal_secret(keys.secret, node="n-1", entry_key="secret/default/db",
                              value={"k": "v"})
    code = """
import json, sys
import msgpack
from shared import seal
keys = seal.NodeKeys.derive(bytes(range(32)))
sealed = msgpack.unpackb(bytes.fromhex(sys.argv[1]), raw=False)
got = seal.open_secret(keys.secret, node="n-1", entry_key="secret/default/db", sealed=sealed)
print(json.dumps({"got": got, "loaded": sorted(m for m in sys.modules
                                               if m.split(".")[0] == "cryptography")}))
"""
    import msgpack

    out = subprocess.run([sys.executable, "-c", code,
                          msgpack.packb(sealed, use_bin_type=True).hex()],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    assert json.loads(out) == {"got": {"k": "v"}, "loaded": []}
