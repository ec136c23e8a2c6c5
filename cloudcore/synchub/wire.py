"""A small MQTT 3.1.1 client on an asyncio protocol, for the hub's busy connections.

Why it exists (issue 13): cloudcore sends a delta and receives an ack per node-update,
two QoS 1 messages and their PUBACKs, and through aiomqtt each cost a Python-level
paho packet machine, a TLS write per packet, an asyncio Event, a `wait_for` task and
a timer per publish and a task per received message: about half of cloudcore's CPU
per node-update in `testbed bench sync`. This client keeps only what the hub uses:

- CONNECT (client id, username, password, clean session, keepalive), CONNACK;
- SUBSCRIBE at QoS 1 and SUBACK;
- PUBLISH at QoS 1 out, with the PUBACK reported by packet id (`on_puback`);
- PUBLISH at QoS 0/1 in (`on_message(topic, payload)`, called in the event loop),
  answered with a PUBACK after the handler returned;
- PINGREQ every half keepalive; a connection that stays silent for 1.5 keepalives, and
  at least `DEAD_AFTER_S`, is dropped (the broker answers every ping, so long silence
  means it is gone; a broker busy with a reconnect storm of 14,000 TLS sessions answered
  nothing for 46-60 s and was not gone, and dropping it sent our reconnect to the back
  of that queue for minutes). A silence longer than `silence_s` that ends is reported
  (`on_heard_again`).

What it sends in one turn of the event loop is written at once (one TLS record for
many packets), and what it receives is parsed from the buffers the transport hands
over, at most `MAX_PACKETS_PER_TURN` packets before it yields to the loop (a broker
that delivers a long queue at connect cannot hold the loop).

Anything else from the broker (QoS 2, an unknown packet type, a malformed length) is a
protocol error: the connection is closed and the caller reconnects. Nothing here
retries; the callers (`mqtt.Publisher`, `mqtt.Subscriber`) own reconnects and resends.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable

log = logging.getLogger("cloudcore.synchub.mqtt")

DEAD_AFTER_S = 120.0
"""A connection silent this long (and 1.5 keepalives) is dropped; see the module doc."""
MAX_PACKETS_PER_TURN = 1000
"""Received packets handled before the protocol yields to the event loop."""
CONNECT_TIMEOUT = 10.0
"""Seconds for the TCP/TLS connect and the CONNACK (and for a SUBACK)."""
_CONNACK_CODES = {1: "unacceptable protocol version", 2: "identifier rejected",
                  3: "server unavailable", 4: "bad user name or password",
                  5: "not authorised"}
_PINGREQ = b"\xc0\x00"
_DISCONNECT = b"\xe0\x00"

MessageHandler = Callable[[str, bytes], None]
PubackHandler = Callable[[int], None]


class ConnectionLost(Exception):
    """The connection ended or was refused (always worth a reconnect)."""


def _length(n: int) -> bytes:
    """MQTT "remaining length": 7 bits a byte, least significant first."""
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)


def _str(s: str) -> bytes:
    raw = s.encode()
    return len(raw).to_bytes(2, "big") + raw


def publish_packet(topic: str, payload: bytes, mid: int) -> bytes:
    """A QoS 1 PUBLISH of `payload` on `topic` with packet id `mid`."""
    t = topic.encode()
    body_len = 2 + len(t) + 2 + len(payload)
    return b"".join((b"\x32", _length(body_len), len(t).to_bytes(2, "big"), t,
                     mid.to_bytes(2, "big"), payload))


class Connection(asyncio.Protocol):
    """One MQTT connection; made by `connect`."""

    def __init__(self, *, on_message: MessageHandler | None = None,
                 on_puback: PubackHandler | None = None) -> None:
        self._on_message = on_message
        self._on_puback = on_puback
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._in = bytearray()
        self._out = bytearray()
        self._flush_soon = False
        self._paused = False
        self._connack: asyncio.Future[tuple[int, bool]] = self._loop.create_future()
        self._subacks: dict[int, asyncio.Future[bytes]] = {}
        self._next_sub = 0
        self.closed: asyncio.Future[None] = self._loop.create_future()
        """Resolves (with ConnectionLost) when the connection ends."""
        self.last_rx = self._loop.time()
        self.silence_s = float("inf")
        self.on_heard_again: Callable[[float], None] | None = None
        """Called with the silence's length when the broker says something after more
        than `silence_s` of silence (our pings unanswered: the broker was stalled)."""

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # a stream transport

    def data_received(self, data: bytes) -> None:
        now = self._loop.time()
        silence, self.last_rx = now - self.last_rx, now
        if silence > self.silence_s and self.on_heard_again is not None:
            self.on_heard_again(silence)
        self._in += data
        if not self._paused:
            self._parse()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        err = ConnectionLost(f"connection lost: {exc}" if exc else "connection closed")
        if not self._connack.done():
            self._connack.set_exception(err)
        for sub in self._subacks.values():
            if not sub.done():
                sub.set_exception(err)
        if not self.closed.done():
            self.closed.set_exception(err)
            self.closed.exception()  # retrieved: a caller that never awaits it is fine

    # -- sending ------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    def send(self, packet: bytes) -> None:
        """Queue a packet; everything queued in one loop turn is written together."""
        self._out += packet
        if not self._flush_soon:
            self._flush_soon = True
            self._loop.call_soon(self._flush)

    def publish(self, topic: str, payload: bytes, mid: int) -> None:
        """QoS 1 PUBLISH; its PUBACK comes to `on_puback(mid)`."""
        self.send(publish_packet(topic, payload, mid))

    def _flush(self) -> None:
        self._flush_soon = False
        if self._out and self.is_open:
            assert self._transport is not None
            self._transport.write(bytes(self._out))
        self._out.clear()

    def ping(self) -> None:
        self.send(_PINGREQ)

    async def subscribe(self, filters: list[str]) -> None:
        """Subscribe to `filters` at QoS 1; ConnectionLost if the broker refuses one."""
        self._next_sub = self._next_sub % 65535 + 1
        mid = self._next_sub
        body = mid.to_bytes(2, "big") + b"".join(_str(f) + b"\x01" for f in filters)
        fut = self._subacks[mid] = self._loop.create_future()
        self.send(b"\x82" + _length(len(body)) + body)
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                codes = await fut
        except TimeoutError:
            raise ConnectionLost("no SUBACK from the broker") from None
        finally:
            self._subacks.pop(mid, None)
        refused = [f for f, c in zip(filters, codes, strict=False) if c == 0x80]
        if refused or len(codes) != len(filters):
            raise ConnectionLost(f"the broker refused the subscription to {refused or filters}")

    async def unsubscribe(self, filters: list[str]) -> None:
        """Unsubscribe from `filters` and wait for the UNSUBACK (ConnectionLost if none
        comes): after it the broker sends nothing more that only they matched."""
        self._next_sub = self._next_sub % 65535 + 1
        mid = self._next_sub
        body = mid.to_bytes(2, "big") + b"".join(_str(f) for f in filters)
        fut = self._subacks[mid] = self._loop.create_future()
        self.send(b"\xa2" + _length(len(body)) + body)
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                await fut
        except TimeoutError:
            raise ConnectionLost("no UNSUBACK from the broker") from None
        finally:
            self._subacks.pop(mid, None)

    def close(self) -> None:
        """Send DISCONNECT and close (what is queued goes first)."""
        if self.is_open:
            assert self._transport is not None
            self.send(_DISCONNECT)
            self._flush()
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    # -- receiving ----------------------------------------------------------------------

    def _parse(self) -> None:
        buf = self._in
        n = len(buf)
        i = 0
        handled = 0
        try:
            while n - i >= 2:
                if handled >= MAX_PACKETS_PER_TURN:  # yield; the rest waits in the buffer
                    self._pause()
                    break
                j = i + 1
                length = shift = 0
                complete = False
                while j < n:
                    b = buf[j]
                    j += 1
                    length |= (b & 0x7F) << shift
                    if b < 0x80:
                        complete = True
                        break
                    shift += 7
                    if shift > 21:
                        raise ConnectionLost("malformed remaining length from the broker")
                if not complete or n - j < length:
                    break  # incomplete: wait for more bytes
                self._packet(buf[i], bytes(buf[j:j + length]))
                handled += 1
                i = j + length
        except ConnectionLost as exc:
            log.warning("mqtt: %s; closing the connection", exc)
            self.abort()
        finally:
            del buf[:i]

    def _pause(self) -> None:
        if not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()
            self._loop.call_soon(self._resume)

    def _resume(self) -> None:
        self._paused = False
        if self._transport is not None:
            self._transport.resume_reading()
        self._parse()

    def _packet(self, header: int, body: bytes) -> None:
        kind = header >> 4
        if kind == 3:  # PUBLISH
            qos = (header >> 1) & 3
            tlen = int.from_bytes(body[:2], "big")
            try:
                topic = body[2:2 + tlen].decode()
            except UnicodeDecodeError:
                raise ConnectionLost("a PUBLISH topic that is not UTF-8") from None
            if qos == 0:
                payload = body[2 + tlen:]
                mid = 0
            elif qos == 1:
                mid = int.from_bytes(body[2 + tlen:4 + tlen], "big")
                payload = body[4 + tlen:]
            else:
                raise ConnectionLost(f"a PUBLISH at QoS {qos} (subscribed at 1)")
            if self._on_message is not None:
                try:
                    self._on_message(topic, payload)
                except Exception:  # the handler's bug must not end the connection
                    log.exception("mqtt: the message handler failed on %s", topic)
            if qos == 1:
                self.send(b"\x40\x02" + mid.to_bytes(2, "big"))
        elif kind == 4:  # PUBACK
            if self._on_puback is not None and len(body) >= 2:
                self._on_puback(int.from_bytes(body[:2], "big"))
        elif kind == 13:  # PINGRESP
            pass
        elif kind == 2:  # CONNACK
            if len(body) < 2:
                raise ConnectionLost("a short CONNACK")
            if not self._connack.done():
                self._connack.set_result((body[1], bool(body[0] & 1)))
        elif kind in (9, 11):  # SUBACK, UNSUBACK
            mid = int.from_bytes(body[:2], "big")
            fut = self._subacks.get(mid)
            if fut is not None and not fut.done():
                fut.set_result(body[2:])
        else:
            raise ConnectionLost(f"unexpected packet type {kind} from the broker")

    async def connack(self) -> bool:
        """Wait for the CONNACK; True if the broker kept a session. ConnectionLost if
        it refused us (the reason in the message)."""
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                code, present = await self._connack
        except TimeoutError:
            raise ConnectionLost("no CONNACK from the broker") from None
        if code:
            raise ConnectionLost(f"connection refused: "
                                 f"{_CONNACK_CODES.get(code, f'code {code}')}")
        return present

    async def keepalive(self, seconds: int) -> None:
        """Work until the connection ends: ping every `seconds` / 2, drop a connection
        silent for 1.5 x `seconds` and `DEAD_AFTER_S`; then raise ConnectionLost."""
        interval = max(0.5, seconds / 2)
        dead_after = max(1.5 * seconds, DEAD_AFTER_S)
        while not self.closed.done():
            try:
                async with asyncio.timeout(interval):
                    await asyncio.shield(self.closed)
            except TimeoutError:
                if self._loop.time() - self.last_rx > dead_after:
                    log.warning("mqtt: nothing from the broker for %.0fs; reconnecting",
                                self._loop.time() - self.last_rx)
                    self.abort()
                else:
                    self.ping()
        await self.closed


async def connect(host: str, port: int, *, client_id: str, username: str | None,
                  password: str | None, clean_session: bool, keepalive: int,
                  tls: ssl.SSLContext | None = None,
                  on_message: MessageHandler | None = None,
                  on_puback: PubackHandler | None = None) -> tuple[Connection, bool]:
    """Connect and log in; returns the connection and whether the broker had kept a
    session. Raises ConnectionLost (refused, timed out) or OSError (network, TLS)."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT):
            _, conn = await loop.create_connection(
                lambda: Connection(on_message=on_message, on_puback=on_puback), host, port,
                ssl=tls, server_hostname=host if tls is not None else None)
    except TimeoutError:
        raise ConnectionLost(f"connect to {host}:{port} timed out") from None
    flags = 0x02 if clean_session else 0
    payload = _str(client_id)
    if username is not None:
        flags |= 0x80
        payload += _str(username)
        if password is not None:
            flags |= 0x40
            payload += _str(password)
    body = (b"\x00\x04MQTT\x04" + bytes((flags,)) + keepalive.to_bytes(2, "big")
            + payload)
    conn.send(b"\x10" + _length(len(body)) + body)
    try:
        present = await conn.connack()
    except BaseException:
        conn.abort()
        raise
    return conn, present
