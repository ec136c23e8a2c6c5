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
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import aiomqtt

from edgecore.errors import LinkError
from edgecore.ratelimit import RateLimitedLog
from shared import seal, topics
from shared.backoff import Backoff
from shared.codec import DOWN_LIMITS, Ack, Message, ReportAck, Resync, Will, decode, encode
from shared.errors import AuthFailed, ProtocolError

log = logging.getLogger(__name__)

# Default upper bound for one connect/publish/subscribe round trip before the session
# is considered broken and rebuilt (the agent passes `AgentSettings.op_timeout`).
OP_TIMEOUT_S = 15.0


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


class Link:
    """`await link.run()` until cancelled; `kick()` after appending to the outbox."""

    def __init__(
        self, *, node: str, host: str, port: int, handler: LinkHandler, keepalive_s: int = 30,
        backoff: Backoff | None = None, username: str | None = None,
        password: str | None = None, op_timeout_s: float = OP_TIMEOUT_S,
        on_up: Callable[[], None] | None = None, keys: seal.NodeKeys | None = None,
        tls: TlsFiles | None = None, kick: asyncio.Event | None = None,
    ) -> None:
        """`kick` is the event that wakes the outbox pump (`kick()` sets it): the agent
        shares it with the parts built before the link that queue something to send
        (the request handler). None: its own."""
        self.node = node
        self.keys = keys
        """k_down/k_up of this node; None: nothing is sealed or checked (insecure)."""
        self.tls = tls
        self._username = username
        self._password = password
        self.host = host
        self.port = port
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
        self._down = topics.down(node)
        self._up = topics.up(node)

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
        """Keep a session up until cancelled, backing off between failed attempts."""
        while True:
            try:
                await self._session()
            except LinkError as exc:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    # The session broke while we were being cancelled (e.g. the graceful
                    # disconnect timed out): the stop request wins over a reconnect.
                    raise asyncio.CancelledError from exc
                self.stats.connect_failures += 1
                delay = self.backoff.next()
                log.warning("mqtt link to %s:%d down (%s); retrying in %.1f s",
                            self.host, self.port, exc, delay)
                await asyncio.sleep(delay)
            finally:
                self._connected.clear()
                self._beat = None

    def _seal(self, topic: str, payload: bytes) -> bytes:
        return payload if self.keys is None else seal.seal(self.keys.up, topic, payload)

    async def _session(self) -> None:
        self._restart.clear()  # this session reads the certificate files afresh
        will_topic = topics.will(self.node)
        will = aiomqtt.Will(will_topic, self._seal(will_topic, encode(Will(node=self.node))),
                            qos=1)
        try:
            tls_context = self.tls.context() if self.tls is not None else None
        except (OSError, ssl.SSLError) as exc:
            raise LinkError(f"TLS setup failed: {exc}") from exc
        client = aiomqtt.Client(
            self.host, self.port, identifier=self.node, clean_session=False,
            keepalive=self.keepalive_s, will=will, timeout=self.op_timeout_s,
            username=self._username, password=self._password, tls_context=tls_context,
        )
        try:
            async with client:
                await client.subscribe(self._down, qos=1)
                _resume_cancel()
                self.stats.connects += 1
                self.backoff.reset()
                self._connected.set()
                log.info("mqtt link up: %s:%d as %s", self.host, self.port, self.node)
                await self._publish(client, self.handler.hello())
                if self.on_up is not None:
                    self.on_up()
                await self._serve(client)
        except aiomqtt.MqttError as exc:
            raise LinkError(str(exc) or type(exc).__name__) from exc

    async def _serve(self, client: aiomqtt.Client) -> None:
        """Run the outbox pump and the receiver until either fails; then stop both.

        Plain tasks rather than a TaskGroup: on Python 3.11 a TaskGroup whose child
        fails leaves a cancel request on the parent task, which would make a later
        stop request indistinguishable from a broken session.
        """
        pump = asyncio.create_task(self._pump(client), name=f"edgecore[{self.node}].link.pump")
        recv = asyncio.create_task(self._receive(client), name=f"edgecore[{self.node}].link.recv")
        restart = asyncio.create_task(self._restart.wait(),
                                      name=f"edgecore[{self.node}].link.restart")
        try:
            done, _ = await asyncio.wait({pump, recv, restart},
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (pump, recv, restart):
                t.cancel()
            await asyncio.gather(pump, recv, restart, return_exceptions=True)
        if restart in done:
            self.backoff.reset()
            raise LinkError("reconnecting as asked (new client certificate)")
        for t in done:
            t.result()  # re-raises the MqttError (or a bug) that ended the session
        raise LinkError("session ended")

    async def _publish(self, client: aiomqtt.Client, msg: Ack | Resync) -> None:
        await client.publish(self._up, self._seal(self._up, encode(msg)), qos=1)
        _resume_cancel()
        self.stats.published += 1

    async def _pump(self, client: aiomqtt.Client) -> None:
        """Send the outbox in seq order; everything unacked is resent on each new session."""
        sent = 0
        while True:
            self._kick.clear()
            for seq, payload in await asyncio.to_thread(self.handler.pending, sent):
                await client.publish(self._up, self._seal(self._up, payload), qos=1)
                _resume_cancel()
                self.stats.published += 1
                self.stats.reports_sent += 1
                sent = seq
            beat, self._beat = self._beat, None
            if beat is not None:
                await client.publish(self._up, self._seal(self._up, beat), qos=1)
                _resume_cancel()
                self.stats.published += 1
                self.stats.beats_sent += 1
            await self._kick.wait()

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
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
                    continue
                try:
                    data = seal.unseal(self.keys.down, topic, data)
                except AuthFailed as exc:
                    self.stats.auth_failed += 1
                    self._rlog.warning("auth", "dropped a message on %s: %s", topic, exc)
                    continue
            try:
                msg = decode(data, limits=DOWN_LIMITS)
            except ProtocolError as exc:
                self.stats.malformed += 1
                self._rlog.warning("malformed", "dropped a malformed message on %s: %s",
                                   message.topic.value, exc)
                continue
            if msg.node != self.node:
                self.stats.foreign += 1
                self._rlog.warning("foreign", "dropped a message for node %r on %s",
                                   msg.node, message.topic.value)
                continue
            if isinstance(msg, ReportAck):
                self.report_acked = max(self.report_acked, msg.seq)
            for reply in await self.handler.handle(msg):
                await self._publish(client, reply)
