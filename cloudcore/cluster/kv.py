"""The shards' door to NATS JetStream KV: the only module of cloudcore that imports nats.

What it owns: one NATS connection (a list of server URLs, a user and password, TLS
verified against the fleet CA), and the KV buckets opened on it. What it promises:

- Secure by default. `KVSettings.validate()` refuses a plain `nats://` URL, a missing
  CA file or a missing user unless `insecure=True` is set explicitly, which logs a
  warning (the same rule as the broker's `--insecure`).
- Every call either returns or raises one of `cloudcore.cluster.errors`: NATS
  unreachable or timed out is `KVUnavailable` (retriable), a missing bucket is
  `BucketMissing`, a lost compare-and-set is `CASConflict`, anything else NATS refuses
  is `KVRefused`. nats-py's exceptions never leak.
- Revisions are the bucket stream's sequence numbers: they only grow, across keys, so
  "the key is still at revision r" is a compare-and-set precondition
  (`update(key, value, revision=r)`, `delete(key, revision=r)`), and `create` is the
  same with "absent or deleted".
- `watch(keys, from_revision=...)` is an async iterator of `Entry` (puts and deletes),
  delivered in revision order by an ordered consumer that nats-py restarts by itself
  after a reconnect; `Watch.caught_up` is set once the values that existed when the
  watch started have all been delivered.

Buckets keep one value per key (history 1). Replicas: 1 on a single server, 3 on a
cluster (`replicas` of `bucket()`; a bucket that already exists is opened as it is).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.kv import KeyValue

from cloudcore.cluster.errors import (
    BucketMissing,
    CASConflict,
    ClusterError,
    ConfigError,
    KVRefused,
    KVUnavailable,
)

log = logging.getLogger("cloudcore.cluster.kv")

T = TypeVar("T")

INSECURE_WARNING = ("INSECURE NATS connection ({why}): anyone on the path can read and "
                    "rewrite the fleet's shared state (leases, objects). Tests only.")

_KV_OP = "KV-Operation"
_CAS_CODES = (10071, 10164)  # JSStreamWrongLastSequence (a compare-and-set lost)
_UNAVAILABLE = (
    nats.errors.TimeoutError, nats.errors.NoServersError, nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError, nats.errors.ConnectionDrainingError,
    nats.errors.NoRespondersError, nats.errors.OutboundBufferLimitError,
    nats.errors.StaleConnectionError, nats.js.errors.ServiceUnavailableError,
    nats.js.errors.NoStreamResponseError, asyncio.TimeoutError, OSError,
)


@dataclass(frozen=True)
class KVSettings:
    """How to reach the NATS cluster. Times in seconds."""

    urls: tuple[str, ...] = ("tls://127.0.0.1:4222",)  # every server of the cluster
    user: str | None = None  # NATS user of this shard (a service identity)
    password: str | None = None  # its password (from a file or the environment, never argv)
    ca_file: Path | None = None  # the fleet CA (ca.crt) that signed the servers' certificate
    insecure: bool = False  # allow nats:// and no CA / no user; warns
    connect_timeout: float = 5.0  # whole initial connect, every URL tried
    request_timeout: float = 5.0  # one KV call
    client_name: str = "cloudcore"  # shown by the servers' monitoring

    def validate(self) -> None:
        """Raise ConfigError naming the field, before anything connects."""
        if not self.urls:
            raise ConfigError("nats.urls: at least one server URL", field="nats.urls")
        for url in self.urls:
            scheme, sep, rest = url.partition("://")
            if not sep or not rest or scheme not in ("nats", "tls"):
                raise ConfigError(f"nats.urls: {url!r} is not nats://host:port or "
                                  "tls://host:port", field="nats.urls")
            if scheme == "nats" and not self.insecure:
                raise ConfigError(f"nats.urls: {url!r} is plain text; use tls:// with the "
                                  "fleet CA, or set insecure explicitly", field="nats.urls")
        if not self.insecure:
            if self.ca_file is None:
                raise ConfigError("nats.ca_file: the fleet CA certificate is required "
                                  "(or set insecure explicitly)", field="nats.ca_file")
            if not Path(self.ca_file).is_file():
                raise ConfigError(f"nats.ca_file: {self.ca_file} is not a readable file",
                                  field="nats.ca_file")
            if not self.user or not self.password:
                raise ConfigError("nats.user/nats.password: a NATS user and password are "
                                  "required (or set insecure explicitly)", field="nats.user")
        if self.ca_file is not None:
            self.tls_context()  # a file that is no certificate fails here, named
        if self.connect_timeout <= 0 or self.request_timeout <= 0:
            raise ConfigError("nats timeouts must be > 0 s", field="nats.request_timeout")

    def tls_context(self) -> ssl.SSLContext | None:
        """A client context that trusts only the fleet CA (None: no CA file given)."""
        if self.ca_file is None:
            return None
        try:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca_file))
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"nats.ca_file: {self.ca_file} holds no usable CA certificate "
                              f"({exc})", field="nats.ca_file") from exc
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        return ctx


@dataclass(frozen=True)
class Entry:
    """One value of a key, or its deletion (`operation` "delete" / "purge", `value` b"")."""

    key: str
    value: bytes
    revision: int
    operation: Literal["put", "delete", "purge"] = "put"
    created: float | None = None  # the server's wall-clock time of the write (watch only)

    @property
    def deleted(self) -> bool:
        return self.operation != "put"


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if type(exc).__name__ in text else f"{type(exc).__name__}: {text}"


async def _wrapped(what: str, call: Awaitable[T], *, bucket: str = "", key: str = "",
                   expected: int | None = None, timeout: float) -> T:
    """Await a nats call and translate its failures into our tree."""
    try:
        return await asyncio.wait_for(call, timeout)
    except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
        raise  # "no value" is an answer, not a failure: Bucket.get turns it into None
    except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.BadRequestError) as exc:
        code = getattr(exc, "err_code", None)
        if expected is not None and (isinstance(exc, nats.js.errors.KeyWrongLastSequenceError)
                                     or code in _CAS_CODES):
            raise CASConflict(bucket, key, expected, getattr(exc, "description", "") or "") \
                from exc
        raise KVRefused(f"{what}: NATS refused it: {_describe(exc)}") from exc
    except nats.js.errors.BucketNotFoundError as exc:
        raise BucketMissing(bucket) from exc
    except _UNAVAILABLE as exc:
        raise KVUnavailable(f"{what}: NATS/JetStream unavailable: {_describe(exc)}") from exc
    except nats.js.errors.APIError as exc:
        if getattr(exc, "code", None) == 503:
            raise KVUnavailable(f"{what}: JetStream unavailable: {_describe(exc)}") from exc
        raise KVRefused(f"{what}: NATS refused it: {_describe(exc)}") from exc
    except nats.errors.Error as exc:
        raise KVRefused(f"{what}: {_describe(exc)}") from exc


class KV:
    """One NATS connection and its JetStream context: `async with KV(settings) as kv`.

    `connect()` raises KVUnavailable when no server answers within `connect_timeout`
    (naming every URL) and KVRefused on a refused login or a TLS failure. Once
    connected, nats-py reconnects by itself (to any server of the list); calls made
    while it does raise KVUnavailable."""

    def __init__(self, settings: KVSettings) -> None:
        settings.validate()
        self.settings = settings
        self._nc: NatsClient | None = None
        self._js: JetStreamContext | None = None
        self._last_error: str = ""
        self._watches: list[Watch] = []  # ended by close(), so no reader waits forever

    async def __aenter__(self) -> KV:
        await self.connect()
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    async def connect(self) -> None:
        s = self.settings
        if s.insecure:
            why = []
            if any(u.startswith("nats://") for u in s.urls):
                why.append("plain text")
            if not s.user:
                why.append("no user")
            if why:
                log.warning(INSECURE_WARNING.format(why=", ".join(why)))

        refused = asyncio.Event()
        auth_error: list[str] = []

        async def on_error(exc: Exception) -> None:
            self._last_error = _describe(exc)
            if "authorization" in self._last_error.lower() and self._nc is None:
                auth_error.append(self._last_error)
                refused.set()  # a wrong user or password: retrying will not help
            log.debug("nats: %s", self._last_error)

        async def on_disconnect() -> None:
            if self._nc is None or self._nc.is_closed:
                return  # our own close()
            log.warning("nats: disconnected from %s; reconnecting", ", ".join(s.urls))

        async def on_reconnect() -> None:
            log.info("nats: reconnected")

        options: dict[str, Any] = {
            "servers": list(s.urls), "name": s.client_name,
            "connect_timeout": max(1, round(s.connect_timeout)),
            "allow_reconnect": True, "max_reconnect_attempts": -1,
            "reconnect_time_wait": 0.5, "error_cb": on_error,
            "disconnected_cb": on_disconnect, "reconnected_cb": on_reconnect,
        }
        if s.user:
            options["user"], options["password"] = s.user, s.password
        ctx = s.tls_context()
        if ctx is not None:
            options["tls"] = ctx
        try:
            # nats-py keeps trying the list forever on the first connect when reconnects
            # are allowed: bound it here so an unreachable cluster is an error, not a hang
            connecting = asyncio.ensure_future(nats.connect(**options))
            refusal = asyncio.ensure_future(refused.wait())
            try:
                await asyncio.wait([connecting, refusal], timeout=s.connect_timeout,
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                refusal.cancel()
                if not connecting.done():
                    connecting.cancel()
                    with contextlib.suppress(BaseException):
                        await connecting
            if refused.is_set() and not (connecting.done() and not connecting.cancelled()
                                         and connecting.exception() is None):
                raise KVRefused(f"NATS at {', '.join(s.urls)} refused the login of user "
                                f"{s.user!r}: {auth_error[0]}")
            if connecting.cancelled():
                raise TimeoutError
            self._nc = connecting.result()
        except TimeoutError as exc:
            raise KVUnavailable(
                f"NATS unreachable: no server of {', '.join(s.urls)} accepted us within "
                f"{s.connect_timeout:.0f} s" + (f" (last error: {self._last_error})"
                                                if self._last_error else "")) from exc
        except (nats.errors.NoServersError, OSError) as exc:
            raise KVUnavailable(f"NATS unreachable at {', '.join(s.urls)}: "
                                f"{self._last_error or _describe(exc)}") from exc
        except (nats.errors.Error, ssl.SSLError) as exc:
            raise KVRefused(f"NATS at {', '.join(s.urls)} refused the connection: "
                            f"{_describe(exc)}") from exc
        self._js = self._nc.jetstream(timeout=s.request_timeout)

    async def close(self) -> None:
        watches, self._watches = self._watches, []
        for w in watches:
            await w.stop()
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None and not nc.is_closed:
            with contextlib.suppress(Exception):
                await nc.close()

    def _jetstream(self) -> JetStreamContext:
        if self._js is None:
            raise KVUnavailable("not connected to NATS (use `async with KV(...)`)")
        return self._js

    async def bucket(self, name: str, *, create: bool = False, replicas: int = 1,
                     ttl: float | None = None) -> Bucket:
        """Open bucket `name`; with `create`, make it first if it does not exist (history
        1, `replicas` copies, values older than `ttl` seconds dropped; None keeps them).
        An existing bucket is opened with its own settings."""
        js = self._jetstream()
        timeout = self.settings.request_timeout
        if create:
            if replicas < 1:
                raise ConfigError("replicas: at least 1", field="replicas")
            try:
                kv = await _wrapped(f"create bucket {name}", js.create_key_value(
                    bucket=name, history=1, replicas=replicas, ttl=ttl), bucket=name,
                    timeout=timeout)
            except KVRefused as exc:
                code = getattr(exc.__cause__, "err_code", None)
                # 10058: it exists with other settings; 10065: "subjects overlap with an
                # existing stream", the loser of a race with another shard creating it
                if code not in (10058, 10065):
                    raise
                log.info("bucket %s exists (%s); opening it as it is", name,
                         "other settings" if code == 10058 else "made meanwhile by another")
                kv = await _wrapped(f"open bucket {name}", js.key_value(name), bucket=name,
                                    timeout=timeout)
        else:
            kv = await _wrapped(f"open bucket {name}", js.key_value(name), bucket=name,
                                timeout=timeout)
        return Bucket(name, kv, js, timeout=timeout, watches=self._watches)


class Watch:
    """An async iterator of a bucket's changes (see `Bucket.watch`); `stop()` ends it."""

    def __init__(self, bucket: str, prefix: str) -> None:
        self.bucket = bucket
        self._prefix = prefix
        self._queue: asyncio.Queue[Entry | None] = asyncio.Queue()
        self.caught_up = asyncio.Event()
        self._sub: Any = None
        self._stopped = False

    async def _on_msg(self, msg: Msg) -> None:
        meta = msg.metadata
        op = (msg.headers or {}).get(_KV_OP, "")
        created = meta.timestamp.timestamp() if isinstance(meta.timestamp, dt.datetime) \
            else None
        entry = Entry(key=msg.subject[len(self._prefix):], value=msg.data or b"",
                      revision=meta.sequence.stream,
                      operation="delete" if op == "DEL" else "purge" if op == "PURGE"
                      else "put", created=created)
        self._queue.put_nowait(entry)
        if meta.num_pending == 0:
            self.caught_up.set()

    def __aiter__(self) -> AsyncIterator[Entry]:
        return self

    async def __anext__(self) -> Entry:
        if self._stopped and self._queue.empty():
            raise StopAsyncIteration
        item = await self._queue.get()
        if item is None:
            raise StopAsyncIteration
        return item

    @property
    def stopped(self) -> bool:
        return self._stopped

    async def stop(self) -> None:
        """End the iteration (also done for every watch when its KV closes)."""
        if self._stopped:
            return
        self._stopped = True
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        self._queue.put_nowait(None)

    async def __aenter__(self) -> Watch:
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()


class Bucket:
    """One KV bucket. Values are bytes; revisions are ints that only grow."""

    def __init__(self, name: str, kv: KeyValue, js: JetStreamContext, *,
                 timeout: float, watches: list[Watch] | None = None) -> None:
        self.name = name
        self._kv = kv
        self._js = js
        self._timeout = timeout
        self._watches = watches if watches is not None else []

    def _call(self, what: str, call: Awaitable[T], *, key: str = "",
              expected: int | None = None) -> Awaitable[T]:
        return _wrapped(f"{what} {self.name}/{key}" if key else f"{what} {self.name}",
                        call, bucket=self.name, key=key, expected=expected,
                        timeout=self._timeout)

    async def get(self, key: str) -> Entry | None:
        """The key's value, or None when it is absent or deleted."""
        try:
            e = await self._call("get", self._kv.get(key), key=key)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return None
        return Entry(key=key, value=e.value or b"", revision=int(e.revision or 0))

    async def revision_of(self, key: str) -> int:
        """The key's current revision, deletion markers included (0: never written)."""
        try:
            e = await self._call("get", self._kv._get(key), key=key)
        except nats.js.errors.KeyDeletedError as exc:
            return int(exc.entry.revision or 0)
        except nats.js.errors.KeyNotFoundError:
            return 0
        return int(e.revision or 0)

    async def put(self, key: str, value: bytes) -> int:
        """Write unconditionally; returns the new revision."""
        return int(await self._call("put", self._kv.put(key, value), key=key))

    async def create(self, key: str, value: bytes) -> int:
        """Write only if the key is absent or deleted; CASConflict otherwise."""
        return int(await self._call("create", self._kv.create(key, value), key=key,
                                    expected=0))

    async def update(self, key: str, value: bytes, *, revision: int) -> int:
        """Write only if the key is still at `revision` (its last write, a deletion
        marker included); CASConflict otherwise. Returns the new revision."""
        if revision < 1:
            raise ValueError("revision: the key's current revision (>= 1); use create()")
        return int(await self._call("update", self._kv.update(key, value, last=revision),
                                    key=key, expected=revision))

    async def delete(self, key: str, *, revision: int | None = None) -> None:
        """Delete (a marker that watchers see); with `revision`, only if the key is still
        at it (CASConflict otherwise)."""
        await self._call("delete", self._kv.delete(key, last=revision), key=key,
                         expected=revision)

    async def watch(self, keys: str = ">", *, from_revision: int | None = None,
                    deliver: Literal["last", "new"] = "last",
                    idle_heartbeat: float = 2.0) -> Watch:
        """Changes of the keys matching `keys` (a NATS subject filter: `>` all,
        `partition.*`...). `from_revision`: every change from that revision on;
        otherwise `deliver="last"` gives each key's current value first, then changes
        ("new": only changes from now). Deletions arrive as entries with `deleted`.

        `idle_heartbeat`: the server beats this often on a quiet watch, and nats-py
        restarts the watch's consumer after two beats missed. The consumer lives on
        one server (R1, in memory): when that server dies, the watch delivers nothing
        until then, and its reader's view of the bucket is that old (10-15 s at nats-py's
        default of 5 s: a lease member saw no heartbeat of the other for 16 s)."""
        prefix = f"$KV.{self.name}."
        w = Watch(self.name, prefix)
        config = api.ConsumerConfig()
        if from_revision is not None:
            policy = api.DeliverPolicy.BY_START_SEQUENCE
            config.opt_start_seq = max(1, from_revision)
        elif deliver == "new":
            policy = api.DeliverPolicy.NEW
        else:
            policy = api.DeliverPolicy.LAST_PER_SUBJECT
        w._sub = await self._call("watch", self._js.subscribe(
            prefix + keys, stream=f"KV_{self.name}", cb=w._on_msg,
            ordered_consumer=True, deliver_policy=policy, config=config,
            idle_heartbeat=idle_heartbeat, inactive_threshold=300.0))
        try:
            info = await self._call("watch", w._sub.consumer_info())
        except ClusterError:
            await w.stop()
            raise
        if info.num_pending == 0 and (info.delivered is None or
                                      not info.delivered.stream_seq):
            w.caught_up.set()
        self._watches[:] = [x for x in self._watches if not x.stopped]
        self._watches.append(w)
        return w


__all__ = ["KV", "Bucket", "Entry", "KVSettings", "Watch"]
