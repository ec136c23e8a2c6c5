"""The wire format: msgpack maps with a version field `v` and a type field `t`.

Every message is decoded under limits (total size, string, array and map lengths)
and validated into a typed message, so a garbled or hostile payload becomes a
`ProtocolError` that the receiver counts and drops; it never reaches stored state.

Messages are frozen, slotted dataclasses checked by hand in `__post_init__`, not
pydantic models: the edge agent imports this module, and pydantic with its compiled
core costs a small device about 10 MiB of RSS (docs/edgecore.md, "Memory"). One
check runs whether a message is built in code or decoded from the wire, so a
message that breaks the schema raises `DecodeError` either way. The bytes on the
wire are those of the pydantic models this replaced (every field, in declaration
order, defaults included; tests/shared/test_codec_parity.py holds the two side by side).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import msgpack

from shared import PROTOCOL_VERSION
from shared.errors import DecodeError, MessageTooLarge, UnknownVersion


@dataclass(frozen=True)
class Limits:
    """Size limits applied before and during decoding."""

    max_message_bytes: int = 4 * 1024 * 1024
    max_keys: int = 10_000  # entries in a desired set / pods in a report
    max_str_bytes: int = 256 * 1024
    max_items: int = 100_000  # any array or map


DEFAULT_LIMITS = Limits()

# -- field checks: each returns the (possibly normalised) value or raises ValueError ------

_Check = Callable[[Any], Any]


def _int(*, ge: int | None = None) -> _Check:
    if ge is None:
        def any_int(v: Any) -> int:
            if type(v) is not int:  # bool is an int subclass and is not accepted
                raise ValueError(f"must be an integer, not {type(v).__name__}")
            return v
        return any_int
    lo = ge

    def check(v: Any) -> int:
        if type(v) is int and v >= lo:
            return v
        if type(v) is not int:
            raise ValueError(f"must be an integer, not {type(v).__name__}")
        raise ValueError(f"must be >= {lo}")
    return check


def _opt(inner: _Check) -> _Check:
    def check(v: Any) -> Any:
        return None if v is None else inner(v)
    return check


def _str(*, min_length: int = 0, max_length: int | None = None) -> _Check:
    def check(v: Any) -> str:
        if not isinstance(v, str):
            raise ValueError(f"must be a string, not {type(v).__name__}")
        if len(v) < min_length:
            raise ValueError(f"must have at least {min_length} character(s)")
        if max_length is not None and len(v) > max_length:
            raise ValueError(f"must have at most {max_length} characters")
        return v
    return check


def _float(*, gt: float | None = None, le: float | None = None) -> _Check:
    def check(v: Any) -> float:
        if type(v) not in (int, float):
            raise ValueError(f"must be a number, not {type(v).__name__}")
        v = float(v)
        if gt is not None and not v > gt:
            raise ValueError(f"must be > {gt:g}")
        if le is not None and not v <= le:
            raise ValueError(f"must be <= {le:g}")
        return v
    return check


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"must be a boolean, not {type(v).__name__}")
    return v


def _literal(*choices: str) -> _Check:
    def check(v: Any) -> str:
        if v not in choices or not isinstance(v, str):
            raise ValueError(f"must be one of {', '.join(map(repr, choices))}, not {v!r}")
        return v
    return check


def _map(value: _Check | None = None) -> _Check:
    def check(v: Any) -> dict[str, Any]:
        if not isinstance(v, dict):
            raise ValueError(f"must be a map, not {type(v).__name__}")
        for k, x in v.items():
            if not isinstance(k, str):
                raise ValueError(f"keys must be strings, not {type(k).__name__}")
            if value is not None:
                try:
                    value(x)
                except ValueError as exc:
                    raise ValueError(f"[{k!r}] {exc}") from None
        return v
    return check


def _list(item: _Check, *, max_length: int | None = None) -> _Check:
    def check(v: Any) -> list[Any]:
        if not isinstance(v, list):
            raise ValueError(f"must be a list, not {type(v).__name__}")
        if max_length is not None and len(v) > max_length:
            raise ValueError(f"must have at most {max_length} items")
        for i, x in enumerate(v):
            try:
                item(x)
            except ValueError as exc:
                raise ValueError(f"[{i}] {exc}") from None
        return v
    return check


def _bytes(*, max_length: int) -> _Check:
    def check(v: Any) -> bytes:
        if not isinstance(v, bytes):
            raise ValueError(f"must be bytes, not {type(v).__name__}")
        if len(v) > max_length:
            raise ValueError(f"must have at most {max_length} bytes")
        return v
    return check


def _any(v: Any) -> Any:
    return v


def _dict_or_none(v: Any) -> Any:
    if v is not None and not isinstance(v, dict):
        raise ValueError(f"must be a map or nil, not {type(v).__name__}")
    return v


_BASE_CHECKS: dict[str, _Check] = {"v": _int(), "node": _str(min_length=1, max_length=253)}

# -- messages ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class _Msg:
    """Base of every message: protocol version and the node it concerns.

    Subclasses list a check per field in `_checks`; the field order is the order of
    the keys on the wire.
    """

    t: ClassVar[str]
    _own_checks: ClassVar[dict[str, _Check]] = {}
    _all_checks: ClassVar[tuple[tuple[str, _Check], ...]] = ()  # set below, per class
    _wire: ClassVar[tuple[str, ...]] = ()

    v: int = PROTOCOL_VERSION
    node: str

    def __post_init__(self) -> None:
        name = ""
        try:
            for name, check in self._all_checks:
                value = getattr(self, name)
                ok = check(value)
                if ok is not value:  # normalised (int -> float)
                    object.__setattr__(self, name, ok)
        except ValueError as exc:
            raise DecodeError(f"invalid message: {name}: {exc}") from None

    def as_dict(self) -> dict[str, Any]:
        """Every field, in wire order (what `encode` packs)."""
        cls = type(self)
        if not cls._wire:
            cls._wire = ("v", "node", "t", *(f.name for f in dataclasses.fields(cls)
                                             if f.name not in ("v", "node")))
        return {name: self.t if name == "t" else getattr(self, name) for name in cls._wire}

    def model_copy(self, *, update: dict[str, Any] | None = None) -> Any:
        """A copy with `update` applied and checked (the name pydantic callers know)."""
        return dataclasses.replace(self, **(update or {}))


@dataclass(frozen=True, slots=True, kw_only=True)
class Desired(_Msg):
    """cloud -> edge: the node's desired set at `gen`, as a delta from `base` or a snapshot.

    `put` maps key -> value for keys changed after `base` (all keys in a snapshot);
    `delete` lists keys removed after `base` (empty in a snapshot).
    """

    t: ClassVar[str] = "desired"
    _own_checks: ClassVar[dict[str, _Check]] = {
        "epoch": _str(min_length=1, max_length=64), "base": _int(ge=0), "gen": _int(ge=0),
        "snapshot": _bool, "put": _map(), "delete": _list(_str())}
    epoch: str
    base: int
    gen: int
    snapshot: bool = False
    put: dict[str, Any] = field(default_factory=dict)
    delete: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True, kw_only=True)
class Ack(_Msg):
    """edge -> cloud: the desired set at (epoch, gen) is durably applied."""

    t: ClassVar[str] = "ack"
    _own_checks: ClassVar[dict[str, _Check]] = {"epoch": _str(max_length=64),
                                                 "gen": _int(ge=0)}
    epoch: str
    gen: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Resync(_Msg):
    """edge -> cloud: send me a delta from (epoch, gen); sent on connect and on a gap.

    `seq` is the highest report seq the edge has persisted, so a cloud that lost its
    memory of the node's report stream can tell which reports are new.
    """

    t: ClassVar[str] = "resync"
    _own_checks: ClassVar[dict[str, _Check]] = {
        "epoch": _opt(_str(max_length=64)), "gen": _int(ge=0), "seq": _int(ge=0),
        "reason": _str(max_length=64)}
    epoch: str | None = None
    gen: int
    seq: int = 0
    reason: str = "connect"


@dataclass(frozen=True, slots=True, kw_only=True)
class Report(_Msg):
    """edge -> cloud: pod statuses that changed, node status, telemetry; idempotent by seq.

    An empty report (no pods, no node status) is the heartbeat.
    """

    t: ClassVar[str] = "report"
    _own_checks: ClassVar[dict[str, _Check]] = {
        "seq": _int(ge=1), "epoch": _opt(_str(max_length=64)), "gen": _int(ge=0),
        "ts": _float(), "pods": _map(_dict_or_none), "node_status": _dict_or_none,
        "telemetry": _list(_map())}
    seq: int
    epoch: str | None = None
    gen: int = 0
    ts: float = 0.0
    pods: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    node_status: dict[str, Any] | None = None
    telemetry: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportAck(_Msg):
    """cloud -> edge: every report with seq <= `seq` is stored; drop them from the outbox."""

    t: ClassVar[str] = "rack"
    _own_checks: ClassVar[dict[str, _Check]] = {"seq": _int(ge=0)}
    seq: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Will(_Msg):
    """Last will of the edge session, published by the broker when the link dies."""

    t: ClassVar[str] = "will"


MAX_CHUNK_BYTES = 64 * 1024
"""Largest `Response.data`: a log or exec output is split into chunks of at most this."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Request(_Msg):
    """cloud -> edge: run a request against a pod's container (docs/proposals/0001).

    `kind` "logs" reads the container's log (`tail` lines, records `since` a Unix
    time, `follow` keeps streaming new output until `timeout` s have passed); "exec"
    runs `argv` in the container, killed after `timeout` s; "cancel" ends request
    `id` early (the cloud's client went away). Answered by `Response`s with the same id.
    """

    t: ClassVar[str] = "req"
    _own_checks: ClassVar[dict[str, _Check]] = {
        "id": _str(min_length=1, max_length=64), "kind": _literal("logs", "exec", "cancel"),
        "pod": _str(max_length=600), "container": _opt(_str(max_length=63)),
        "tail": _opt(_int(ge=0)), "since": _opt(_float()), "follow": _bool,
        "argv": _list(_str(), max_length=256), "timeout": _float(gt=0, le=24 * 3600)}
    id: str
    kind: Literal["logs", "exec", "cancel"]
    pod: str = ""  # pod key, e.g. pod/default/web
    container: str | None = None
    tail: int | None = None
    since: float | None = None
    follow: bool = False
    argv: list[str] = field(default_factory=list)
    timeout: float = 30.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Response(_Msg):
    """edge -> cloud: one chunk of the answer to `Request` `id`, numbered by `seq` from 0.

    `stream` says which output `data` belongs to (exec has both). The last chunk has
    `done`; it carries `exit_code` (exec) or `error` with a machine-readable `code`
    (NotFound, BadRequest, Conflict, Timeout, Busy, Failed).
    """

    t: ClassVar[str] = "resp"
    _own_checks: ClassVar[dict[str, _Check]] = {
        "id": _str(min_length=1, max_length=64), "seq": _int(ge=0),
        "stream": _literal("stdout", "stderr"), "data": _bytes(max_length=MAX_CHUNK_BYTES),
        "exit_code": _opt(_int()), "error": _opt(_str(max_length=4096)),
        "code": _opt(_str(max_length=32)), "done": _bool}
    id: str
    seq: int
    stream: Literal["stdout", "stderr"] = "stdout"
    data: bytes = b""
    exit_code: int | None = None
    error: str | None = None
    code: str | None = None
    done: bool = False


Message = Desired | Ack | Resync | Report | ReportAck | Will | Request | Response
_TYPES: dict[str, type[_Msg]] = {c.t: c for c in (Desired, Ack, Resync, Report, ReportAck,
                                                   Will, Request, Response)}
for _cls in _TYPES.values():
    _cls._all_checks = (*_BASE_CHECKS.items(), *_cls._own_checks.items())
_FIELDS: dict[str, frozenset[str]] = {
    t: frozenset(f.name for f in dataclasses.fields(c)) for t, c in _TYPES.items()}


def encode(msg: _Msg) -> bytes:
    return msgpack.packb(msg.as_dict(), use_bin_type=True)


def decode(data: bytes, *, limits: Limits = DEFAULT_LIMITS) -> Message:
    """Bytes -> a validated message, or a `ProtocolError` saying why not."""
    if len(data) > limits.max_message_bytes:
        raise MessageTooLarge(len(data), limits.max_message_bytes)
    try:
        raw = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            max_str_len=limits.max_str_bytes,
            max_bin_len=limits.max_str_bytes,
            max_array_len=limits.max_items,
            max_map_len=limits.max_items,
        )
    except Exception as exc:  # msgpack raises several unrelated types
        raise DecodeError(f"not a msgpack message: {exc}") from exc
    if not isinstance(raw, dict):
        raise DecodeError(f"message must be a map, got {type(raw).__name__}")
    version = raw.get("v")
    if version != PROTOCOL_VERSION:
        raise UnknownVersion(version)
    for name in ("put", "pods"):
        value = raw.get(name)
        n = len(value) if isinstance(value, dict) else 0  # a non-map fails validation
        if n > limits.max_keys:
            raise DecodeError(f"{name}: {n} keys exceed the limit of {limits.max_keys}")
    t = raw.get("t")
    cls = _TYPES.get(t) if isinstance(t, str) else None
    if cls is None:
        raise DecodeError(f"invalid message: t: unknown message type {t!r}")
    names = _FIELDS[t]
    try:
        return cls(**{k: v for k, v in raw.items() if k in names})  # type: ignore[return-value]
    except TypeError as exc:  # a required field is missing
        missing = next((f.name for f in dataclasses.fields(cls)
                        if f.name not in raw and f.default is dataclasses.MISSING
                        and f.default_factory is dataclasses.MISSING), None)
        raise DecodeError(f"invalid message: {missing or '?'}: field required") from exc
