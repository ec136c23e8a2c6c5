"""The agent's MQTT 3.1.1 client: one session over asyncio streams, nothing more.

Why our own: the agent needs a handful of packets (CONNECT with a will, SUBSCRIBE,
PUBLISH and PUBACK at QoS 0/1, PINGREQ, DISCONNECT) on one connection, and aiomqtt
on paho-mqtt cost about 4.4 MiB of the agent's RSS for them: paho imports
`urllib.request` (with `http.client` and `email`), `uuid`, `random`, `hashlib`,
`bz2`, `lzma`, `tempfile` and `platform` at the top of its client, and keeps a thread-
free loop of its own inside aiomqtt's task, event and timer per message (issue 16).
Here everything runs on the agent's event loop with the modules asyncio loads anyway.

What it promises:
- `async with Session(...) as s`: connected (CONNACK accepted) on enter, or a
  `LinkError` saying why (refused with the broker's reason, TLS, timeout); on exit a
  graceful DISCONNECT when the connection is still up (the broker then drops the
  will), and the socket closed.
- `await s.publish(topic, payload, qos=1)` returns once the broker's PUBACK came;
  `await s.subscribe(topic, qos=1)` once the SUBACK granted it (a refusal raises).
  Each waits at most `timeout_s`, then the session is broken: a `LinkError`.
- `async for m in s.messages()`: the PUBLISHes the broker delivers, in order, each
  acknowledged (PUBACK) on receipt as paho did; a payload over `max_payload` is read
  off the wire and handed on empty with its `size`, so the caller counts it without
  holding it. The iterator raises `LinkError` when the connection ends.
- Keepalive: a PINGREQ when nothing was sent for `keepalive_s` (so an active link
  sends none); no PINGRESP (or other packet) within `timeout_s` breaks the session.
- In-flight QoS 1 state is not kept across sessions: the link resends its outbox from
  the start on every session (clean_session=False keeps the broker's side: our
  subscription and the `down` messages queued while we were away).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass

from edgecore.errors import LinkError

CONNECT, CONNACK, PUBLISH, PUBACK = 0x10, 0x20, 0x30, 0x40
SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 0x82, 0x90, 0xC0, 0xD0, 0xE0

# CONNACK return codes, in paho's words (operators and tests know these lines).
REFUSED = {1: "Unacceptable protocol version", 2: "Identifier rejected",
           3: "Server unavailable", 4: "Bad user name or password", 5: "Not authorized"}


@dataclass(frozen=True, slots=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1


@dataclass(frozen=True, slots=True)
class Received:
    """One delivered PUBLISH: `payload` is empty when `size` was over the limit."""

    topic: str
    payload: bytes
    size: int


def _str(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    if len(b) > 65535:
        raise LinkError(f"MQTT string of {len(b)} bytes (at most 65535)")
    return struct.pack("!H", len(b)) + b


def _packet(first: int, body: bytes) -> bytes:
    n, length = len(body), bytearray()
    while True:
        n, digit = divmod(n, 128)
        length.append(digit | (0x80 if n else 0))
        if not n:
            break
    return bytes((first,)) + bytes(length) + body


class Session:
    """One MQTT connection; see the module docstring for what it promises."""

    def __init__(self, host: str, port: int, *, client_id: str, keepalive_s: int,
                 timeout_s: float, will: Will | None = None, username: str | None = None,
                 password: str | None = None, tls: ssl.SSLContext | None = None,
                 clean_session: bool = False, max_payload: int = 16 * 2**20) -> None:
        self.host, self.port = host, port
        self.client_id = client_id
        self.keepalive_s = keepalive_s
        self.timeout_s = timeout_s
        self.will = will
        self.username, self.password = username, password
        self.tls = tls
        self.clean_session = clean_session
        self.max_payload = max_payload
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._acks: dict[int, asyncio.Future[bytes]] = {}
        self._next_id = 0
        self._inbox: asyncio.Queue[Received | None] = asyncio.Queue()
        self._error: LinkError | None = None
        self._last_sent = 0.0
        self._heard = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._skipped = 0

    # -- lifecycle ---------------------------------------------------------------
    async def __aenter__(self) -> Session:
        try:
            async with asyncio.timeout(self.timeout_s):
                self._reader, self._writer = await asyncio.open_connection(
                    self.host, self.port, ssl=self.tls,
                    server_hostname=self.host if self.tls is not None else None,
                    limit=2**16)
                self._send(_packet(CONNECT, self._connect_body()))
                first, body = await self._read_packet()
        except TimeoutError:
            await self._close()
            raise LinkError(f"connect to {self.host}:{self.port} timed out after "
                            f"{self.timeout_s:g} s") from None
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError) as exc:
            await self._close()
            raise LinkError(f"connect to {self.host}:{self.port} failed: "
                            f"{exc or type(exc).__name__}") from exc
        except BaseException:
            await self._close()
            raise
        if first & 0xF0 != CONNACK or len(body) != 2:
            await self._close()
            raise LinkError(f"broker answered CONNECT with packet type {first >> 4}")
        if body[1] != 0:
            await self._close()
            raise LinkError("connection refused: "
                            f"{REFUSED.get(body[1], f'return code {body[1]}')}")
        loop = asyncio.get_running_loop()
        self._last_sent = loop.time()
        self._tasks = [loop.create_task(self._read_loop(), name=f"mqtt[{self.client_id}].read")]
        if self.keepalive_s > 0:  # 0: no keepalive (MQTT 3.1.1, 3.1.2.10)
            self._tasks.append(loop.create_task(self._keepalive(),
                                                name=f"mqtt[{self.client_id}].ping"))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._error is None and self._writer is not None:
            with contextlib.suppress(OSError, RuntimeError):
                self._send(_packet(DISCONNECT, b""))
        await self._close()

    def _connect_body(self) -> bytes:
        flags = 0 if not self.clean_session else 0x02
        payload = _str(self.client_id)
        if self.will is not None:
            flags |= 0x04 | (self.will.qos << 3)
            payload += _str(self.will.topic) + _str(self.will.payload)
        if self.username is not None:
            flags |= 0x80
            payload += _str(self.username)
            if self.password is not None:
                flags |= 0x40
                payload += _str(self.password)
        return _str("MQTT") + bytes((4, flags)) + struct.pack("!H", self.keepalive_s) + payload

    async def _close(self) -> None:
        self._fail(LinkError("session closed"))
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks = []
        w, self._writer = self._writer, None
        if w is not None:
            w.close()
            try:
                async with asyncio.timeout(min(self.timeout_s, 5.0)):
                    await w.wait_closed()
            except (TimeoutError, OSError, ssl.SSLError):
                w.transport.abort()

    def _fail(self, error: LinkError) -> None:
        """The connection is over: wake every waiter with `error` (the first one wins)."""
        if self._error is None:
            self._error = error
        for fut in self._acks.values():
            if not fut.done():
                fut.set_exception(self._error)
        self._acks.clear()
        self._inbox.put_nowait(None)

    # -- wire --------------------------------------------------------------------
    def _send(self, data: bytes) -> None:
        if self._error is not None:
            raise self._error
        assert self._writer is not None
        self._writer.write(data)
        self._last_sent = asyncio.get_running_loop().time()

    async def _read_packet(self, *, max_body: int | None = None) -> tuple[int, bytes]:
        """(first byte, body); a body over `max_body` is read off the wire and dropped:
        (first byte, b"") with the body's length left in `self._skipped`."""
        assert self._reader is not None
        first = (await self._reader.readexactly(1))[0]
        length, shift = 0, 0
        for _ in range(4):
            b = (await self._reader.readexactly(1))[0]
            length |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        else:
            raise LinkError("malformed remaining length from the broker")
        if max_body is not None and length > max_body:
            head = await self._reader.readexactly(min(length, 2 + 65535 + 2))
            rest = length - len(head)
            while rest:
                rest -= len(await self._reader.readexactly(min(rest, 2**16)))
            self._skipped = length
            return first, head
        return first, await self._reader.readexactly(length) if length else b""

    async def _read_loop(self) -> None:
        try:
            while True:
                self._skipped = 0
                first, body = await self._read_packet(max_body=self.max_payload + 65535 + 4)
                self._heard.set()
                kind = first & 0xF0
                if kind == PUBLISH:
                    self._on_publish(first, body)
                elif kind in (PUBACK, SUBACK) and len(body) >= 2:
                    pid = struct.unpack_from("!H", body)[0]
                    fut = self._acks.pop(pid, None)
                    if fut is not None and not fut.done():
                        fut.set_result(body[2:])
                elif kind != PINGRESP:
                    raise LinkError(f"unexpected packet type {kind >> 4} from the broker")
        except asyncio.IncompleteReadError:
            self._fail(LinkError("connection closed by the broker"))
        except (OSError, ssl.SSLError) as exc:
            self._fail(LinkError(f"connection lost: {exc or type(exc).__name__}"))
        except LinkError as exc:
            self._fail(exc)

    def _on_publish(self, first: int, body: bytes) -> None:
        qos = (first >> 1) & 0x03
        tlen = struct.unpack_from("!H", body)[0]
        topic = body[2:2 + tlen].decode(errors="replace")
        at = 2 + tlen
        if qos:
            pid = body[at:at + 2]
            at += 2
            if qos == 1:
                self._send(_packet(PUBACK, pid))
            else:  # we subscribe at QoS 1, so a broker never sends 2; refuse it plainly
                raise LinkError("the broker sent a QoS 2 message (subscribed at QoS 1)")
        if self._skipped:
            self._inbox.put_nowait(Received(topic, b"", self._skipped - at))
        else:
            payload = body[at:]
            self._inbox.put_nowait(Received(topic, payload, len(payload)))

    async def _keepalive(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = self._last_sent + self.keepalive_s
            if loop.time() < due:
                await asyncio.sleep(due - loop.time())
                continue
            self._heard.clear()
            try:
                self._send(_packet(PINGREQ, b""))
                async with asyncio.timeout(self.timeout_s):
                    await self._heard.wait()
            except TimeoutError:
                self._fail(LinkError(f"no answer to a ping in {self.timeout_s:g} s"))
                if self._writer is not None:
                    self._writer.transport.abort()
                return
            except LinkError:
                return

    async def _request(self, data: bytes, pid: int) -> bytes:
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._acks[pid] = fut
        try:
            self._send(data)
            assert self._writer is not None
            async with asyncio.timeout(self.timeout_s):
                await self._writer.drain()
                return await fut
        except TimeoutError:
            err = LinkError(f"no answer from the broker in {self.timeout_s:g} s")
            self._fail(err)
            if self._writer is not None:
                self._writer.transport.abort()
            raise err from None
        except (OSError, ssl.SSLError) as exc:
            err = LinkError(f"connection lost: {exc or type(exc).__name__}")
            self._fail(err)
            raise err from exc
        finally:
            self._acks.pop(pid, None)

    def _packet_id(self) -> int:
        for _ in range(65535):
            self._next_id = self._next_id % 65535 + 1
            if self._next_id not in self._acks:
                return self._next_id
        raise LinkError("65535 MQTT messages in flight")

    # -- operations --------------------------------------------------------------
    async def publish(self, topic: str, payload: bytes, *, qos: int = 1) -> None:
        if qos == 0:
            self._send(_packet(PUBLISH, _str(topic) + payload))
            return
        pid = self._packet_id()
        await self._request(_packet(PUBLISH | 0x02, _str(topic) + struct.pack("!H", pid)
                                    + payload), pid)

    async def subscribe(self, topic: str, *, qos: int = 1) -> int:
        pid = self._packet_id()
        granted = await self._request(
            _packet(SUBSCRIBE, struct.pack("!H", pid) + _str(topic) + bytes((qos,))), pid)
        if not granted or granted[0] == 0x80:
            raise LinkError(f"the broker refused the subscription to {topic}")
        return granted[0]

    async def messages(self) -> AsyncIterator[Received]:
        while True:
            m = await self._inbox.get()
            if m is None:
                self._inbox.put_nowait(None)  # every later reader ends too
                raise self._error or LinkError("session closed")
            yield m
