"""Simulated nodes with keys (`--keys`) seal and check every message, as agents do."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from shared import seal, topics
from shared.codec import Ack, Desired, Resync, decode, encode
from shared.errors import AuthFailed
from testbed.broker import Mosquitto
from testbed.simulator import SimSettings, Simulator, load_keys, parse_args

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("mosquitto") is None, reason="needs mosquitto"),
]

NAMES = ("ks-0", "ks-1")
KEYS = {n: bytes([i]) * 32 for i, n in enumerate(NAMES, 1)}


def test_keys_file_and_flags(tmp_path: Path) -> None:
    f = tmp_path / "keys.json"
    f.write_text(json.dumps({"ks-0": base64.b64encode(KEYS["ks-0"]).decode(),
                             "ks-1": {"key": base64.b64encode(KEYS["ks-1"]).decode(),
                                      "username": "ks-1", "password": "pw"}}))
    keys, creds = load_keys(f)
    assert keys == KEYS and creds == {"ks-1": ("ks-1", "pw")}
    f.write_text(json.dumps({"ks-0": base64.b64encode(b"short").decode()}))
    with pytest.raises(ValueError, match="ks-0"):
        load_keys(f)
    args = parse_args(["--keys", str(f), "--tls", "--ca-file", "ca.crt"])
    assert args.tls and args.ca_file == Path("ca.crt") and args.keys == f
    assert parse_args([]).keys is None  # unchanged CLI without keys
    with pytest.raises(ValueError, match="no key"):
        Simulator(SimSettings(names=NAMES, keys={"ks-0": KEYS["ks-0"]}))


async def test_keyed_nodes_seal_up_and_refuse_forged_down(tmp_path: Path) -> None:
    with Mosquitto(workdir=tmp_path / "mosquitto", insecure=True) as broker:
        got: list[Any] = []
        bad: list[str] = []
        lock = threading.Lock()

        def on_message(c: Any, u: Any, m: Any) -> None:
            node = topics.parse(m.topic)[0]  # type: ignore[index]
            try:
                msg = decode(seal.unseal(seal.NodeKeys.derive(KEYS[node]).up, m.topic,
                                         m.payload))
            except AuthFailed:
                with lock:
                    bad.append(m.topic)
                return
            with lock:
                got.append(msg)

        cloud = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="cloud-test",
                            protocol=mqtt.MQTTv311)
        subscribed = threading.Event()
        cloud.on_message = on_message
        cloud.on_subscribe = lambda *a: subscribed.set()
        cloud.on_connect = lambda c, u, f, rc, p: c.subscribe(
            [(t, 1) for n in NAMES for t in (topics.up(n),)])
        cloud.connect("127.0.0.1", broker.port)
        cloud.loop_start()
        assert subscribed.wait(5)
        sim = Simulator(SimSettings(port=broker.port, names=NAMES, keys=KEYS, heartbeat=60))
        task = asyncio.create_task(sim.run())

        async def until(cond: Any) -> None:
            deadline = time.monotonic() + 15
            while not cond():
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)

        try:
            await until(lambda: sum(isinstance(m, Resync) for m in got) == 2)
            k0 = seal.NodeKeys.derive(KEYS["ks-0"])
            snap = Desired(node="ks-0", epoch="E", base=0, gen=1, snapshot=True, put={})
            cloud.publish(topics.down("ks-0"), encode(snap), qos=1)  # forged: unsealed
            cloud.publish(topics.down("ks-0"),
                          seal.seal(seal.NodeKeys.derive(KEYS["ks-1"]).down,
                                    topics.down("ks-0"), encode(snap)), qos=1)
            await until(lambda: sim.invalid == 2)
            cloud.publish(topics.down("ks-0"), seal.seal(k0.down, topics.down("ks-0"),
                                                         encode(snap)), qos=1)
            await until(lambda: any(isinstance(m, Ack) and m.gen == 1 for m in got))
            assert bad == [] and sim.invalid == 2
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            cloud.loop_stop()
            cloud.disconnect()
