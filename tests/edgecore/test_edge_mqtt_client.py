"""The agent's own MQTT 3.1.1 client (`edgecore.link.mqtt`), against a real mosquitto
and, for the failures a real broker does not stage on demand, a scripted TCP peer:
keepalive pings hold an idle session, the will goes out on an unclean end and not on a
clean one, an oversized message is read off the wire and handed on empty with its
size, a refused CONNECT says why, a silent broker and an unanswered ping end the
session with a `LinkError` within the timeout."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from edgecore.errors import LinkError
from edgecore.link.mqtt import Received, Session, Will

pytestmark = pytest.mark.timeout(60)


def session(port: int, client_id: str, **kw: object) -> Session:
    opts: dict[str, object] = {"keepalive_s": 60, "timeout_s": 5.0}
    opts.update(kw)
    return Session("127.0.0.1", port, client_id=client_id, **opts)  # type: ignore[arg-type]


async def first(messages: AsyncIterator[Received], timeout: float = 5) -> Received:
    async with asyncio.timeout(timeout):
        return await anext(messages)


async def test_publish_subscribe_and_an_idle_session_kept_alive(mosquitto) -> None:
    async with session(mosquitto.port, "watcher") as watcher:
        await watcher.subscribe("t/#", qos=1)
        got = watcher.messages()
        # keepalive 1 s: mosquitto drops a client silent for 1.5 s, so only the pings
        # keep this session up while it sends nothing
        async with session(mosquitto.port, "idle", keepalive_s=1) as idle:
            await asyncio.sleep(3.5)
            await idle.publish("t/a", b"still here", qos=1)
            await idle.publish("t/b", b"qos0", qos=0)
        m = await first(got)
        assert (m.topic, m.payload, m.size) == ("t/a", b"still here", 10)
        m = await first(got)
        assert (m.topic, m.payload) == ("t/b", b"qos0")


async def test_the_will_goes_out_on_an_unclean_end_only(mosquitto) -> None:
    async with session(mosquitto.port, "watcher") as watcher:
        await watcher.subscribe("will/#", qos=1)
        got = watcher.messages()
        async with session(mosquitto.port, "clean", will=Will("will/clean", b"gone")):
            pass  # a graceful DISCONNECT: the broker drops the will
        dirty = session(mosquitto.port, "dirty", will=Will("will/dirty", b"died"))
        await dirty.__aenter__()
        assert dirty._writer is not None
        dirty._writer.transport.abort()  # as a kill -9 would end it
        m = await first(got)
        assert (m.topic, m.payload) == ("will/dirty", b"died")
        await dirty.__aexit__(None, None, None)


async def test_an_oversized_message_is_handed_on_empty_with_its_size(mosquitto) -> None:
    big = b"x" * 300_000
    async with session(mosquitto.port, "small", max_payload=100_000) as small:
        await small.subscribe("down/#", qos=1)
        got = small.messages()
        async with session(mosquitto.port, "cloud") as cloud:
            await cloud.publish("down/n", big, qos=1)
            await cloud.publish("down/n", b"next", qos=1)
        m = await first(got)
        assert (m.topic, m.payload, m.size) == ("down/n", b"", len(big))
        m = await first(got)  # the stream is still in step after the skipped bytes
        assert (m.payload, m.size) == (b"next", 4)


async def test_a_refused_connect_says_why(mosquitto) -> None:
    # MQTT 3.1.1: an empty client id needs a clean session; mosquitto refuses it (code 2)
    with pytest.raises(LinkError, match="Identifier rejected"):
        async with session(mosquitto.port, "", clean_session=False):
            pass


@contextlib.asynccontextmanager
async def peer(script: bytes) -> AsyncIterator[int]:
    """A TCP server that reads the CONNECT, writes `script`, then stays silent."""
    held: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        await reader.read(1024)
        writer.write(script)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        for w in held:
            w.close()
        server.close()
        await server.wait_closed()


async def test_a_silent_broker_times_the_connect_out() -> None:
    async with peer(b"") as port:
        with pytest.raises(LinkError, match=r"timed out after 0\.5 s"):
            async with session(port, "n", timeout_s=0.5):
                pass


async def test_an_unanswered_ping_ends_the_session() -> None:
    async with peer(bytes((0x20, 2, 0, 0))) as port:  # CONNACK accepted, then nothing
        s = session(port, "n", keepalive_s=1, timeout_s=0.5)
        async with s:
            with pytest.raises(LinkError, match="no answer to a ping"):
                async with asyncio.timeout(5):
                    async for _ in s.messages():
                        pass
