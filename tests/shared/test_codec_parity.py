"""The pydantic-free codec against the pydantic models it replaced (kept here only).

Same bytes for the same message, and the same accept/reject verdict for any map
that reaches validation, so cloud and edge of different releases interoperate.
One deliberate difference: the new codec does not coerce across types as pydantic's
lax mode did ("5" or 5.0 or True for an int, "x" for bytes). Every sender, old or
new, writes canonical types, so only a hand-made payload can tell; the test checks
that whatever the new codec rejects and the old one took, pydantic's strict mode
rejects too.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from shared import codec
from shared.errors import DecodeError

MAX_CHUNK = codec.MAX_CHUNK_BYTES


class _Msg(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    v: int = 1
    node: str = Field(min_length=1, max_length=253)


class Desired(_Msg):
    t: Literal["desired"] = "desired"
    epoch: str = Field(min_length=1, max_length=64)
    base: int = Field(ge=0)
    gen: int = Field(ge=0)
    snapshot: bool = False
    put: dict[str, Any] = Field(default_factory=dict)
    delete: list[str] = Field(default_factory=list)


class Ack(_Msg):
    t: Literal["ack"] = "ack"
    epoch: str = Field(max_length=64)
    gen: int = Field(ge=0)


class Resync(_Msg):
    t: Literal["resync"] = "resync"
    epoch: str | None = Field(default=None, max_length=64)
    gen: int = Field(ge=0)
    seq: int = Field(default=0, ge=0)
    reason: str = Field(default="connect", max_length=64)


class Report(_Msg):
    t: Literal["report"] = "report"
    seq: int = Field(ge=1)
    epoch: str | None = Field(default=None, max_length=64)
    gen: int = Field(default=0, ge=0)
    ts: float = 0.0
    pods: dict[str, dict[str, Any] | None] = Field(default_factory=dict)
    node_status: dict[str, Any] | None = None
    telemetry: list[dict[str, Any]] = Field(default_factory=list)
    full: bool = False  # added with the report-gap recovery (issue 14)


class ReportAck(_Msg):
    t: Literal["rack"] = "rack"
    seq: int = Field(ge=0)
    again: bool = False  # added with the report-gap recovery (issue 14)


class Will(_Msg):
    t: Literal["will"] = "will"


class Request(_Msg):
    t: Literal["req"] = "req"
    id: str = Field(min_length=1, max_length=64)
    kind: Literal["logs", "exec", "cancel"]
    pod: str = Field(default="", max_length=600)
    container: str | None = Field(default=None, max_length=63)
    tail: int | None = Field(default=None, ge=0)
    since: float | None = None
    follow: bool = False
    argv: list[str] = Field(default_factory=list, max_length=256)
    timeout: float = Field(default=30.0, gt=0, le=24 * 3600)
    exp: float | None = None  # proposal 0002


class Response(_Msg):
    t: Literal["resp"] = "resp"
    id: str = Field(min_length=1, max_length=64)
    seq: int = Field(ge=0)
    stream: Literal["stdout", "stderr"] = "stdout"
    data: bytes = Field(default=b"", max_length=MAX_CHUNK)
    exit_code: int | None = None
    error: str | None = Field(default=None, max_length=4096)
    code: str | None = Field(default=None, max_length=32)
    done: bool = False


_OLD = TypeAdapter(Annotated[Desired | Ack | Resync | Report | ReportAck | Will | Request
                             | Response, Field(discriminator="t")])

SAMPLES: list[dict[str, Any]] = [
    {"t": "desired", "node": "n1", "epoch": "e", "base": 0, "gen": 3, "snapshot": True,
     "put": {"pod/default/a": {"name": "a", "spec": {"containers": []}}}, "delete": []},
    {"t": "desired", "node": "n1", "epoch": "e", "base": 2, "gen": 3, "delete": ["x"]},
    {"t": "ack", "node": "n1", "epoch": "e", "gen": 3},
    {"t": "resync", "node": "n1", "gen": 0},
    {"t": "resync", "node": "n1", "epoch": "e", "gen": 4, "seq": 9, "reason": "gap"},
    {"t": "report", "node": "n1", "seq": 1, "ts": 1700000000.5,
     "pods": {"pod/d/a": {"phase": "Running"}, "pod/d/b": None},
     "node_status": {"arch": "amd64"}, "telemetry": [{"ts": 60, "node": {"cpu": 1.0}}]},
    {"t": "report", "node": "n1", "seq": 2},
    {"t": "report", "node": "n1", "seq": 3, "node_status": {"arch": "amd64"}, "full": True},
    {"t": "rack", "node": "n1", "seq": 0},
    {"t": "rack", "node": "n1", "seq": 7, "again": True},
    {"t": "will", "node": "n1"},
    {"t": "req", "node": "n1", "id": "r1", "kind": "logs", "pod": "pod/d/a", "tail": 10,
     "since": 5.5, "follow": True, "timeout": 60.0},
    {"t": "req", "node": "n1", "id": "r2", "kind": "exec", "argv": ["ls", "-l"]},
    {"t": "resp", "node": "n1", "id": "r1", "seq": 0, "data": b"hello\n"},
    {"t": "resp", "node": "n1", "id": "r1", "seq": 1, "stream": "stderr", "exit_code": 3,
     "error": "x", "code": "Failed", "done": True},
]


def _verdict(raw: dict[str, Any]) -> tuple[str, Any]:
    try:
        old = _OLD.validate_python(raw)
    except ValidationError:
        old = None
    try:
        new = codec.decode(msgpack.packb(raw, use_bin_type=True))
    except DecodeError:
        new = None
    if old is not None and new is None:  # only a lax-mode coercion may explain it
        with pytest.raises(ValidationError):
            _OLD.validate_python(raw, strict=True)
        return ("stricter", None)
    assert (old is None) == (new is None), (raw, old, new)
    if old is not None:
        assert new is not None
        assert old.model_dump(mode="python") == new.as_dict()
        assert msgpack.packb(_wire(old.model_dump(mode="python")), use_bin_type=True) == \
            codec.encode(new)
        # the full form (every field, as before proposal 0003) reads the same
        assert codec.decode(msgpack.packb(old.model_dump(mode="python"),
                                          use_bin_type=True)) == new
    return ("ok" if new else "rejected", new)


# Proposal 0003: a report leaves out its optional fields at their defaults.
_REPORT_DEFAULTS = {"epoch": None, "gen": 0, "pods": {}, "node_status": None, "telemetry": [],
                    "full": False}


def _wire(dump: dict[str, Any]) -> dict[str, Any]:
    if dump.get("t") == "rack" and dump.get("again") is False:
        return {k: v for k, v in dump.items() if k != "again"}
    if dump.get("t") != "report":
        return dump
    return {k: v for k, v in dump.items()
            if not (k in _REPORT_DEFAULTS and v == _REPORT_DEFAULTS[k]
                    and type(v) is type(_REPORT_DEFAULTS[k]))}


@pytest.mark.parametrize("raw", SAMPLES, ids=lambda r: r["t"])
def test_same_bytes_for_every_type(raw):
    raw = {"v": 1, **raw}
    assert _verdict(raw)[0] == "ok"
    # Built in code rather than decoded: the same bytes too.
    cls = type(codec.decode(msgpack.packb(raw, use_bin_type=True)))
    kwargs = {k: v for k, v in raw.items() if k not in ("t", "v")}
    assert codec.encode(cls(**kwargs)) == \
        msgpack.packb(_wire(_OLD.validate_python(raw).model_dump(mode="python")),
                      use_bin_type=True)


_scalars = (st.none() | st.booleans() | st.integers(-5, 2**33) | st.floats(-1, 1e6)
            | st.sampled_from([1.0, "5", "true", "stdout", "logs", "e"])
            | st.text(max_size=70) | st.binary(max_size=8))
_values = st.recursive(_scalars, lambda c: st.lists(c, max_size=3)
                       | st.dictionaries(st.text(max_size=5), c, max_size=3), max_leaves=6)


@st.composite
def _mutated(draw: st.DrawFn) -> dict[str, Any]:
    raw = {"v": 1, **draw(st.sampled_from(SAMPLES))}
    for _ in range(draw(st.integers(1, 3))):
        keys = [*raw, "extra"]
        k = draw(st.sampled_from(keys))
        if k in ("v",):
            continue
        if draw(st.booleans()) and k in raw and k not in ("t",):
            del raw[k]
        else:
            raw[k] = draw(_values)
    return raw


@settings(max_examples=1000, deadline=None)
@given(_mutated())
def test_same_verdict_on_mutated_messages(raw):
    _verdict(raw)


@pytest.mark.parametrize("raw", [
    {"t": "ack", "node": "n", "epoch": "e", "gen": 1.0},
    {"t": "ack", "node": "n", "epoch": "e", "gen": "5"},
    {"t": "ack", "node": "n", "epoch": "e", "gen": True},
    {"t": "req", "node": "n", "id": "x", "kind": "exec", "follow": 1},
    {"t": "req", "node": "n", "id": "x", "kind": "exec", "timeout": "5"},
    {"t": "resp", "node": "n", "id": "x", "seq": 0, "data": "text"},
])
def test_no_lax_coercion(raw):
    assert _verdict({"v": 1, **raw})[0] == "stricter"


def test_a_non_map_put_is_a_decode_error():
    # The old decode's key-count check raised TypeError here, escaping as a crash.
    raw = {"v": 1, "t": "report", "node": "n", "seq": 1, "pods": 1}
    with pytest.raises(DecodeError, match="pods"):
        codec.decode(msgpack.packb(raw))


def test_construction_checks_like_pydantic():
    with pytest.raises(DecodeError, match="seq"):
        codec.Report(node="n", seq=0)
    with pytest.raises(DecodeError, match="argv"):
        codec.Request(node="n", id="r", kind="exec", argv=["x"] * 257)
    assert codec.Report(node="n", seq=1, ts=3).ts == 3.0
    assert isinstance(codec.Report(node="n", seq=1, ts=3).ts, float)
