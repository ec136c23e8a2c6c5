"""MQTT connections of the hub: one subscriber, N publishers.

Each connection is one service identity of proposal 0002: it logs in as
`<user>_sub` or `<user>_pub<i>`, and that is its client id too (the broker runs with
use_username_as_clientid, so nobody else can take the id over). The subscriber's id
is fixed and it uses clean_session false, so the broker keeps its subscriptions and
queues QoS 1 reports while cloudcore is down; they arrive on the next start. With
`tls`, every connection verifies the broker against the fleet CA (or `--mqtt-ca-file`)
and may present a client certificate of its own identity.

The subscriber and the publishers speak MQTT through `wire.py`, a small client of
their own on an asyncio protocol (issue 13: aiomqtt's task, event and timer per
message were most of cloudcore's CPU per node-update); `SessionCloser`, which makes
one short connection per revoked node, uses aiomqtt (the only aiomqtt user).
Publishers only send: at most `publish_concurrency` messages await their PUBACK per
connection. Both reconnect forever with the shared jittered backoff, capped at
`REFUSED_CAP` while the broker refuses connections (issue 14: a broker restarting
after a crash; a longer wait let the first edges' resyncs go to no subscriber).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import ssl
from collections import deque
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import aiomqtt

from cloudcore.config import MqttSettings
from cloudcore.errors import BrokerUnavailable
from cloudcore.synchub import wire
from shared import topics
from shared.backoff import Backoff

log = logging.getLogger("cloudcore.synchub.mqtt")

Handler = Callable[[str, bytes], None]


SHUTDOWN_GRACE = 2.0
"""Seconds a cancelled session may take to disconnect. aiomqtt's __aexit__ waits
without a timeout for the broker's disconnect callback, which a session cancelled
mid-connect may never get; a stop must not hang on it."""


async def _bounded(coro: Coroutine[Any, Any, None], name: str) -> None:
    """Run `coro` in its own task; when cancelled, give it SHUTDOWN_GRACE to finish."""
    inner = asyncio.create_task(coro, name=name)
    try:
        await asyncio.shield(inner)
    except asyncio.CancelledError:
        inner.cancel()
        done, _ = await asyncio.wait({inner}, timeout=SHUTDOWN_GRACE)
        if not done:
            log.warning("%s did not disconnect within %.0fs; abandoning it", name,
                        SHUTDOWN_GRACE)
        raise


def client_tls(ca_file: Path, *, cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    """A TLS context that verifies the broker against `ca_file` (host name included)
    and presents `cert` = (certificate, key) files if given."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    return ctx


REFUSED_CAP = 1.0
"""Longest reconnect delay in seconds while the broker refuses connections (it is
down or restarting, so it will be back soon and the edges reconnect at once)."""


def _refused(exc: BaseException | None) -> bool:
    """Whether `exc` is the broker's host refusing the TCP connection (for a host name
    of several addresses asyncio raises one OSError naming every refusal)."""
    if isinstance(exc, ConnectionRefusedError):
        return True
    return (type(exc) is OSError and exc.errno is None
            and str(exc).startswith("Multiple exceptions:")
            and str(exc).count("Errno") == str(exc).count(f"[Errno {errno.ECONNREFUSED}]"))


class _Reconnect:
    """The reconnect delays of one connection: the configured backoff, capped at
    `REFUSED_CAP` after a refused connection, reset by a session that connected."""

    def __init__(self, settings: MqttSettings) -> None:
        self._backoff = Backoff(base=settings.reconnect_base, cap=settings.reconnect_cap)
        self._refused = Backoff(base=settings.reconnect_base,
                                cap=max(settings.reconnect_base,
                                        min(REFUSED_CAP, settings.reconnect_cap)))
        self.attempt = 0

    def delay(self, exc: BaseException) -> float:
        """The wait before the next attempt after `exc` ended this one."""
        refused = _refused(exc.__cause__)
        delay = (self._refused if refused else self._backoff).delay(self.attempt)
        self.attempt += 1
        return delay


class Subscriber:
    """Receives every partition's `up` and `will` messages and hands them to `handler`.

    Over `wire.Connection` (issue 13): the handler runs in the event loop as the
    packets are parsed, and the PUBACK of a QoS 1 message goes after it returned."""

    def __init__(self, settings: MqttSettings, *, handler: Handler,
                 on_connected: Callable[[bool], None] | None = None,
                 on_back: Callable[[float, bool, bool], None] | None = None,
                 tls: ssl.SSLContext | None = None,
                 filters: Callable[[], list[str]] | None = None) -> None:
        """With `filters` (a shard, proposal 0008) the subscriber subscribes only what
        `filters()` names at each connect, with a clean session (a partition that moved
        away while it was down must not stay subscribed in the broker), and `add` /
        `remove` change the subscriptions of the live connection; without, every
        partition's filters with a kept session (the embedded mode).

        `on_back(deaf_s, lost, restarted)` is called when the subscriber is subscribed
        again after a connection it had was lost: `deaf_s` seconds since that loss, `lost`
        whether what the edges published meanwhile is gone (the broker did not keep our
        session, or it is a clean one) rather than queued for us, `restarted` whether the
        broker is known to have restarted (it lost the session it kept for us, so the
        edges' sessions are gone too). Not on the first connect."""
        self._settings = settings
        self._handler = handler
        self._on_connected = on_connected or (lambda _up: None)
        self._on_back = on_back or (lambda _deaf, _lost, _restarted: None)
        self._down_at: float | None = None  # loop time the last connection was lost
        self._tls = tls
        self._filters = filters
        self._conn: wire.Connection | None = None
        self._live: wire.Connection | None = None  # the subscribed connection, if any
        self._last_heard: float | None = None  # last_rx of the last subscribed connection
        self.identity = settings.identity("sub")
        self._connected_before = False
        self.sessions_lost = 0
        """Reconnects on which the broker had not kept our session (embedded mode)."""

    def heard_at(self) -> float | None:
        """Loop time of the last packet from the broker (a message, a ping's answer) to
        this subscriber, on the subscribed connection or the last one; None if it never
        subscribed. It pings every keepalive / 2: a broker that answers nothing for
        longer is stalled, or the connection is down."""
        live = self._live
        return self._last_heard if live is None else live.last_rx

    def _stall_ended(self, silence_s: float) -> None:
        """The broker answered again after `silence_s` of silence on a live connection:
        as deaf as a reconnect, but our session and what was queued for us are kept."""
        log.warning("subscriber: broker %s:%d said nothing for %.0f s (stalled); heard "
                    "again", self._settings.host, self._settings.port, silence_s)
        self._on_back(silence_s, False, False)

    async def add(self, filters: list[str]) -> None:
        """Subscribe `filters` now if connected (else at the next connect, through
        `filters()`). A refusal or a lost answer ends the connection, and the reconnect
        subscribes the whole current set."""
        conn = self._conn
        if conn is None or not filters:
            return
        try:
            await conn.subscribe(filters)
        except wire.ConnectionLost as exc:
            log.warning("subscriber: subscribing %d filter(s): %s; reconnecting",
                        len(filters), exc)
            conn.abort()

    async def remove(self, filters: list[str]) -> None:
        """Unsubscribe `filters` and wait for the broker's answer (bounded); when it does
        not come the connection is dropped, which ends every subscription of the clean
        session."""
        conn = self._conn
        if conn is None or not filters:
            return
        try:
            await conn.unsubscribe(filters)
        except wire.ConnectionLost as exc:
            log.warning("subscriber: unsubscribing %d filter(s): %s; dropping the "
                        "connection", len(filters), exc)
            conn.abort()

    async def run(self) -> None:
        """Work until cancelled; reconnects on broker errors."""
        reconnect = _Reconnect(self._settings)
        while True:
            try:
                await _bounded(self._session(), "subscriber.session")
            except BrokerUnavailable as exc:
                self._on_connected(False)
                delay = reconnect.delay(exc)
                log.warning("subscriber: %s; reconnecting in %.1fs", exc, delay)
                await asyncio.sleep(delay)
            else:
                reconnect.attempt = 0

    async def _session(self) -> None:
        s = self._settings
        conn: wire.Connection | None = None
        try:
            conn, present = await wire.connect(
                s.host, s.port, client_id=self.identity, username=self.identity,
                password=s.password, clean_session=self._filters is not None,
                keepalive=s.keepalive, tls=self._tls, on_message=self._handler)
            if self._filters is None and self._connected_before and not present:
                # The broker restarted without our session: what the edges published
                # before this subscribe went to nobody (their unacked reports come
                # again; a reconnected agent's Resync does not).
                self.sessions_lost += 1
                log.warning("subscriber: broker %s:%d had lost our session; messages "
                            "published to it before now were not queued for us",
                            s.host, s.port)
            self._connected_before = True
            if self._filters is None:
                await conn.subscribe(topics.all_up_filters())
            else:
                self._conn = conn  # add/remove from here on; then what is owned now
                wanted = self._filters()
                if wanted:
                    await conn.subscribe(wanted)
            log.info("subscriber connected to %s:%d", s.host, s.port)
            self._on_connected(True)
            loop = asyncio.get_running_loop()
            self._live = conn
            conn.silence_s = float(s.keepalive)
            conn.on_heard_again = self._stall_ended
            if self._down_at is not None:
                deaf, self._down_at = loop.time() - self._down_at, None
                kept = self._filters is None
                self._on_back(deaf, not kept or not present, kept and not present)
            try:
                await conn.keepalive(s.keepalive)
            finally:
                # deaf since the broker last said anything: a stalled broker (no answer
                # to our pings before the connection is dropped) counts as well
                self._down_at = self._last_heard = min(loop.time(), conn.last_rx)
        except (wire.ConnectionLost, OSError) as exc:  # OSError: ssl.SSLError, refused
            raise BrokerUnavailable(f"broker {s.host}:{s.port}: {exc}",
                                    delay=s.reconnect_base) from exc
        finally:
            self._conn = self._live = None
            if conn is not None:
                conn.close()


class Publisher:
    """Sends queued (topic, payload) pairs with QoS 1 over its own connection.

    At most `publish_concurrency` publishes await their PUBACK at once; a PUBACK lets
    the next queued message go. What was in flight when the connection ended is sent
    again, first, on the next one (issue 13: over `wire.Connection`, without a task
    or a future per message)."""

    def __init__(self, settings: MqttSettings, *, index: int,
                 on_sent: Callable[[], None] | None = None,
                 tls: ssl.SSLContext | None = None) -> None:
        self._settings = settings
        self._index = index
        self._tls = tls
        self.identity = settings.identity(f"pub{index}")
        self._queue: deque[tuple[str, bytes]] = deque()
        self._inflight: dict[int, tuple[str, bytes]] = {}
        self._mid = 0
        self._conn: wire.Connection | None = None
        self._on_sent = on_sent or (lambda: None)
        self.connected = False

    def enqueue(self, topic: str, payload: bytes) -> None:
        self._queue.append((topic, payload))
        if self._conn is not None:
            self._pump()

    @property
    def backlog(self) -> int:
        """Messages queued and not yet handed to the broker."""
        return len(self._queue)

    def drop_partitions(self, partitions: set[int]) -> int:
        """Take the queued messages to nodes of these partitions out of the queue (not
        those in flight: they are the broker's already); returns how many."""
        def keep(topic_name: str) -> bool:
            parsed = topics.parse(topic_name)
            return parsed is None or topics.partition_of(parsed[0]) not in partitions

        before = len(self._queue)
        self._queue = deque(m for m in self._queue if keep(m[0]))
        return before - len(self._queue)

    async def run(self) -> None:
        reconnect = _Reconnect(self._settings)
        while True:
            try:
                await _bounded(self._session(), f"publisher[{self._index}].session")
            except BrokerUnavailable as exc:
                self.connected = False
                delay = reconnect.delay(exc)
                log.warning("publisher %d: %s; reconnecting in %.1fs", self._index, exc, delay)
                await asyncio.sleep(delay)
            else:
                reconnect.attempt = 0

    def _pump(self) -> None:
        conn, window = self._conn, self._settings.publish_concurrency
        if conn is None:
            return
        queue, inflight = self._queue, self._inflight
        while queue and len(inflight) < window:
            mid = self._mid
            while True:
                mid = mid % 65535 + 1
                if mid not in inflight:
                    break
            self._mid = mid
            topic, payload = inflight[mid] = queue.popleft()
            conn.publish(topic, payload, mid)

    def _puback(self, mid: int) -> None:
        if self._inflight.pop(mid, None) is not None:
            self._on_sent()
            self._pump()

    async def _session(self) -> None:
        s = self._settings
        conn: wire.Connection | None = None
        try:
            conn, _ = await wire.connect(
                s.host, s.port, client_id=self.identity, username=self.identity,
                password=s.password, clean_session=True, keepalive=s.keepalive,
                tls=self._tls, on_puback=self._puback)
            self._conn = conn
            self.connected = True
            self._pump()
            await conn.keepalive(s.keepalive)
        except (wire.ConnectionLost, OSError) as exc:
            raise BrokerUnavailable(f"broker {s.host}:{s.port}: {exc}",
                                    delay=s.reconnect_base) from exc
        finally:
            self._conn = None
            self.connected = False
            if self._inflight:  # not acknowledged: first on the next connection
                self._queue.extendleft(reversed(list(self._inflight.values())))
                self._inflight.clear()
            if conn is not None:
                conn.close()


class SessionCloser:
    """Closes the broker session of a node revoked under `--node-certs`.

    There the broker takes a node's identity from its certificate, so a reload after
    the CRL changed refuses the certificate from then on but keeps a session already
    open. This takes the node's client id over once, with a short-lived certificate of
    the node's name that `tls_for(node)` makes: the broker drops the old session, this
    one disconnects at once, and the agent's reconnect is refused by the CRL. It waits
    `delay` seconds first, so the broker has reloaded the CRL by then."""

    def __init__(self, host: str, port: int, *, tls_for: Callable[[str], ssl.SSLContext],
                 delay: float = 2.0) -> None:
        self._host = host
        self._port = port
        self._tls_for = tls_for
        self._delay = delay
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self.closed = 0
        """Sessions taken over so far."""

    def close(self, node: str) -> None:
        """Close `node`'s session soon (callable from the event loop thread)."""
        self._queue.put_nowait(node)

    async def run(self) -> None:
        """Work until cancelled; a failure is logged, not retried (the node's key is
        refused by the hub whatever happens here)."""
        while True:
            node = await self._queue.get()
            await asyncio.sleep(self._delay)
            try:
                async with aiomqtt.Client(self._host, self._port, identifier=node,
                                          clean_session=True, timeout=5,
                                          tls_context=self._tls_for(node)):
                    pass
                self.closed += 1
                log.info("closed the broker session of revoked node %s", node)
            except (aiomqtt.MqttError, OSError, ValueError) as exc:
                log.warning("could not close the broker session of revoked node %s: %s",
                            node, exc)
