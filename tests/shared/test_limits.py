"""Per-direction limits (proposal 0002): measured sizes of the largest legitimate
messages fit with room; deep nesting is refused before unpacking; an entry that can
never be delivered is named."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.codec import (
    DOWN_LIMITS,
    MAX_CHUNK_BYTES,
    UP_LIMITS,
    Desired,
    Report,
    Request,
    Response,
    check_depth,
    decode,
    encode,
    entry_fits,
)
from shared.entries import telemetry_point
from shared.errors import DecodeError, TooDeep


def _status(i: int) -> dict:
    return {"phase": "Running", "reason": "", "message": "m" * 256,
            "podIP": "10.0.0.1", "startTime": 1700000000.0 + i,
            "conditions": [{"type": t, "status": "True"} for t in ("Ready", "Initialized")],
            "containerStatuses": [
                {"name": f"c{j}", "state": "running", "ready": True, "restartCount": 3,
                 "image": "registry.example.com/team/app:1.2.3", "reason": "x" * 64,
                 "message": "y" * 256, "exitCode": 0, "startedAt": 1700000000.0}
                for j in range(4)]}


def test_largest_reports_fit_the_up_limits_with_room() -> None:
    pods = {f"pod/default/p{i}": _status(i) for i in range(110)}
    report = encode(Report(node="n1", seq=1, epoch="e" * 16, gen=1, ts=1.0, pods=pods,
                           node_status={"capacity": {"cpu": 4000}, "labels": {"a": "b"}}))
    tele = encode(Report(node="n1", seq=2, telemetry=[telemetry_point(
        60, node={"cpu": 1.0, "mem": 2.0},
        pods={f"pod/default/p{i}": {"cpu": 1.0, "mem": 2.0} for i in range(110)})]))
    resp = encode(Response(node="n1", id="x" * 16, seq=1, data=b"x" * MAX_CHUNK_BYTES,
                           error="e" * 4096, done=True))
    for data in (report, tele, resp):
        assert decode(data, limits=UP_LIMITS)
    assert len(report) < UP_LIMITS.max_message_bytes / 4  # 110 pods: 242 KiB
    pods = {f"pod/default/p{i}": _status(i) for i in range(440)}
    assert decode(encode(Report(node="n1", seq=1, pods=pods)), limits=UP_LIMITS)


def test_up_limits_refuse_what_no_agent_sends() -> None:
    with pytest.raises(DecodeError):  # a string longer than any an agent sends
        decode(encode(Report(node="n1", seq=1, node_status={"x": "y" * (65 * 1024)})),
               limits=UP_LIMITS)


def test_down_limits_take_a_1_mib_configmap() -> None:
    value = {"data": {"big": "x" * (1024 * 1024 - 64)}}
    msg = encode(Desired(node="n1", epoch="e", base=0, gen=1, put={"configmap/d/c": value}))
    assert decode(msg, limits=DOWN_LIMITS)
    assert entry_fits("configmap/d/c", value) is None
    reason = entry_fits("configmap/d/c", {"data": {"big": "x" * (1024 * 1024 + 1)}})
    assert reason is not None and "configmap/d/c" in reason and str(1024 * 1024) in reason
    many = {"data": {f"k{i}": "x" * (1000 * 1024) for i in range(5)}}
    assert "message limit" in (entry_fits("configmap/d/c", many) or "")


def _nested(depth: int) -> object:
    v: object = 1
    for _ in range(depth):
        v = [v]
    return v


@pytest.mark.parametrize("depth", [31, 32, 33, 500])
def test_depth_is_refused_before_unpacking(depth: int, monkeypatch) -> None:
    # the message map is one level, so `depth - 1` lists inside it make `depth`
    raw = msgpack.packb({"v": 1, "t": "report", "node": "n1", "seq": 1,
                         "node_status": {"x": _nested(depth - 2)}})
    if depth <= 32:
        assert decode(raw, limits=UP_LIMITS)
        return
    calls = []
    monkeypatch.setattr(msgpack, "unpackb", lambda *a, **k: calls.append(1))
    with pytest.raises(TooDeep):
        decode(raw, limits=UP_LIMITS)
    assert calls == []  # refused before msgpack saw it


@given(st.recursive(st.none() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=5)
                    | st.binary(max_size=5) | st.floats(allow_nan=False),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=3), c,
                                                                         max_size=3),
                    max_leaves=40))
def test_depth_scan_agrees_with_the_structure(value: object) -> None:
    def depth(v: object) -> int:
        if isinstance(v, list):
            return 1 + max((depth(x) for x in v), default=0)
        if isinstance(v, dict):
            return 1 + max((depth(x) for x in v.values()), default=0)
        return 0

    raw = msgpack.packb(value, use_bin_type=True)
    d = depth(value)
    check_depth(raw, max(d, 1))
    if d > 1:
        with pytest.raises(TooDeep):
            check_depth(raw, d - 1)


@pytest.mark.parametrize("filler", [b"", bytes(range(0x80, 0xA0)) * 4])
def test_the_quick_count_of_container_bytes_never_passes_a_deep_message(
        filler: bytes) -> None:
    # strings full of container lead-byte values are an overcount: still walked, and
    # a shallow message passes; a deep one is refused whatever its strings hold
    shallow = msgpack.packb({"v": 1, "s": filler, "x": _nested(3)}, use_bin_type=True)
    check_depth(shallow, 5)
    deep = msgpack.packb({"v": 1, "s": filler, "x": _nested(33)}, use_bin_type=True)
    check_depth(deep, 34)
    with pytest.raises(TooDeep):
        check_depth(deep, 33)


def test_request_carries_an_expiry() -> None:
    req = Request(node="n1", id="r1", kind="exec", argv=["id"], exp=1700000000.5)
    assert decode(encode(req)) == req
    assert Request(node="n1", id="r1", kind="logs").exp is None
    with pytest.raises(DecodeError):
        Request(node="n1", id="r1", kind="logs", exp="soon")  # type: ignore[arg-type]


def test_a_clear_secret_is_measured_as_it_will_be_sealed() -> None:
    from shared.entries import secret_entry

    small = secret_entry({"k": b"x" * 1000})
    assert entry_fits("secret/d/s", small) is None
    # 800 KiB of data: in base64 and sealed, ~1.04 MiB of ciphertext, over 1 MiB
    big = secret_entry({"k": b"x" * (800 * 1024)})
    reason = entry_fits("secret/d/s", big)
    assert reason is not None and "secret/d/s" in reason
