"""The wire format: msgpack maps with a version field `v` and a type field `t`.

Every message is decoded under limits (total size, string, array and map lengths)
and validated into a typed message, so a garbled or hostile payload becomes a
`ProtocolError` that the receiver counts and drops; it never reaches stored state.

Messages are frozen, slotted dataclasses checked in `__post_init__` with the field
checks of `shared.validate` (the one kit, shared with the pod spec), not pydantic
models: the edge agent imports this module, and pydantic with its compiled
core costs a small device about 10 MiB of RSS (docs/edgecore.md, "Memory"). One
check runs whether a message is built in code or decoded from the wire, so a
message that breaks the schema raises `DecodeError` either way. The bytes on the
wire are those of the pydantic models this replaced (every field, in declaration
order, defaults included; tests/shared/test_codec_parity.py holds the two side by side).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import msgpack

from shared import PROTOCOL_VERSION, validate
from shared.errors import DecodeError, MessageTooLarge, TooDeep, UnknownVersion

KiB = 1024
MiB = 1024 * KiB


@dataclass(frozen=True)
class Limits:
    """Size limits applied before and during decoding."""

    max_message_bytes: int = 4 * MiB
    max_keys: int = 10_000  # entries in a desired set / pods in a report
    max_str_bytes: int = 256 * KiB  # any string or bytes
    max_items: int = 100_000  # any array or map
    max_depth: int = 32  # containers nested in containers; checked before unpacking


DEFAULT_LIMITS = Limits()
"""The limits of protocol version 1 before proposal 0002 (what `decode` uses unless
told otherwise); receivers use the per-direction limits below."""

DOWN_LIMITS = Limits(max_message_bytes=4 * MiB, max_keys=10_000, max_str_bytes=1 * MiB,
                     max_items=100_000)
"""cloud -> edge. A Desired snapshot holds a node's whole set: its pods (at most
capacity_pods, 110 by default, 10,000 at most) and the ConfigMaps/Secrets they mount.
A ConfigMap (as in Kubernetes) holds at most 1 MiB, so that is the longest string, and
a sealed Secret's ciphertext the longest bytes; a message holds at most 4 MiB (what
a 256 MB device unpacks comfortably). A sealed Secret's ciphertext is its msgpack
value (data in base64) plus 16 bytes (`shared.seal.sealed_size`), so its clear data
may be about 3/4 of the limit. An entry that does not fit is never sent
(`entry_fits`); the API refuses it at apply."""

UP_LIMITS = Limits(max_message_bytes=1 * MiB, max_keys=10_000, max_str_bytes=64 * KiB,
                   max_items=20_000)
"""edge -> cloud. Measured (tests/shared/test_limits.py): a report of every pod of a
full default node (110 pods, four containers each, 256-byte status messages) is 242
KiB, a telemetry point of 110 pods about 6 KiB, a heartbeat under 100 bytes, a
Response at most its 64 KiB chunk plus its 4 KiB error. 1 MiB holds such a report
for about 450 pods; the longest string or bytes an agent sends is a Response chunk
(64 KiB)."""

# Field checks come from the one kit (shared/validate.py); short local names keep the
# message tables below readable.
_Check = validate.Check
_int = validate.integer
_opt = validate.optional
_str = validate.string
_float = validate.number
_bool = validate.boolean
_literal = validate.literal
_map = validate.mapping
_list = validate.array
_bytes = validate.byte_string
_dict_or_none = validate.map_or_none

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

    An empty report (no pods, no node status) is the heartbeat. On the wire the
    optional fields at their defaults (`epoch` null, `gen` 0, `pods` empty,
    `node_status` null, `telemetry` empty, `full` false) are left out (proposal
    0003): an idle node's telemetry report a minute is about 30 bytes shorter.
    Decoding fills them in, so either form reads the same, as it always did.

    `full`: this report holds the node status and every pod's status (asked for by
    `ReportAck.again`, or sent to a new owner), so reports missed before it are moot.
    """

    t: ClassVar[str] = "report"
    _own_checks: ClassVar[dict[str, _Check]] = {
        "seq": _int(ge=1), "epoch": _opt(_str(max_length=64)), "gen": _int(ge=0),
        "ts": _float(), "pods": _map(_dict_or_none), "node_status": _dict_or_none,
        "telemetry": _list(_map()), "full": _bool}
    seq: int
    epoch: str | None = None
    gen: int = 0
    ts: float = 0.0
    pods: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    node_status: dict[str, Any] | None = None
    telemetry: list[dict[str, Any]] = field(default_factory=list)
    full: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportAck(_Msg):
    """cloud -> edge: every report with seq <= `seq` is stored; drop them from the outbox.

    `again`: the cloud saw a gap in the node's report seqs (reports published while
    nothing was subscribed: a broker back before the cloud's subscriber, a partition
    between shards), so it may lack statuses the edge sent; the edge reports its node
    status and every pod's status again, once. Left out of the wire when false (an
    agent that does not know it ignores it, as every unknown field)."""

    t: ClassVar[str] = "rack"
    _own_checks: ClassVar[dict[str, _Check]] = {"seq": _int(ge=0), "again": _bool}
    seq: int
    again: bool = False


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
        "argv": _list(_str(), max_length=256), "timeout": _float(gt=0, le=24 * 3600),
        "exp": _opt(_float())}
    id: str
    kind: Literal["logs", "exec", "cancel"]
    pod: str = ""  # pod key, e.g. pod/default/web
    container: str | None = None
    tail: int | None = None
    since: float | None = None
    follow: bool = False
    argv: list[str] = field(default_factory=list)
    timeout: float = 30.0
    exp: float | None = None
    """Unix seconds after which the edge refuses the request (replay protection,
    proposal 0002); None only from a cloud before it (refused unless insecure)."""


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
_TYPES: dict[str, type[Message]] = {c.t: c for c in (Desired, Ack, Resync, Report, ReportAck,
                                                   Will, Request, Response)}
for _cls in _TYPES.values():
    _cls._all_checks = (*_BASE_CHECKS.items(), *_cls._own_checks.items())
_FIELDS: dict[str, frozenset[str]] = {
    t: frozenset(f.name for f in dataclasses.fields(c)) for t, c in _TYPES.items()}


_REPORT_DEFAULTS: tuple[tuple[str, Any], ...] = (
    ("epoch", None), ("gen", 0), ("pods", {}), ("node_status", None), ("telemetry", []),
    ("full", False))


def wire_dict(msg: _Msg) -> dict[str, Any]:
    """What `encode` packs: every field, but a Report without its defaults and a
    ReportAck without `again` when it is false."""
    out = msg.as_dict()
    if isinstance(msg, Report):
        for name, default in _REPORT_DEFAULTS:
            if out[name] == default and type(out[name]) is type(default):
                del out[name]
    elif isinstance(msg, ReportAck) and not msg.again:
        del out["again"]
    return out


def encode(msg: _Msg) -> bytes:
    return msgpack.packb(wire_dict(msg), use_bin_type=True)


def decode(data: bytes, *, limits: Limits = DEFAULT_LIMITS) -> Message:
    """Bytes -> a validated message, or a `ProtocolError` saying why not.

    The size is checked first, then the nesting depth by a scan that builds nothing
    (`check_depth`), and only then is the message unpacked."""
    if len(data) > limits.max_message_bytes:
        raise MessageTooLarge(len(data), limits.max_message_bytes)
    check_depth(data, limits.max_depth)
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
    names = _FIELDS[cls.t]
    try:
        return cls(**{k: v for k, v in raw.items() if k in names})
    except TypeError as exc:  # a required field is missing
        missing = next((f.name for f in dataclasses.fields(cls)
                        if f.name not in raw and f.default is dataclasses.MISSING
                        and f.default_factory is dataclasses.MISSING), None)
        raise DecodeError(f"invalid message: {missing or '?'}: field required") from exc


# -- limits that need no unpacking -------------------------------------------------------

# Bytes taken by each msgpack lead byte whose object has a fixed size (0: not fixed).
_FIXED = bytearray(256)
for _b in range(0x80):
    _FIXED[_b] = 1
for _b in range(0xE0, 0x100):
    _FIXED[_b] = 1
for _b in range(0xA0, 0xC0):
    _FIXED[_b] = 1 + (_b & 0x1F)
for _b, _n in {0xC0: 1, 0xC2: 1, 0xC3: 1, 0xCA: 5, 0xCB: 9, 0xCC: 2, 0xCD: 3, 0xCE: 5,
               0xCF: 9, 0xD0: 2, 0xD1: 3, 0xD2: 5, 0xD3: 9, 0xD4: 3, 0xD5: 4, 0xD6: 6,
               0xD7: 10, 0xD8: 18}.items():
    _FIXED[_b] = _n
# Variable-size scalars: lead byte -> (bytes of the length field, extra header bytes).
_SIZED = {0xC4: (1, 0), 0xC5: (2, 0), 0xC6: (4, 0), 0xD9: (1, 0), 0xDA: (2, 0),
          0xDB: (4, 0), 0xC7: (1, 1), 0xC8: (2, 1), 0xC9: (4, 1)}
# Containers: lead byte -> (bytes of the count field, children per count).
_CONTAINERS = {0xDC: (2, 1), 0xDD: (4, 1), 0xDE: (2, 2), 0xDF: (4, 2)}


# Bytes that are not a container's lead byte (fixmap, fixarray, array 16/32, map 16/32).
_NOT_OPENING = bytes(b for b in range(256)
                     if not (0x80 <= b <= 0x9F or 0xDC <= b <= 0xDF))


def check_depth(data: bytes, max_depth: int) -> None:
    """Raise `TooDeep` if msgpack `data` nests containers deeper than `max_depth`.

    Walks the lead bytes only (strings are skipped by their length, nothing is
    built), so a hostile message is refused before msgpack unpacks it. Malformed
    or truncated input ends the scan quietly: unpacking reports it.

    Each level opens with a container's lead byte, so data holding at most
    `max_depth` bytes of those values (counted in C, string contents included:
    an overcount) cannot be too deep and is not walked: an ack, a heartbeat or a
    typical report (issue 14: the walk was 4 us of every ack the cloud took in).
    """
    n = len(data)
    if n <= max_depth or (isinstance(data, bytes | bytearray)
                          and len(data.translate(None, _NOT_OPENING)) <= max_depth):
        return
    i = 0
    stack: list[int] = []  # children still to read, per open container
    fixed = _FIXED
    while i < n:
        b = data[i]
        size = fixed[b]
        children = 0
        if size:
            i += size
        elif 0x80 <= b <= 0x9F:  # fixmap / fixarray
            children = (b & 0x0F) * (2 if b < 0x90 else 1)
            i += 1
            if not children and len(stack) >= max_depth:
                raise TooDeep(f"message nested deeper than {max_depth} levels")
        elif b in _SIZED:
            width, extra = _SIZED[b]
            length = int.from_bytes(data[i + 1:i + 1 + width], "big")
            i += 1 + width + extra + length
        elif b in _CONTAINERS:
            width, per = _CONTAINERS[b]
            children = int.from_bytes(data[i + 1:i + 1 + width], "big") * per
            i += 1 + width
            if not children and len(stack) >= max_depth:
                raise TooDeep(f"message nested deeper than {max_depth} levels")
        else:
            return  # 0xC1 (never used): unpacking reports it
        if children:
            stack.append(children)
            if len(stack) > max_depth:
                raise TooDeep(f"message nested deeper than {max_depth} levels")
            continue
        while stack:  # one object done: it was a child of the innermost container
            stack[-1] -= 1
            if stack[-1]:
                break
            stack.pop()
        if not stack:
            return  # the top-level object is complete


def entry_fits(key: str, value: Any, *, limits: Limits = DOWN_LIMITS) -> str | None:
    """Why a desired entry can never be delivered under `limits`, or None if it can: a
    string or bytes over `max_str_bytes`, or a message holding only this entry over
    `max_message_bytes`. A `secret/...` value given in clear is measured as it will go,
    sealed (`shared.seal`), so the API can check a Secret at apply with this too."""
    if key.startswith("secret/") and not (isinstance(value, dict) and "enc" in value):
        from shared.seal import NONCE_BYTES, SECRET_ENC, sealed_size

        try:
            value = {"enc": SECRET_ENC, "n": bytes(NONCE_BYTES),
                     "ct": bytes(sealed_size(value))}
        except (TypeError, ValueError, OverflowError) as exc:
            return f"{key}: not encodable: {exc}"
    try:
        raw = msgpack.packb(value, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        return f"{key}: not encodable: {exc}"
    if len(raw) <= min(limits.max_str_bytes, limits.max_items):
        pass  # no string or array in it can be longer than the whole: only depth to check
    else:
        reason = _unpack_limits(key, raw, limits)
        if reason is not None:
            return reason
    # the message around one entry: a Desired header and the key, well under 1 KiB
    if len(raw) + len(key) + 1024 > limits.max_message_bytes:
        return (f"{key}: {len(raw)} bytes exceed the message limit of "
                f"{limits.max_message_bytes} bytes")
    if len(raw) > limits.max_depth - 2:
        try:
            check_depth(raw, limits.max_depth - 2)  # message map > put map > entry
        except TooDeep:
            return f"{key}: nested deeper than {limits.max_depth - 2} levels"
    return None


def _unpack_limits(key: str, raw: bytes, limits: Limits) -> str | None:
    try:
        msgpack.unpackb(raw, raw=False, strict_map_key=True,
                        max_str_len=limits.max_str_bytes, max_bin_len=limits.max_str_bytes,
                        max_array_len=limits.max_items, max_map_len=limits.max_items)
    except ValueError as exc:
        return (f"{key}: a string or array exceeds the wire limits (strings at most "
                f"{limits.max_str_bytes} bytes, arrays and maps {limits.max_items} items): "
                f"{exc}")
    except Exception as exc:  # msgpack raises several unrelated types
        return f"{key}: not deliverable: {exc}"
    return None
