"""One persistent MQTT session to the broker, reconnected forever.

Why it looks like this:
- clean_session=False with QoS 1 both ways: the broker queues our `down` messages
  while we are away, and our publishes are retried until PUBACK.
- On every (re)connect the link sends the handler's hello (a Resync carrying our
  desired gen and last report seq), then pumps the outbox in seq order. Reports
  are only ever published by this pump, one at a time on one session, so the cloud
  sees them in seq order and a cumulative ReportAck(seq) is correct.
- Every payload is authenticated (`shared.seal`, proposal 0002): one from the cloud
  is unsealed with k_down before anything unpacks it (a bad tag counts in
  `LinkStats.auth_failed`), then decoded under `DOWN_LIMITS`; everything we publish
  is sealed with k_up at the moment it is published (reports wait in the outbox
  unsealed, so a rotated key applies to them). Bad bytes and messages addressed to
  another node are counted, logged at most once a minute, and dropped. Without keys
  (`edgecore run --insecure`) nothing is sealed or checked.
- TLS when configured: the broker's certificate is verified against the fleet CA, a
  client certificate is presented if one is configured; the files are read on every
  (re)connect, so a renewed certificate is used by the next session.
- `beat()` hands the link one UNPERSISTED report (a heartbeat the disk could not
  hold, see `edgecore.sync.reporter`); the pump publishes it after the outbox, so it
  never overtakes a persisted report, and forgets it when the session ends.
- The will (`shared.topics.will`) tells the cloud at once when the session dies
  uncleanly. A clean stop disconnects gracefully (no will): the containers keep
  running, only the agent is restarting.
- Several brokers (proposal 0007; the order is `edgecore.link.brokers`): a connect
  round tries the list in order, home first, the next one right after a failed
  connect (refused, TLS, timeout), and the one backoff between rounds. While the
  session is on any broker but the first of the list (a fallback, or a broker the map
  moved the node away from), a watcher tries the ones ahead of it: every
  `home_retry_s` (jittered) on a fallback, and after a random 0..`move_jitter_s` when
  the list changed (`brokers_changed`). A move is make-before-break: the new session
  is connected and subscribed while the old one still serves; then the old one's
  pump and receiver stop, the hello (a Resync) goes out on the new one, and the old
  one is DISCONNECTed cleanly, so its will is discarded. `connected` stays set
  throughout, so heartbeats never pause and the node never goes NotReady.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiomqtt
import paho.mqtt.client as paho_mqtt

from edgecore.errors import LinkError
from edgecore.link.brokers import BrokerList, Endpoint
from edgecore.ratelimit import RateLimitedLog
from shared import seal, topics
from shared.backoff import Backoff, jittered
from shared.codec import DOWN_LIMITS, Ack, Message, ReportAck, Resync, Will, decode, encode
from shared.errors import AuthFailed, ProtocolError

log = logging.getLogger(__name__)

# Default upper bound for one connect/publish/subscribe round trip before the session
# is considered broken and rebuilt (the agent passes `AgentSettings.op_timeout`).
OP_TIMEOUT_S = 15.0
HOME_RETRY_S = 300.0
"""Seconds between attempts to go back to a better broker while on a fallback."""
HOME_RETRY_JITTER = 0.2
MOVE_JITTER_S = 60.0
"""A move the map asks for waits a random 0..this many seconds (no connect storm)."""
SUBACK_GRACE_S = 2.0
"""Seconds a stop during the subscribe (or the connect) waits for the broker's answer
before closing the session."""


def _resume_cancel() -> None:
    """Re-raise a cancellation an aiomqtt call swallowed.

    aiomqtt waits for a PUBACK/SUBACK with `asyncio.wait_for`, which on Python 3.11
    returns the result instead of raising when the cancel and the answer arrive
    together (gh-86296). The task stays marked as cancelling, so a stop of the agent
    (or of the pump, when a session ends) would be lost and the task run on: seen as
    a hung stop over TLS, where the PUBACK often arrives in the same loop turn.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _count_as_sent(client: aiomqtt.Client, at: float) -> None:
    """Tell paho that a packet went out at `at` (its clock, `time_func`).

    paho-mqtt 2.x never moves its "last packet sent" time when a write empties its queue
    (eclipse-paho/paho.mqtt.python#813, open), so it sends a PINGREQ every keepalive however
    often we publish: at the agent's 600 s keepalive, about 180 bytes every 10 minutes on
    a link that carries a telemetry report every minute (2.4 bit/s of an idle node's 60,
    issue 16). A QoS 1 publish the broker has acked is a packet the broker received and
    answered, so the link is alive both ways: its start counts as the last packet sent.
    A paho without these attributes keeps its pings (nothing else changes)."""
    inner = getattr(client, "_client", None)
    lock = getattr(inner, "_msgtime_mutex", None)
    if lock is None or not isinstance(getattr(inner, "_last_msg_out", None), float):
        return
    with lock:
        inner._last_msg_out = max(inner._last_msg_out, at)


def _retrieve(done: asyncio.Future[Any]) -> None:
    """Mark a background future's outcome as seen: its caller may have stopped waiting,
    and the failure is handled there (or moot); asyncio would log it as never retrieved."""
    if not done.cancelled():
        done.exception()


class LinkHandler(Protocol):
    """What the link needs from the rest of the agent."""

    def hello(self) -> Resync:
        """The message to send first on every (re)connect."""
        ...

    def pending(self, after: int) -> list[tuple[int, bytes]]:
        """Encoded reports with seq > `after`, in seq order (the outbox)."""
        ...

    async def handle(self, msg: Message) -> Sequence[Ack | Resync]:
        """Process one valid message for this node; returns replies to publish."""
        ...


@dataclass
class LinkStats:
    connects: int = 0
    connect_failures: int = 0
    received: int = 0
    malformed: int = 0  # ProtocolError: garbled, oversized, unknown version
    auth_failed: int = 0  # tag did not verify: forged, altered or for another key
    foreign: int = 0  # node field is not ours
    published: int = 0
    reports_sent: int = 0
    beats_sent: int = 0  # unpersisted heartbeats (`Link.beat`)
    moves: int = 0  # sessions moved make-before-break to a better broker
    move_failures: int = 0  # attempts to move that found no better broker answering


@dataclass(frozen=True)
class TlsFiles:
    """What the TLS session to the broker is built from (read on every connect)."""

    ca_file: Path | None = None  # None: the system's CAs
    client_cert: Path | None = None
    client_key: Path | None = None

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        if self.client_cert is not None:
            ctx.load_cert_chain(str(self.client_cert), str(self.client_key or self.client_cert))
        return ctx


@dataclass
class _Session:
    """One connected, subscribed client and the broker it is on."""

    client: aiomqtt.Client
    endpoint: Endpoint


class Link:
    """`await link.run()` until cancelled; `kick()` after appending to the outbox."""

    def __init__(
        self, *, node: str, host: str, port: int, handler: LinkHandler, keepalive_s: int = 30,
        backoff: Backoff | None = None, username: str | None = None,
        password: str | None = None, op_timeout_s: float = OP_TIMEOUT_S,
        on_up: Callable[[], None] | None = None, keys: seal.NodeKeys | None = None,
        tls: TlsFiles | None = None, kick: asyncio.Event | None = None,
        mqtts: TlsFiles | None = None,
        brokers: Callable[[], BrokerList] | None = None,
        brokers_changed: asyncio.Event | None = None,
        home_retry_s: float = HOME_RETRY_S, move_jitter_s: float = MOVE_JITTER_S,
        rng: random.Random | None = None,
    ) -> None:
        """`kick` is the event that wakes the outbox pump (`kick()` sets it): the agent
        shares it with the parts built before the link that queue something to send
        (the request handler). None: its own.

        `brokers` gives the broker list in force each time it is called (the agent's
        reads the desired set, `BrokerList.effective`); None: `host:port` alone, over
        TLS when `tls` is given. `brokers_changed` is set when the list may have changed
        (a desired set was applied); the link clears it. `mqtts://` brokers use `tls`
        (or the system's CAs when None); a plain `mqtt://` broker is refused when `tls`
        is given, so a TLS agent never sends its password in clear. `mqtts` is what a
        plain agent (no `tls`) uses for the `mqtts://` brokers of a mixed list (the fleet
        CA it joined with); None: the system's CAs."""
        self.node = node
        self.keys = keys
        """k_down/k_up of this node; None: nothing is sealed or checked (insecure)."""
        self.tls = tls
        self._mqtts = mqtts
        self._username = username
        self._password = password
        single = BrokerList.single(host, port, tls=tls is not None)
        source = brokers or (lambda: single)
        self._skipped: tuple[str, ...] = ()
        self._brokers = source if tls is None else (lambda: self._tls_only(source()))
        self._changed = brokers_changed if brokers_changed is not None else asyncio.Event()
        self.home_retry_s = home_retry_s
        self.move_jitter_s = move_jitter_s
        self._rng = rng or random.Random()
        self.endpoint: Endpoint | None = None
        """The broker of the current session (None while disconnected)."""
        self.keepalive_s = keepalive_s
        self.op_timeout_s = op_timeout_s
        self.on_up = on_up
        """Called once per session after the hello is published (the agent beats then)."""
        self.report_acked = 0
        """Highest ReportAck seq received (the cloud durably processed every seq <= it)."""
        self._beat: bytes | None = None
        self.handler = handler
        self.backoff = backoff or Backoff()
        self.stats = LinkStats()
        self._kick = kick if kick is not None else asyncio.Event()
        self._restart = asyncio.Event()
        self._connected = asyncio.Event()
        self._rlog = RateLimitedLog(log)
        self._late: set[asyncio.Future[None]] = set()  # closes of connects that settled late
        self._stopping = asyncio.Event()  # run() is ending: connects cut short close fast
        self._handling = asyncio.Lock()  # held while a received message is handled
        self._down = topics.down(node)
        self._up = topics.up(node)

    def _tls_only(self, brokers: BrokerList) -> BrokerList:
        """A TLS agent's view of a mixed list (a map with plain and TLS brokers): the
        plain entries dropped, with a warning each time the dropped set changes. An
        all-plain list is kept, and refused with a clear error at each connect."""
        keep = tuple(e for e in brokers.endpoints if e.tls)
        if not keep or len(keep) == len(brokers.endpoints):
            return brokers
        skipped = tuple(e.url for e in brokers.endpoints if not e.tls)
        if skipped != self._skipped:
            self._skipped = skipped
            log.warning("mqtt link: skipping %s: plain MQTT, and this agent uses TLS",
                        ", ".join(skipped))
        return BrokerList(endpoints=keep, version=brokers.version)

    @property
    def host(self) -> str:
        """Host of the current broker, or of the home broker while disconnected."""
        return (self.endpoint or self._brokers().home).host

    @property
    def port(self) -> int:
        return (self.endpoint or self._brokers().home).port

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self) -> None:
        await self._connected.wait()

    def kick(self) -> None:
        """Wake the outbox pump: something new is waiting to be sent."""
        self._kick.set()

    def reconnect(self) -> None:
        """End the session and connect again (e.g. with a renewed client certificate)."""
        self._restart.set()

    def beat(self, payload: bytes) -> None:
        """Publish one encoded, unpersisted report after the outbox, if connected.

        One slot: a newer beat replaces an unsent one; dropped when the session ends.
        """
        if self.connected:
            self._beat = payload
            self._kick.set()

    async def run(self) -> None:
        """Keep a session up until cancelled, backing off between failed rounds.

        On the way out, a connect that the stop cut short is waited for and closed
        (`_settle`): left to `asyncio.run`'s shutdown, its socket could open after the
        loop's tasks were cancelled, and be closed by the garbage collector on a closed
        loop (a traceback at exit, and our will published by the broker)."""
        self._stopping.clear()
        try:
            await self._sessions()
        finally:
            await self._settle()

    async def _settle(self) -> None:
        """Wait (bounded) for the connects cut short to settle and be closed."""
        self._stopping.set()
        if self._late:
            # a CONNACK grace, paho's 5 s TCP connect, a disconnect: a few seconds at most
            await asyncio.wait(set(self._late), timeout=self.op_timeout_s + 5.0)

    async def _sessions(self) -> None:
        while True:
            session = await self._connect_round()
            retiring: _Session | None = None
            try:
                while True:  # one session after another as long as each move succeeds
                    moved = await self._serve(session, retiring=retiring)
                    retiring, session = session, moved
            except LinkError as exc:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    # The session broke while we were being cancelled (e.g. the graceful
                    # disconnect timed out): the stop request wins over a reconnect.
                    raise asyncio.CancelledError from exc
                self.stats.connect_failures += 1
                delay = self.backoff.next()
                log.warning("mqtt link to %s down (%s); retrying in %.1f s",
                            session.endpoint, exc, delay)
                await asyncio.sleep(delay)
            finally:
                self._connected.clear()
                self._beat = None
                self.endpoint = None

    async def _connect_round(self) -> _Session:
        """Connect to the first broker of the list that answers; between rounds in which
        none did, wait the backoff."""
        while True:
            brokers = self._brokers()
            errors: list[str] = []
            for endpoint in brokers.order():
                self._restart.clear()  # this session reads the certificate files afresh
                try:
                    return await self._open(endpoint)
                except LinkError as exc:
                    task = asyncio.current_task()
                    if task is not None and task.cancelling():
                        raise asyncio.CancelledError from exc
                    self.stats.connect_failures += 1
                    errors.append(f"{endpoint}: {exc}")
                    if len(brokers.endpoints) > 1:
                        log.warning("mqtt link: cannot connect to %s (%s)", endpoint, exc)
            delay = self.backoff.next()
            log.warning("mqtt link down: no broker answered (%s); retrying in %.1f s",
                        "; ".join(errors), delay)
            await asyncio.sleep(delay)

    def _seal(self, topic: str, payload: bytes) -> bytes:
        return payload if self.keys is None else seal.seal(self.keys.up, topic, payload)

    async def _open(self, endpoint: Endpoint) -> _Session:
        """A client connected to `endpoint` and subscribed to our down topic; LinkError
        (nothing left open) if that fails."""
        if not endpoint.tls and self.tls is not None:
            raise LinkError(f"refusing plain {endpoint}: this agent talks to brokers over "
                            "TLS only (its password would cross the network in clear)")
        will_topic = topics.will(self.node)
        will = aiomqtt.Will(will_topic, self._seal(will_topic, encode(Will(node=self.node))),
                            qos=1)
        try:
            tls_context = (None if not endpoint.tls
                           else (self.tls or self._mqtts or TlsFiles()).context())
        except (OSError, ssl.SSLError) as exc:
            raise LinkError(f"TLS setup failed: {exc}") from exc
        client = aiomqtt.Client(
            endpoint.host, endpoint.port, identifier=self.node, clean_session=False,
            keepalive=self.keepalive_s, will=will, timeout=self.op_timeout_s,
            username=self._username, password=self._password, tls_context=tls_context,
        )
        session = _Session(client, endpoint)
        # Shielded: a connect cancelled half-way (the agent stops, or the session a move
        # was made for ends) would leave a live session behind on that broker, holding
        # our identity and our will; it is closed as soon as the connect settles.
        entering = asyncio.ensure_future(client.__aenter__())
        try:
            await asyncio.shield(entering)
        except aiomqtt.MqttError as exc:
            raise LinkError(str(exc) or type(exc).__name__) from exc
        except asyncio.CancelledError:
            late = asyncio.ensure_future(self._drop_late(entering, session))
            self._late.add(late)
            late.add_done_callback(self._late.discard)
            raise
        # Shielded too: aiomqtt forgets a cancelled subscribe at once, and logs the SUBACK
        # that still arrives (before our DISCONNECT is answered) as an error with a
        # traceback. A stop during the subscribe lets the answer arrive first.
        subscribing = asyncio.ensure_future(client.subscribe(self._down, qos=1))
        subscribing.add_done_callback(_retrieve)
        try:
            await asyncio.shield(subscribing)
            _resume_cancel()
        except BaseException as exc:
            if not subscribing.done():
                await asyncio.wait({subscribing}, timeout=min(self.op_timeout_s, SUBACK_GRACE_S))
                subscribing.cancel()
            await self._close(session)
            if isinstance(exc, aiomqtt.MqttError):
                raise LinkError(str(exc) or type(exc).__name__) from exc
            raise
        return session

    async def _drop_late(self, entering: asyncio.Future[Any], session: _Session) -> None:
        """Close a connect whose caller was cancelled, once it has settled: with a clean
        DISCONNECT if it succeeded; a failed one may still hold its socket (a CONNACK
        that never came), closed the same way.

        Once the agent stops, a CONNACK is waited for `SUBACK_GRACE_S` only; then the
        socket is closed as soon as paho's TCP connect (its own 5 s limit, in a worker
        thread) has made one, so a hung broker does not hold the stop for op_timeout_s."""
        inner = getattr(session.client, "_client", None)
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({entering, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if not entering.done():
            await asyncio.wait({entering}, timeout=SUBACK_GRACE_S)
        if not entering.done() and inner is not None:
            while not entering.done() and inner.socket() is None:
                await asyncio.sleep(0.05)
            if not entering.done():
                inner.disconnect()  # queues DISCONNECT (no will); once written, closes
                for _ in range(20):
                    if inner.socket() is None:
                        break
                    await asyncio.sleep(0.05)
                # only now: aiomqtt's callbacks read the CONNACK future a cancel cancels
                entering.cancel()
        await asyncio.wait({entering})
        _retrieve(entering)
        if entering.cancelled() or (entering.exception() is not None
                                    and (inner is None or inner.socket() is None)):
            return
        await self._close(session)

    async def _close(self, session: _Session) -> None:
        """Disconnect cleanly (the broker discards the will); never raises an MQTT error."""
        try:
            await session.client.__aexit__(None, None, None)
        except aiomqtt.MqttError as exc:
            log.debug("mqtt link: disconnect from %s: %s", session.endpoint, exc)

    async def _serve(self, session: _Session, *, retiring: _Session | None) -> _Session:
        """Serve one session: the hello, then the outbox pump and the receiver, until the
        session breaks (LinkError, after closing it) or a move found a better broker
        (returns its session, already subscribed; this one is then the caller's
        `retiring`, closed cleanly by the next call once the hello went out there).

        Plain tasks rather than a TaskGroup: on Python 3.11 a TaskGroup whose child
        fails leaves a cancel request on the parent task, which would make a later
        stop request indistinguishable from a broken session.
        """
        moved: _Session | None = None
        try:
            self.stats.connects += 1
            self.backoff.reset()
            self._connected.set()  # already set during a move: it never drops
            if retiring is None:
                self.endpoint = session.endpoint
            try:
                await self._publish(session.client, self.handler.hello())
            finally:
                self.endpoint = session.endpoint
                if retiring is not None:
                    await self._close(retiring)  # clean DISCONNECT: no will
                    log.info("mqtt link moved: %s -> %s", retiring.endpoint, session.endpoint)
            log.info("mqtt link up: %s as %s", session.endpoint, self.node)
            if self.on_up is not None:
                self.on_up()
            name = f"edgecore[{self.node}].link"
            pump = asyncio.create_task(self._pump(session.client), name=f"{name}.pump")
            recv = asyncio.create_task(self._receive(session.client), name=f"{name}.recv")
            restart = asyncio.create_task(self._restart.wait(), name=f"{name}.restart")
            mover = asyncio.create_task(self._better_broker(session.endpoint),
                                        name=f"{name}.move")
            tasks: tuple[asyncio.Task[Any], ...] = (pump, recv, restart, mover)
            done: set[asyncio.Task[Any]] = set()  # stays empty if we are cancelled
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in tasks:
                    t.cancel()
                results = await asyncio.gather(*tasks, return_exceptions=True)
                late = results[3]
                if isinstance(late, _Session):
                    self._handling.release()  # the mover took it; the receiver is stopped
                    if mover not in done:
                        await self._close(late)  # found just as the session ended
            if mover in done and not mover.cancelled() and mover.exception() is None:
                moved = mover.result()
                self.stats.moves += 1
                return moved
            if restart in done:
                self.backoff.reset()
                raise LinkError("reconnecting as asked (new client certificate)")
            for t in done:
                t.result()  # re-raises the MqttError (or a bug) that ended the session
            raise LinkError("session ended")
        except aiomqtt.MqttError as exc:
            raise LinkError(str(exc) or type(exc).__name__) from exc
        finally:
            if moved is None:
                await self._close(session)

    async def _better_broker(self, current: Endpoint) -> _Session:
        """Wait until a broker ahead of `current` in the list takes a session; return it.

        On a fallback: a try every `home_retry_s` (jittered). When the list changes: a try
        after a random 0..`move_jitter_s`, so that a partition's nodes do not all
        reconnect in the same second. Brokers ahead are tried in list order."""
        moving = False  # the last look was caused by a change of the list
        while True:
            brokers = self._brokers()
            ahead = brokers.ahead_of(current)
            if not ahead:
                await self._changed.wait()
                self._changed.clear()
                moving = True
                continue
            delay = (self._rng.uniform(0.0, self.move_jitter_s) if moving
                     else jittered(self.home_retry_s, HOME_RETRY_JITTER, self._rng))
            if moving:
                log.info("broker list v%d puts %s first; moving there in %.1f s",
                         brokers.version, brokers.home, delay)
            if await self._list_changed(brokers, delay):
                moving = True
                continue  # a newer list: look again, with a fresh delay
            moving = False
            for endpoint in ahead:
                try:
                    session = await self._open(endpoint)
                except LinkError as exc:
                    log.info("mqtt link: staying on %s, %s did not answer: %s",
                             current, endpoint, exc)
                    continue
                try:  # the caller releases it once the old session's tasks are stopped
                    await self._handling.acquire()
                except BaseException:
                    await self._close(session)
                    raise
                return session
            self.stats.move_failures += 1

    async def _list_changed(self, brokers: BrokerList, delay: float) -> bool:
        """Sleep `delay` s; True as soon as the broker list differs from `brokers`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + delay
        while (left := deadline - loop.time()) > 0:
            try:
                async with asyncio.timeout(left):
                    await self._changed.wait()
            except TimeoutError:
                return False
            self._changed.clear()
            if self._brokers() != brokers:
                return True
        return False

    async def _publish(self, client: aiomqtt.Client, msg: Ack | Resync) -> None:
        await self._send(client, encode(msg))

    async def _send(self, client: aiomqtt.Client, payload: bytes) -> None:
        """One QoS 1 publish up, sealed; returns once the broker acked it."""
        started = paho_mqtt.time_func()
        await client.publish(self._up, self._seal(self._up, payload), qos=1)
        _resume_cancel()
        _count_as_sent(client, started)
        self.stats.published += 1

    async def _pump(self, client: aiomqtt.Client) -> None:
        """Send the outbox in seq order; everything unacked is resent on each new session."""
        sent = 0
        while True:
            self._kick.clear()
            for seq, payload in await asyncio.to_thread(self.handler.pending, sent):
                await self._send(client, payload)
                self.stats.reports_sent += 1
                sent = seq
            beat, self._beat = self._beat, None
            if beat is not None:
                await self._send(client, beat)
                self.stats.beats_sent += 1
            await self._kick.wait()

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            # A move waits for this lock, so the message in hand is handled and its
            # replies (the Ack of the very entry that moves us) go out on this session.
            async with self._handling:
                await self._take(client, message)

    async def _take(self, client: aiomqtt.Client, message: aiomqtt.Message) -> None:
        """Check, decode and hand one message to the handler; publish its replies."""
        self.stats.received += 1
        payload = message.payload
        if not isinstance(payload, bytes | bytearray):
            payload = b"" if payload is None else str(payload).encode()
        data = bytes(payload)
        topic = message.topic.value
        if self.keys is not None:
            if len(data) > DOWN_LIMITS.max_message_bytes + seal.TAG_BYTES:
                self.stats.malformed += 1
                self._rlog.warning("malformed", "dropped a message of %d bytes on %s: "
                                   "over the limit", len(data), topic)
                return
            try:
                data = seal.unseal(self.keys.down, topic, data)
            except AuthFailed as exc:
                self.stats.auth_failed += 1
                self._rlog.warning("auth", "dropped a message on %s: %s", topic, exc)
                return
        try:
            msg = decode(data, limits=DOWN_LIMITS)
        except ProtocolError as exc:
            self.stats.malformed += 1
            self._rlog.warning("malformed", "dropped a malformed message on %s: %s",
                               message.topic.value, exc)
            return
        if msg.node != self.node:
            self.stats.foreign += 1
            self._rlog.warning("foreign", "dropped a message for node %r on %s",
                               msg.node, message.topic.value)
            return
        if isinstance(msg, ReportAck):
            self.report_acked = max(self.report_acked, msg.seq)
        for reply in await self.handler.handle(msg):
            await self._publish(client, reply)
