from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared import topics
from shared.codec import Ack, Desired, Limits, Report, Resync, decode, encode
from shared.errors import DecodeError, MessageTooLarge, ProtocolError, UnknownVersion

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=10,
)


@given(put=st.dictionaries(st.text(min_size=1, max_size=30), json_values, max_size=10),
       gen=st.integers(0, 2**40))
def test_desired_roundtrip(put, gen):
    msg = Desired(node="n1", epoch="e", base=0, gen=gen, put=put, delete=["x"])
    assert decode(encode(msg)) == msg


def test_every_type_roundtrips():
    for msg in (Ack(node="a", epoch="e", gen=3), Resync(node="a", gen=0),
                Report(node="a", seq=4, pods={"pod/d/x": None})):
        assert decode(encode(msg)) == msg


@given(st.binary(max_size=300))
def test_garbage_never_escapes_as_anything_but_protocol_error(data):
    try:
        decode(data)
    except ProtocolError:
        pass


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (b"\xc1", DecodeError),
        (msgpack.packb([1, 2]), DecodeError),
        (msgpack.packb({"v": 99, "t": "ack", "node": "n"}), UnknownVersion),
        (msgpack.packb({"v": 1, "t": "nope", "node": "n"}), DecodeError),
        (msgpack.packb({"v": 1, "t": "ack", "node": "n", "epoch": "e", "gen": -1}), DecodeError),
    ],
)
def test_bad_messages(payload, error):
    with pytest.raises(error):
        decode(payload)


def test_limits():
    big = encode(Desired(node="n", epoch="e", base=0, gen=1, put={"k": "x" * 5000}))
    with pytest.raises(MessageTooLarge):
        decode(big, limits=Limits(max_message_bytes=1000))
    many = encode(Desired(node="n", epoch="e", base=0, gen=1, put={str(i): 1 for i in range(50)}))
    with pytest.raises(DecodeError, match="limit"):
        decode(many, limits=Limits(max_keys=10))


def test_topics():
    t = topics.up("edge-1")
    assert t.startswith("fed/v1/") and t.endswith("/edge-1/up")
    assert topics.parse(t) == ("edge-1", "up")
    forged = t.replace(t.split("/")[2], "zz")
    assert topics.parse(forged) is None
    assert topics.parse("fed/v1/00/bad+name/up") is None
    assert topics.partition_of("edge-1") == topics.partition_of("edge-1")


def test_report_gap_fields_stay_off_the_wire_when_false():
    """`ReportAck.again` and `Report.full` (issue 14's report-gap recovery) cost no byte
    when false, and a message without them (an older peer) reads as false."""
    from shared.codec import ReportAck

    plain = msgpack.unpackb(encode(ReportAck(node="n", seq=3)))
    assert "again" not in plain
    asked = decode(encode(ReportAck(node="n", seq=3, again=True)))
    assert isinstance(asked, ReportAck) and asked.again is True
    assert decode(msgpack.packb({"v": 1, "t": "rack", "node": "n", "seq": 3})) == \
        ReportAck(node="n", seq=3)
    assert "full" not in msgpack.unpackb(encode(Report(node="n", seq=1)))
    full = decode(encode(Report(node="n", seq=2, node_status={"arch": "amd64"}, full=True)))
    assert isinstance(full, Report) and full.full is True
    with pytest.raises(DecodeError):
        decode(msgpack.packb({"v": 1, "t": "rack", "node": "n", "seq": 3, "again": "yes"}))
