"""shared.seal: a sealed message opens only with its key, topic and direction, and any
change to its bytes is refused; sealed Secret values open only for their node and key."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared import seal, topics
from shared.codec import Ack, Desired, decode, encode
from shared.errors import AuthFailed, ProtocolError

KEY = bytes(range(32))
OTHER = bytes(range(1, 33))
K = seal.NodeKeys.derive(KEY)

payloads = st.binary(min_size=0, max_size=512)
nodes = st.sampled_from(["n1", "n2", "edge-7", "a.b"])


def test_keys_differ_per_direction_and_purpose_and_hide_in_repr() -> None:
    assert len({K.down, K.up, K.secret}) == 3
    assert "redacted" in repr(K) and KEY.hex() not in repr(K)
    with pytest.raises(ValueError):
        seal.NodeKeys.derive(b"short")
    assert len(seal.new_node_key()) == seal.KEY_BYTES


def test_roundtrip_and_auth_failed_is_a_protocol_error() -> None:
    topic = topics.down("n1")
    inner = encode(Desired(node="n1", epoch="E", base=0, gen=1))
    data = seal.seal(K.down, topic, inner)
    assert len(data) == len(inner) + seal.TAG_BYTES
    assert decode(seal.unseal(K.down, topic, data)).gen == 1  # type: ignore[union-attr]
    assert issubclass(AuthFailed, ProtocolError)
    with pytest.raises(AuthFailed):
        seal.unseal(K.down, topic, b"short")


@settings(max_examples=300, deadline=None)
@given(inner=payloads, node=nodes, bit=st.integers(min_value=0))
def test_any_flipped_bit_is_refused(inner: bytes, node: str, bit: int) -> None:
    topic = topics.down(node)
    data = bytearray(seal.seal(K.down, topic, inner))
    bit %= len(data) * 8
    data[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(AuthFailed):
        seal.unseal(K.down, topic, bytes(data))


@settings(max_examples=200, deadline=None)
@given(inner=payloads, node=nodes, other=nodes)
def test_other_topic_node_direction_or_key_is_refused(inner: bytes, node: str,
                                                      other: str) -> None:
    data = seal.seal(K.down, topics.down(node), inner)
    assert seal.unseal(K.down, topics.down(node), data) == inner
    with pytest.raises(AuthFailed):  # reflected back upstream
        seal.unseal(K.up, topics.up(node), data)
    with pytest.raises(AuthFailed):  # right key, other direction's topic
        seal.unseal(K.down, topics.up(node), data)
    with pytest.raises(AuthFailed):  # the other direction's key on the right topic
        seal.unseal(K.up, topics.down(node), data)
    with pytest.raises(AuthFailed):  # another node's key
        seal.unseal(seal.NodeKeys.derive(OTHER).down, topics.down(node), data)
    if other != node:
        with pytest.raises(AuthFailed):  # moved to another node's topic
            seal.unseal(K.down, topics.down(other), data)


@settings(max_examples=100, deadline=None)
@given(inner=payloads, cut=st.integers(min_value=1, max_value=600))
def test_truncated_or_extended_is_refused(inner: bytes, cut: int) -> None:
    topic = topics.up("n1")
    data = seal.seal(K.up, topic, inner)
    with pytest.raises(AuthFailed):
        seal.unseal(K.up, topic, data[:-min(cut, len(data))])
    with pytest.raises(AuthFailed):
        seal.unseal(K.up, topic, data + b"\x00")


def test_ack_sealed_up_roundtrip() -> None:
    topic = topics.up("n1")
    data = seal.seal(K.up, topic, encode(Ack(node="n1", epoch="E", gen=3)))
    assert decode(seal.unseal(K.up, topic, data)) == Ack(node="n1", epoch="E", gen=3)


VALUE = {"data": {"password": "aHVudGVyMg=="}}


def test_secret_opens_only_for_its_node_and_entry() -> None:
    sealed = seal.seal_secret(K.secret, node="n1", entry_key="secret/default/db", value=VALUE)
    assert seal.is_sealed(sealed) and not seal.is_sealed(VALUE)
    assert b"aHVudGVyMg" not in sealed["ct"] and len(sealed["n"]) == seal.NONCE_BYTES
    assert len(sealed["ct"]) == seal.sealed_size(VALUE)
    assert seal.open_secret(K.secret, node="n1", entry_key="secret/default/db",
                            sealed=sealed) == VALUE
    again = seal.seal_secret(K.secret, node="n1", entry_key="secret/default/db", value=VALUE)
    assert again["n"] != sealed["n"] and again["ct"] != sealed["ct"]  # fresh nonce
    for node, key, k in (("n2", "secret/default/db", K.secret),
                         ("n1", "secret/default/other", K.secret),
                         ("n1", "secret/default/db", seal.NodeKeys.derive(OTHER).secret),
                         ("n1", "secret/default/db", K.down)):
        with pytest.raises(AuthFailed):
            seal.open_secret(k, node=node, entry_key=key, sealed=sealed)
    flipped = dict(sealed, ct=bytes([sealed["ct"][0] ^ 1]) + sealed["ct"][1:])
    with pytest.raises(AuthFailed):
        seal.open_secret(K.secret, node="n1", entry_key="secret/default/db", sealed=flipped)
    with pytest.raises(AuthFailed):
        seal.open_secret(K.secret, node="n1", entry_key="secret/default/db", sealed=VALUE)
    with pytest.raises(AuthFailed):
        seal.open_secret(K.secret, node="n1", entry_key="secret/default/db",
                         sealed={"enc": seal.SECRET_ENC, "n": b"x", "ct": b""})


def test_renew_mac_binds_name_and_time() -> None:
    mac = seal.renew_mac(K.up, "n1", 1700000000)
    assert mac == seal.renew_mac(K.up, "n1", 1700000000)
    assert mac != seal.renew_mac(K.up, "n2", 1700000000)
    assert mac != seal.renew_mac(K.up, "n1", 1700000001)
    assert len(mac) == 64
