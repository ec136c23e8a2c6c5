"""cloudcore's own MQTT client (`cloudcore.synchub.wire`, issue 13): the packet parser
on bytes split anywhere, the yield after MAX_PACKETS_PER_TURN, dead-link detection,
and the hub's Publisher and Subscriber over it against a real mosquitto (password
login, a refused login, QoS 1 both ways, messages queued while the broker is down)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import pytest

from cloudcore.auth.secrets import mosquitto_hash
from cloudcore.config import MqttSettings
from cloudcore.synchub import wire
from cloudcore.synchub.mqtt import Publisher, Subscriber
from testbed.ports import free_port, wait_port

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


class FakeTransport:
    """What the protocol writes, and whether it paused reading."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.paused = 0
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.paused += 1

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True


def publish_in(topic: str, payload: bytes, mid: int) -> bytes:
    """A QoS 1 PUBLISH as a broker sends it (the same packet as one we send)."""
    return wire.publish_packet(topic, payload, mid)


async def test_packets_split_at_every_byte_are_parsed_once_each() -> None:
    got: list[tuple[str, bytes]] = []
    acks: list[int] = []
    conn = wire.Connection(on_message=lambda t, p: got.append((t, p)), on_puback=acks.append)
    transport = FakeTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    big = bytes(range(256)) * 1000  # a remaining length of three bytes
    stream = (b"\x20\x02\x01\x00" + publish_in("fed/v1/00/a/up", b"hello", 7)
              + b"\x40\x02\x12\x34" + publish_in("fed/v1/00/b/up", big, 8)
              + b"\x30\x0a\x00\x03x/y" + b"qos0!" + b"\xd0\x00")
    for i in range(len(stream)):
        conn.data_received(stream[i:i + 1])
    assert await conn.connack() is True  # session present
    assert got == [("fed/v1/00/a/up", b"hello"), ("fed/v1/00/b/up", big), ("x/y", b"qos0!")]
    assert acks == [0x1234]
    await asyncio.sleep(0)  # the PUBACKs go out in one write, after the handler ran
    assert bytes(transport.written) == b"\x40\x02\x00\x07\x40\x02\x00\x08"


async def test_a_refused_connack_says_why() -> None:
    conn = wire.Connection()
    conn.connection_made(FakeTransport())  # type: ignore[arg-type]
    conn.data_received(b"\x20\x02\x00\x05")
    with pytest.raises(wire.ConnectionLost, match="not authorised"):
        await conn.connack()


async def test_a_long_queue_is_handled_a_turn_at_a_time() -> None:
    got: list[str] = []
    conn = wire.Connection(on_message=lambda t, p: got.append(t))
    transport = FakeTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    n = wire.MAX_PACKETS_PER_TURN * 2 + 500
    conn.data_received(b"".join(publish_in(f"t/{i}", b"x", i % 65535 + 1) for i in range(n)))
    assert len(got) == wire.MAX_PACKETS_PER_TURN and transport.paused == 1
    for _ in range(5):
        await asyncio.sleep(0)
    assert got == [f"t/{i}" for i in range(n)]
    assert len(transport.written) == 4 * n  # a PUBACK each


async def test_protocol_errors_close_the_connection() -> None:
    conn = wire.Connection(on_message=lambda t, p: None)
    transport = FakeTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    conn.data_received(b"\x34\x05\x00\x01t\x00\x01")  # QoS 2: we subscribe at 1
    assert transport.closed


async def test_a_silent_broker_is_dropped_after_one_and_a_half_keepalives(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wire, "DEAD_AFTER_S", 0.0)  # the keepalive rule alone

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)  # CONNECT
        writer.write(b"\x20\x02\x00\x00")  # CONNACK, then nothing, PINGREQs unanswered
        while await reader.read(100):
            pass
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        conn, present = await wire.connect("127.0.0.1", port, client_id="c", username=None,
                                           password=None, clean_session=True, keepalive=1)
        assert present is False
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(wire.ConnectionLost):
            async with asyncio.timeout(10):
                await conn.keepalive(1)
        assert 1.5 <= loop.time() - t0 < 5
    finally:
        server.close()


async def test_a_stalled_broker_is_kept_and_its_return_reported(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A broker that answers nothing for longer than 1.5 keepalives but less than
    DEAD_AFTER_S (a broker busy with a reconnect storm) keeps its connection; when it
    answers again, `on_heard_again` gets the silence's length."""
    monkeypatch.setattr(wire, "DEAD_AFTER_S", 30.0)
    answer = asyncio.Event()

    async def stalls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)  # CONNECT
        writer.write(b"\x20\x02\x00\x00")
        await answer.wait()  # PINGREQs pile up unanswered
        writer.write(b"\xd0\x00")  # one PINGRESP
        while await reader.read(100):
            pass
        writer.close()

    server = await asyncio.start_server(stalls, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        conn, _ = await wire.connect("127.0.0.1", port, client_id="c", username=None,
                                     password=None, clean_session=True, keepalive=1)
        heard: list[float] = []
        conn.silence_s = 1.0
        conn.on_heard_again = heard.append
        pinging = asyncio.create_task(conn.keepalive(1))
        await asyncio.sleep(3.0)  # 2 x the 1.5 keepalives
        assert not pinging.done() and not conn.closed.done()
        answer.set()
        async with asyncio.timeout(5):
            while not heard:
                await asyncio.sleep(0.05)
        assert len(heard) == 1 and 2.9 < heard[0] < 6.0
        pinging.cancel()
        conn.close()
    finally:
        server.close()


@pytest.fixture
def broker(tmp_path: Path):  # type: ignore[no-untyped-def]
    if not Path(MOSQUITTO).exists():
        pytest.skip("needs mosquitto")
    port = free_port()
    (tmp_path / "passwd").write_text(
        "".join(f"{u}:{mosquitto_hash('pw')}\n" for u in ("svc_sub", "svc_pub0", "edge")))
    conf = tmp_path / "mosquitto.conf"
    conf.write_text("\n".join([
        f"listener {port} 127.0.0.1", "allow_anonymous false",
        f"password_file {tmp_path / 'passwd'}", "persistence false", "log_dest none",
        "max_queued_messages 100000", "user root", ""]))
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> None:
        procs.append(subprocess.Popen([MOSQUITTO, "-c", str(conf)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_port("127.0.0.1", port, timeout=10)

    def stop() -> None:
        procs[-1].terminate()
        procs[-1].wait(5)

    start()
    yield port, start, stop
    for p in procs:
        if p.poll() is None:
            p.terminate()
            p.wait(5)


async def test_publisher_and_subscriber_through_mosquitto(broker) -> None:  # type: ignore[no-untyped-def]
    port, start, stop = broker
    settings = MqttSettings(host="127.0.0.1", port=port, username="svc", password="pw",
                            publish_concurrency=16, reconnect_base=0.05, reconnect_cap=0.2)
    with pytest.raises(wire.ConnectionLost, match=r"not authorised|bad user name"):
        await wire.connect("127.0.0.1", port, client_id="svc_sub", username="svc_sub",
                           password="wrong", clean_session=True, keepalive=30)

    got: list[tuple[str, bytes]] = []
    states: list[bool] = []
    sent = 0

    def on_sent() -> None:
        nonlocal sent
        sent += 1

    sub = Subscriber(settings, handler=lambda t, p: got.append((t, p)),
                     on_connected=states.append)
    pub = Publisher(settings, index=0, on_sent=on_sent)
    tasks = [asyncio.create_task(sub.run()), asyncio.create_task(pub.run())]

    async def until(cond, what: str) -> None:  # type: ignore[no-untyped-def]
        async with asyncio.timeout(15):
            while not cond():
                await asyncio.sleep(0.02)

    try:
        await until(lambda: states and states[-1] and pub.connected, "connected")
        # the edge side: an ordinary client that sends ups and reads its down topic
        down: list[bytes] = []
        edge, _ = await wire.connect(
            "127.0.0.1", port, client_id="edge", username="edge", password="pw",
            clean_session=True, keepalive=30, on_message=lambda t, p: down.append(p))
        await edge.subscribe(["fed/v1/00/edge/down"])
        for i in range(500):
            edge.publish(f"fed/v1/00/n{i}/up", b"up %d" % i, i + 1)
            pub.enqueue("fed/v1/00/edge/down", b"down %d" % i)
        await until(lambda: len(got) == 500 and len(down) == 500 and sent == 500, "500 each")
        assert got == [(f"fed/v1/00/n{i}/up", b"up %d" % i) for i in range(500)]
        assert down == [b"down %d" % i for i in range(500)]  # QoS 1, in order, 16 in flight
        edge.close()

        stop()  # messages queued while the broker is down go once it is back
        await until(lambda: not pub.connected and states[-1] is False, "disconnected")
        for i in range(50):
            pub.enqueue("fed/v1/00/edge/down", b"later %d" % i)
        assert pub.backlog == 50
        assert sub.sessions_lost == 0
        start()
        await until(lambda: pub.connected and states[-1] is True, "reconnected")
        assert sub.sessions_lost == 1  # persistence false: the restart lost our session
        await until(lambda: sent == 550 and pub.backlog == 0, "the 50 queued acknowledged")
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
