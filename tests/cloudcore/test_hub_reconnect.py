"""Issue 14: while a broker refuses connections (down, restarting) the hub's MQTT
connections retry at least every `REFUSED_CAP` seconds; other failures keep the
configured backoff."""

from __future__ import annotations

import asyncio
import socket

import pytest

from cloudcore.config import MqttSettings
from cloudcore.errors import BrokerUnavailable
from cloudcore.synchub import wire
from cloudcore.synchub.mqtt import REFUSED_CAP, _Reconnect


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _failure(host: str, port: int) -> BrokerUnavailable:
    """The error a hub connection raises when `host:port` fails, as `_session` wraps it."""
    try:
        await wire.connect(host, port, client_id="cloud_sub", username=None, password=None,
                           clean_session=False, keepalive=30)
    except (wire.ConnectionLost, OSError) as exc:
        try:
            raise BrokerUnavailable(f"broker {host}:{port}: {exc}") from exc
        except BrokerUnavailable as wrapped:
            return wrapped
    raise AssertionError(f"{host}:{port} accepted a connection")


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_refused_connections_are_retried_within_the_cap(host: str) -> None:
    exc = await _failure(host, _closed_port())
    reconnect = _Reconnect(MqttSettings())
    delays = [reconnect.delay(exc) for _ in range(12)]
    assert max(delays) <= REFUSED_CAP
    assert min(delays) > 0  # never a busy loop


async def test_other_failures_keep_the_configured_backoff() -> None:
    """A broker that accepts TCP and then drops the connection (not a refusal)."""
    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(drop, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        exc = await _failure("127.0.0.1", port)
    finally:
        server.close()
    settings = MqttSettings()
    reconnect = _Reconnect(settings)
    delays = [reconnect.delay(exc) for _ in range(12)]
    assert max(delays) > REFUSED_CAP  # grows as configured ...
    assert max(delays) <= settings.reconnect_cap  # ... up to its cap
