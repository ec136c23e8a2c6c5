"""The wire format: msgpack maps with a version field `v` and a type field `t`.

Every message is decoded under limits (total size, string, array and map lengths)
and validated into a pydantic model, so a garbled or hostile payload becomes a
`ProtocolError` that the receiver counts and drops; it never reaches stored state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgpack
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

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


class _Msg(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    v: int = PROTOCOL_VERSION
    node: str = Field(min_length=1, max_length=253)


class Desired(_Msg):
    """cloud -> edge: the node's desired set at `gen`, as a delta from `base` or a snapshot.

    `put` maps key -> value for keys changed after `base` (all keys in a snapshot);
    `delete` lists keys removed after `base` (empty in a snapshot).
    """

    t: Literal["desired"] = "desired"
    epoch: str = Field(min_length=1, max_length=64)
    base: int = Field(ge=0)
    gen: int = Field(ge=0)
    snapshot: bool = False
    put: dict[str, Any] = Field(default_factory=dict)
    delete: list[str] = Field(default_factory=list)


class Ack(_Msg):
    """edge -> cloud: the desired set at (epoch, gen) is durably applied."""

    t: Literal["ack"] = "ack"
    epoch: str = Field(max_length=64)
    gen: int = Field(ge=0)


class Resync(_Msg):
    """edge -> cloud: send me a delta from (epoch, gen); sent on connect and on a gap.

    `seq` is the highest report seq the edge has persisted, so a cloud that lost its
    memory of the node's report stream can tell which reports are new.
    """

    t: Literal["resync"] = "resync"
    epoch: str | None = Field(default=None, max_length=64)
    gen: int = Field(ge=0)
    seq: int = Field(default=0, ge=0)
    reason: str = Field(default="connect", max_length=64)


class Report(_Msg):
    """edge -> cloud: pod statuses that changed, node status, telemetry; idempotent by seq.

    An empty report (no pods, no node status) is the heartbeat.
    """

    t: Literal["report"] = "report"
    seq: int = Field(ge=1)
    epoch: str | None = Field(default=None, max_length=64)
    gen: int = Field(default=0, ge=0)
    ts: float = 0.0
    pods: dict[str, dict[str, Any] | None] = Field(default_factory=dict)
    node_status: dict[str, Any] | None = None
    telemetry: list[dict[str, Any]] = Field(default_factory=list)


class ReportAck(_Msg):
    """cloud -> edge: every report with seq <= `seq` is stored; drop them from the outbox."""

    t: Literal["rack"] = "rack"
    seq: int = Field(ge=0)


class Will(_Msg):
    """Last will of the edge session, published by the broker when the link dies."""

    t: Literal["will"] = "will"


MAX_CHUNK_BYTES = 64 * 1024
"""Largest `Response.data`: a log or exec output is split into chunks of at most this."""


class Request(_Msg):
    """cloud -> edge: run a request against a pod's container (docs/proposals/0001).

    `kind` "logs" reads the container's log (`tail` lines, records `since` a Unix
    time, `follow` keeps streaming new output until `timeout` s have passed); "exec"
    runs `argv` in the container, killed after `timeout` s; "cancel" ends request
    `id` early (the cloud's client went away). Answered by `Response`s with the same id.
    """

    t: Literal["req"] = "req"
    id: str = Field(min_length=1, max_length=64)
    kind: Literal["logs", "exec", "cancel"]
    pod: str = Field(default="", max_length=600)  # pod key, e.g. pod/default/web
    container: str | None = Field(default=None, max_length=63)
    tail: int | None = Field(default=None, ge=0)
    since: float | None = None
    follow: bool = False
    argv: list[str] = Field(default_factory=list, max_length=256)
    timeout: float = Field(default=30.0, gt=0, le=24 * 3600)


class Response(_Msg):
    """edge -> cloud: one chunk of the answer to `Request` `id`, numbered by `seq` from 0.

    `stream` says which output `data` belongs to (exec has both). The last chunk has
    `done`; it carries `exit_code` (exec) or `error` with a machine-readable `code`
    (NotFound, BadRequest, Conflict, Timeout, Busy, Failed).
    """

    t: Literal["resp"] = "resp"
    id: str = Field(min_length=1, max_length=64)
    seq: int = Field(ge=0)
    stream: Literal["stdout", "stderr"] = "stdout"
    data: bytes = Field(default=b"", max_length=MAX_CHUNK_BYTES)
    exit_code: int | None = None
    error: str | None = Field(default=None, max_length=4096)
    code: str | None = Field(default=None, max_length=32)
    done: bool = False


Message = Annotated[
    Desired | Ack | Resync | Report | ReportAck | Will | Request | Response,
    Field(discriminator="t"),
]
_ADAPTER: TypeAdapter[Message] = TypeAdapter(Message)


def encode(msg: _Msg) -> bytes:
    return msgpack.packb(msg.model_dump(mode="python"), use_bin_type=True)


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
    for field in ("put", "pods"):
        n = len(raw.get(field) or ())
        if n > limits.max_keys:
            raise DecodeError(f"{field}: {n} keys exceed the limit of {limits.max_keys}")
    try:
        return _ADAPTER.validate_python(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise DecodeError(f"invalid message: {loc}: {err['msg']}") from None
