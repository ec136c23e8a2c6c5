"""A keyed agent against a real mosquitto (proposal 0002, issue 11).

A client with broker access but not the node's key (here: anonymous on a private
broker) forges a desired set (gen 1000000, a hostPath `/` pod) and an exec request,
alters a genuine message and replays recorded ones; the real link refuses every one
and counts it, while the genuine sealed traffic of the cloud goes on.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiomqtt
import pytest

from edgecore.agent import Agent
from edgecore.config import AgentSettings
from edgecore.reconciler.volumes import Volumes
from shared import seal, topics
from shared.codec import (
    Ack,
    Desired,
    Request,
    Response,
    Resync,
    decode,
    encode,
)
from shared.entries import parse_pod_entry, pod_entry, pod_key, secret_entry
from shared.errors import AuthFailed
from shared.models import Pod

from edgecore_fakes import FakeRuntime  # isort: skip

NODE = "edge-sec-1"
KEY = bytes(range(32))
K = seal.NodeKeys.derive(KEY)
M = TypeVar("M")
pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("sweeps_pod_network")]


class SealedCloud:
    """The genuine cloud: holds the key, seals what it sends, checks what it gets."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.inbox: asyncio.Queue[Any] = asyncio.Queue()
        self.bad_up = 0
        self.sent: list[bytes] = []

    async def reader(self) -> None:
        async for m in self.client.messages:
            try:
                inner = seal.unseal(K.up, m.topic.value, bytes(m.payload))  # type: ignore[arg-type]
            except AuthFailed:
                self.bad_up += 1
                continue
            await self.inbox.put(decode(inner))

    async def send(self, msg: Any) -> bytes:
        payload = seal.seal(K.down, topics.down(NODE), encode(msg))
        self.sent.append(payload)
        await self.client.publish(topics.down(NODE), payload, qos=1)
        return payload

    async def expect(self, kind: type[M], pred: Callable[[M], bool] = lambda m: True,
                     timeout: float = 10) -> M:
        async with asyncio.timeout(timeout):
            while True:
                msg = await self.inbox.get()
                if isinstance(msg, kind) and pred(msg):
                    return msg


@contextlib.asynccontextmanager
async def sealed_cloud(port: int) -> AsyncIterator[SealedCloud]:
    async with aiomqtt.Client("127.0.0.1", port, identifier="cloudcore_sub") as client:
        await client.subscribe(topics.up(NODE), qos=1)
        await client.subscribe(topics.will(NODE), qos=1)
        cloud = SealedCloud(client)
        task = asyncio.create_task(cloud.reader())
        try:
            yield cloud
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def until(cond: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def pod(name: str, **spec: Any) -> tuple[str, dict[str, Any]]:
    p = Pod.model_validate({"metadata": {"name": name}, "spec": {
        "containers": [{"name": "main", "image": "busybox:1"}], **spec}})
    return pod_key("default", name), pod_entry(p)


async def test_forged_desired_and_exec_are_refused_by_a_real_link(tmp_path: Path,
                                                                  mosquitto) -> None:
    runtime = FakeRuntime(clock=time.time)
    s = AgentSettings(node=NODE, state_dir=tmp_path / "state", mqtt_port=mosquitto.port,
                      node_key=KEY, report_batch_s=0.05, reconcile_interval_s=0.2,
                      heartbeat_s=3600, reconnect_initial_s=0.05, reconnect_max_s=0.5)
    agent = Agent(s, runtime=runtime)
    web = pod("web")
    evil = pod("evil", volumes=[{"name": "root", "hostPath": {"path": "/"}}])
    task = asyncio.create_task(agent.run())
    try:
        async with sealed_cloud(mosquitto.port) as cloud, aiomqtt.Client(
                "127.0.0.1", mosquitto.port, identifier="attacker") as attacker:
            await asyncio.wait_for(agent.started.wait(), 5)
            hello = await cloud.expect(Resync)  # sealed upstream: it verified
            assert hello.gen == 0
            genuine = await cloud.send(Desired(node=NODE, epoch="E", base=0, gen=1,
                                               snapshot=True, put=dict([web])))
            assert (await cloud.expect(Ack)).gen == 1
            link, sync = agent.link, agent.sync
            assert link is not None and sync is not None

            async def forge(payload: bytes) -> None:
                await attacker.publish(topics.down(NODE), payload, qos=1)

            # 1. a forged desired set: unsealed, under another key, with the up key
            forged = Desired(node=NODE, epoch="E", base=1, gen=1_000_000, put=dict([evil]))
            await forge(encode(forged))
            await forge(seal.seal(seal.NodeKeys.derive(bytes(32)).down, topics.down(NODE),
                                  encode(forged)))
            await forge(seal.seal(K.up, topics.down(NODE), encode(forged)))
            # 2. a forged exec request, unsealed and with a made-up tag
            req = Request(node=NODE, id="evil1", kind="exec", pod=web[0],
                          argv=["sh", "-c", "id; cat /secret/*"], exp=time.time() + 60)
            await forge(encode(req))
            await forge(encode(req) + b"\x00" * seal.TAG_BYTES)
            # 3. a genuine message with one bit flipped
            await forge(genuine[:10] + bytes([genuine[10] ^ 1]) + genuine[11:])
            await until(lambda: link.stats.auth_failed == 6)
            assert agent.cache is not None
            on_disk = agent.cache.get_desired()
            assert (on_disk.epoch, on_disk.gen, list(on_disk.items)) == ("E", 1, [web[0]])
            assert runtime.ops("exec") == []
            assert not any("evil" in cid for _, cid in runtime.ops("run"))

            # 4. replays of genuine messages: the desired one is a harmless duplicate,
            # a genuine request runs once, its replay never
            await forge(genuine)
            assert (await cloud.expect(Ack)).gen == 1
            real = Request(node=NODE, id="r1", kind="exec", pod="pod/default/nope",
                           argv=["true"], exp=time.time() + 60)
            recorded = await cloud.send(real)
            first = await cloud.expect(Response, lambda r: r.id == "r1" and r.done)
            assert first.code == "NotFound"  # it ran (against a pod that is not here)
            await forge(recorded)
            await until(lambda: sync.stats.replayed_requests == 1)
            expired = Request(node=NODE, id="r2", kind="exec", pod="pod/default/nope",
                              argv=["true"], exp=time.time() - 1)
            await cloud.send(expired)
            await until(lambda: sync.stats.replayed_requests == 2)
            assert link.stats.auth_failed == 6 and cloud.bad_up == 0

            # the node still takes genuine updates (a new epoch, then a delta)
            await cloud.send(Desired(node=NODE, epoch="E2", base=0, gen=1, snapshot=True,
                                     put=dict([web])))
            assert (await cloud.expect(Ack, lambda a: a.epoch == "E2")).gen == 1
            # and a replayed snapshot of the epoch it left is refused and said so
            await forge(genuine)
            left = await cloud.expect(Resync, lambda r: r.reason == "left-epoch")
            assert (left.epoch, left.gen) == ("E2", 1)
            assert sync.stats.refused_epochs == 1
            assert agent.cache.get_desired().epoch == "E2"
            assert cloud.bad_up == 0  # everything the agent sent verified
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert not any("evil" in cid for cid in runtime.running())


def test_a_sealed_secret_is_opened_only_into_its_volume(tmp_path: Path) -> None:
    """The cache keeps the sealed value; the agent's opener turns it into files."""
    agent = Agent(AgentSettings(node=NODE, state_dir=tmp_path / "s", node_key=KEY))
    opener = agent._secret_opener(K)
    clear = secret_entry({"password": b"hunter2"})
    sealed = seal.seal_secret(K.secret, node=NODE, entry_key="secret/default/db", value=clear)
    key, value = pod("web", volumes=[{"name": "s", "secret": {"secretName": "db"}}])
    value["spec"]["containers"][0]["volumeMounts"] = [{"name": "s", "mountPath": "/s"}]
    entry = parse_pod_entry(key, value)
    vols = Volumes(tmp_path / "pods", open_secret=opener)
    others: list[Volumes] = []
    try:
        prepared = vols.prepare(entry, {key: value, "secret/default/db": sealed})
        assert (prepared.paths["s"] / "password").read_bytes() == b"hunter2"
        # sealed for another node or entry: the pod waits, nothing is written
        other = seal.seal_secret(K.secret, node="other", entry_key="secret/default/db",
                                 value=clear)
        from edgecore.reconciler.volumes import VolumeError

        others.append(Volumes(tmp_path / "pods2", open_secret=opener))
        with pytest.raises(VolumeError, match="does not open"):
            others[-1].prepare(entry, {key: value, "secret/default/db": other})
        keyless = Agent(AgentSettings(node=NODE, state_dir=tmp_path / "k"))._secret_opener(None)
        others.append(Volumes(tmp_path / "pods3", open_secret=keyless))
        with pytest.raises(VolumeError, match="no node key"):
            others[-1].prepare(entry, {key: value, "secret/default/db": sealed})
        assert base64.b64encode(b"hunter2") not in repr(sealed).encode()
    finally:
        for v in (vols, *others):
            v.remove(key)
