"""The broker tier's cloud side for real (proposal 0007): two secure mosquittos that read
the password file, ACL and TLS files one cloudcore writes, that cloudcore (in this
process) with `--broker` for both, and nodes that join through the API and speak the
sealed protocol over TLS with their own credentials (scripted edges, not agents: the
agent's moves are tested with real agents in the agent-side test).

It checks that the join answer carries each node's broker list, that the cloud hears
nodes on both brokers and answers each through the broker it heard it on, that
`GET /api/v1/brokermap` shows the sessions per broker (read-only token; changes need an
operator), and that a move tells the moved node its new list, after which the cloud
records the node on its new broker and keeps the map across a restart."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import shutil
import ssl
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import pytest

from cloudcore.config import Settings
from cloudcore.service import Running, run
from shared import seal, topics
from shared.brokermap import BrokerMap
from shared.codec import Ack, Desired, Report, ReportAck, Resync, decode, encode
from shared.entries import BROKER_MAP_KEY, parse_broker_map_entry
from testbed.broker import BrokerSecurity, Mosquitto

pytestmark = pytest.mark.skipif(shutil.which("mosquitto") is None
                                and not Path("/usr/sbin/mosquitto").exists(),
                                reason="needs mosquitto")


class Edge:
    """One node's MQTT session on one broker: TLS, its own login, sealed messages."""

    def __init__(self, node: str, port: int, *, password: str, key: bytes,
                 tls: ssl.SSLContext) -> None:
        self.node, self.port, self.password, self.tls = node, port, password, tls
        self.keys = seal.NodeKeys.derive(key)
        self.inbox: asyncio.Queue[Any] = asyncio.Queue()
        self._client: aiomqtt.Client | None = None
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Edge:
        self._client = aiomqtt.Client("127.0.0.1", self.port, identifier=self.node,
                                      username=self.node, password=self.password,
                                      tls_context=self.tls, clean_session=True, timeout=10)
        await self._client.__aenter__()
        await self._client.subscribe(topics.down(self.node), qos=1)
        self._reader = asyncio.create_task(self._read(), name=f"edge[{self.node}].reader")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._client is None:
            return  # left already
        assert self._reader is not None
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        client, self._client = self._client, None
        await client.__aexit__(None, None, None)  # a clean DISCONNECT: no will

    async def _read(self) -> None:
        assert self._client is not None
        async for m in self._client.messages:
            data = seal.unseal(self.keys.down, m.topic.value, bytes(m.payload))  # type: ignore[arg-type]
            self.inbox.put_nowait(decode(data))

    async def send(self, msg: Any) -> None:
        assert self._client is not None
        topic = topics.up(self.node)
        await self._client.publish(topic, seal.seal(self.keys.up, topic, encode(msg)), qos=1)

    async def recv(self, kind: type, timeout: float = 15.0) -> Any:
        async with asyncio.timeout(timeout):
            while True:
                msg = await self.inbox.get()
                if isinstance(msg, kind):
                    return msg


async def until(cond: Any, timeout: float = 15.0, what: str = "") -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.05)


@pytest.fixture
def brokers(tmp_path: Path) -> Iterator[tuple[Mosquitto, Mosquitto]]:
    a = Mosquitto(security=BrokerSecurity(tls=True), workdir=tmp_path / "mq-0")
    b = Mosquitto(security=BrokerSecurity(tls=True), workdir=tmp_path / "mq-1",
                  shared_auth=(a.passwd, a.acl))  # every broker knows every node
    try:
        yield a, b
    finally:
        for mq in (a, b):
            mq.stop()
            mq.remove()


def settings_for(tmp_path: Path, a: Mosquitto, b: Mosquitto) -> Settings:
    s = Settings()  # secure: API tokens over HTTPS, sealed messages, TLS to the brokers
    s.store.state_dir = tmp_path / "state"
    s.store.batch_interval = 0.005
    s.http.port = 0
    s.forecast.enabled = False
    s.mqtt.host, s.mqtt.port, s.mqtt.tls = "127.0.0.1", a.port, True
    s.mqtt.reconnect_base, s.mqtt.reconnect_cap = 0.1, 1.0
    s.mqtt.brokers = {"mq-0": f"mqtts://127.0.0.1:{a.port}",
                      "mq-1": f"mqtts://127.0.0.1:{b.port}"}
    s.auth.mosquitto_passwd, s.auth.mosquitto_acl = a.passwd, a.acl
    s.auth.broker_cert_dir = a.tls_dir
    return s


@contextlib.asynccontextmanager
async def cloudcore(settings: Settings) -> AsyncIterator[Running]:
    started: asyncio.Future[Running] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(run(settings, on_started=started.set_result))
    done, _ = await asyncio.wait({started, task}, timeout=30,
                                 return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        task.result()
    try:
        yield started.result()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def two_nodes() -> tuple[str, str]:
    """Two node names whose partitions have different homes under `spread` of two."""
    m = BrokerMap.spread({"mq-0": "mqtts://x:1", "mq-1": "mqtts://y:1"})
    names: dict[str, str] = {}
    i = 0
    while len(names) < 2:
        name = f"edge-{i}"
        names.setdefault(m.home(topics.partition_of(name)), name)
        i += 1
    return names["mq-0"], names["mq-1"]


async def test_nodes_on_two_secure_brokers_sessions_and_a_move(
        tmp_path: Path, brokers: tuple[Mosquitto, Mosquitto]) -> None:
    a, b = brokers
    settings = settings_for(tmp_path, a, b)
    ports = {"mq-0": a.port, "mq-1": b.port}
    n0, n1 = two_nodes()  # homes mq-0 and mq-1
    async with cloudcore(settings) as cloud:
        for f in ("ca.crt", "broker.crt", "broker.key"):  # one certificate, both brokers
            shutil.copy(a.tls_dir / f, b.tls_dir / f)
        a.start()
        b.start()
        tls = ssl.create_default_context(cafile=str(cloud.ca.cert_path))
        admin = (settings.store.state_dir / "admin.token").read_text().strip()
        async with httpx.AsyncClient(base_url=cloud.url, verify=tls,
                                     headers={"Authorization": f"Bearer {admin}"}) as api:
            await until(lambda: cloud.brokers.view()["brokers"]["mq-1"]["connected"]
                        and cloud.brokers.view()["brokers"]["mq-0"]["connected"],
                        what="cloudcore connected to both brokers")
            r = await api.post("/api/v1/jointokens", json={"ttlSeconds": 600, "uses": 2})
            token = r.json()["token"]
            joined = {}
            for node in (n0, n1):
                r = await api.post("/api/v1/join", json={"token": token, "name": node})
                assert r.status_code == 200, r.text
                joined[node] = r.json()
            # each node's list, home first; `broker` is the home for older agents
            assert joined[n0]["brokers"] == [settings.mqtt.brokers["mq-0"],
                                             settings.mqtt.brokers["mq-1"]]
            assert joined[n1]["brokers"] == [settings.mqtt.brokers["mq-1"],
                                             settings.mqtt.brokers["mq-0"]]
            assert joined[n1]["broker"] == {"host": "127.0.0.1", "port": b.port, "tls": True}
            assert joined[n0]["broker_map_version"] == 1
            await until(lambda: all(f"{n}:" in a.passwd.read_text() for n in (n0, n1))
                        and a.reloads >= 1 and b.reloads >= 1, what="brokers reloaded")
            await asyncio.sleep(0.5)  # the reload signal reaches both brokers

            def edge(node: str, broker: str) -> Edge:
                j = joined[node]
                return Edge(node, ports[broker], password=j["credentials"]["password"],
                            key=base64.b64decode(j["key"]), tls=tls)

            # n0 at home on mq-0; n1 on its fallback mq-0 first, then at home on mq-1
            async with edge(n0, "mq-0") as e0, edge(n1, "mq-0") as e1_fallback:
                await e0.send(Report(node=n0, seq=1))
                await e1_fallback.send(Report(node=n1, seq=1))
                assert (await e0.recv(ReportAck)).seq == 1
                assert (await e1_fallback.recv(ReportAck)).seq == 1  # answered where heard
                view = (await api.get("/api/v1/brokermap")).json()
                assert view["brokers"]["mq-0"]["sessions"] == 2
                assert view["brokers"]["mq-1"]["sessions"] == 0
            async with edge(n1, "mq-1") as e1:
                await e1.send(Report(node=n1, seq=2))
                assert (await e1.recv(ReportAck)).seq == 2
            view = (await api.get("/api/v1/brokermap")).json()
            assert {n: b_["sessions"] for n, b_ in view["brokers"].items()} == {
                "mq-0": 1, "mq-1": 1}
            assert view["version"] == 1 and view["persisted"] is True

            # a read-only token reads the map and may not change it
            r = await api.post("/api/v1/apitokens", json={"role": "read-only", "name": "v"})
            viewer = {"Authorization": f"Bearer {r.json()['token']}"}
            assert (await api.get("/api/v1/brokermap", headers=viewer)).status_code == 200
            p0 = topics.partition_of(n0)
            r = await api.post("/api/v1/brokermap/move", headers=viewer,
                               json={"partitions": [p0], "to": "mq-1"})
            assert r.status_code == 403
            assert "changing the broker map needs operator" in r.json()["error"]
            r = await api.delete("/api/v1/brokermap/brokers/mq-1", headers=viewer)
            assert r.status_code == 403 and "broker map" in r.json()["error"]
            r = await api.delete("/api/v1/brokermap/brokers/mq-1")
            assert r.status_code == 409 and "still home" in r.json()["error"]

            # move n0's partition to mq-1: n0 is told over the broker it is on (mq-0)
            async with edge(n0, "mq-0") as e0:
                await e0.send(Report(node=n0, seq=2))
                assert (await e0.recv(ReportAck)).seq == 2
                r = await api.post("/api/v1/brokermap/move",
                                   json={"partitions": [p0], "to": "mq-1"})
                assert r.status_code == 200, r.text
                assert r.json()["version"] == 2
                d = await e0.recv(Desired)
                entry = parse_broker_map_entry(BROKER_MAP_KEY, d.put[BROKER_MAP_KEY])
                assert entry.version == 2
                assert entry.urls == (settings.mqtt.brokers["mq-1"],
                                      settings.mqtt.brokers["mq-0"])
                assert n1 not in cloud.fleet.desired_sets.entries_of(BROKER_MAP_KEY)
                await e0.send(Ack(node=n0, epoch=d.epoch, gen=d.gen))
                # make-before-break: on the new broker first, a resync there
                async with edge(n0, "mq-1") as moved:
                    await moved.send(Resync(node=n0, epoch=d.epoch, gen=d.gen, seq=2))
                    await until(lambda: cloud.hub.routes.last_heard(n0) == "mq-1",
                                what="the cloud records n0 on mq-1")
                    await e0.__aexit__(None, None, None)  # then leave mq-0 cleanly
                    await moved.send(Report(node=n0, seq=3))
                    assert (await moved.recv(ReportAck)).seq == 3  # answered on mq-1
                    view = (await api.get("/api/v1/brokermap")).json()
                    assert {n: b_["sessions"] for n, b_ in view["brokers"].items()} == {
                        "mq-0": 0, "mq-1": 2}
                    assert view["partitions"][p0][0] == "mq-1"
                    assert cloud.fleet.nodes[n0].status.ready == "Ready"
                    assert cloud.fleet.desired_sets.get(n0).acked == d.gen  # type: ignore[union-attr]
    # the store wins on the next start: the moved partition stays where it was moved
    async with cloudcore(settings) as cloud:
        m = cloud.brokers.map
        assert m.version == 2 and m.home(topics.partition_of(n0)) == "mq-1"


async def fedctl(cloud: Running, token: str, *args: str, fails: bool = False) -> str:
    """The real fedctl CLI against the running cloudcore; its stdout (fails on an error;
    `fails`: must exit non-zero, and its stderr and stdout are returned)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fedctl", "--server", cloud.url, "--token", token,
        "--certificate-authority", str(cloud.ca.cert_path), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    if fails:
        assert proc.returncode != 0, f"fedctl {' '.join(args)} did not fail"
        return err.decode() + out.decode()
    assert proc.returncode == 0, f"fedctl {' '.join(args)}: {err.decode()}"
    return out.decode()


async def test_a_broker_added_moved_to_drained_and_removed_live_with_fedctl(
        tmp_path: Path, brokers: tuple[Mosquitto, Mosquitto]) -> None:
    """From the embedded default (no --broker: one broker mq-0 at --mqtt-host:port) to a
    second broker and back to one, while cloudcore runs."""
    a, b = brokers
    settings = settings_for(tmp_path, a, b)
    settings.mqtt.brokers = {}
    node = "edge-7"
    async with cloudcore(settings) as cloud:
        for f in ("ca.crt", "broker.crt", "broker.key"):
            shutil.copy(a.tls_dir / f, b.tls_dir / f)
        a.start()
        b.start()
        admin = (settings.store.state_dir / "admin.token").read_text().strip()
        tls = ssl.create_default_context(cafile=str(cloud.ca.cert_path))
        view = json.loads(await fedctl(cloud, admin, "get", "brokers", "-o", "json"))
        assert list(view["brokers"]) == ["mq-0"] and view["persisted"] is False
        url0, url1 = f"mqtts://127.0.0.1:{a.port}", f"mqtts://127.0.0.1:{b.port}"
        assert view["brokers"]["mq-0"]["urls"] == [url0]

        out = await fedctl(cloud, admin, "brokers", "add", "mq-1", url1)
        assert "broker/mq-1 added (map version 2)" in out
        await until(lambda: cloud.brokers.view()["brokers"]["mq-1"]["connected"],
                    what="cloudcore connected to the added broker")
        table = await fedctl(cloud, admin, "get", "brokers")
        assert "mq-1" in table and "broker map version 2" in table

        async with httpx.AsyncClient(base_url=cloud.url, verify=tls,
                                     headers={"Authorization": f"Bearer {admin}"}) as api:
            token = (await api.post("/api/v1/jointokens", json={"ttlSeconds": 600})
                     ).json()["token"]
            j = (await api.post("/api/v1/join", json={"token": token, "name": node})).json()
        assert j["brokers"] == [url0] and j["broker_map_version"] == 2
        await until(lambda: f"{node}:" in a.passwd.read_text() and a.reloads >= 1
                    and b.reloads >= 1, what="brokers reloaded")
        await asyncio.sleep(0.5)

        def edge(port: int) -> Edge:
            return Edge(node, port, password=j["credentials"]["password"],
                        key=base64.b64decode(j["key"]), tls=tls)

        p = topics.partition_of(node)
        async with edge(a.port) as e0:
            await e0.send(Report(node=node, seq=1))
            assert (await e0.recv(ReportAck)).seq == 1
            out = await fedctl(cloud, admin, "brokers", "move", "--partitions", f"{p},{p}",
                               "--to", "mq-1")
            assert "1 partition(s) now at broker/mq-1 (map version 3)" in out
            d = await e0.recv(Desired)
            assert d.put[BROKER_MAP_KEY] == {"version": 3, "urls": [url1, url0]}
            await e0.send(Ack(node=node, epoch=d.epoch, gen=d.gen))
            async with edge(b.port) as e1:
                await e1.send(Resync(node=node, epoch=d.epoch, gen=d.gen, seq=1))
                await until(lambda: cloud.hub.routes.last_heard(node) == "mq-1")
                await e0.__aexit__(None, None, None)

                await fedctl(cloud, admin, "brokers", "drain", "mq-0")
                m = cloud.brokers.map
                assert m.brokers["mq-0"].state == "draining" and m.homes()["mq-0"] == []
                # heard on the drained broker again (as on a fallback): removing it would
                # cut the node off, so it is refused, naming the sessions left
                async with edge(a.port) as e2:
                    await e2.send(Report(node=node, seq=2))
                    assert (await e2.recv(ReportAck)).seq == 2
                    assert cloud.hub.routes.last_heard(node) == "mq-0"
                    out = await fedctl(cloud, admin, "brokers", "remove", "mq-0", fails=True)
                    assert "1 session(s)" in out and "--force" in out, out
                    await e1.send(Report(node=node, seq=3))
                    assert (await e1.recv(ReportAck)).seq == 3
                out = await fedctl(cloud, admin, "brokers", "remove", "mq-0")
                assert "broker/mq-0 removed (map version 5)" in out
                view = json.loads(await fedctl(cloud, admin, "get", "brokers", "-o", "json"))
                assert list(view["brokers"]) == ["mq-1"]
                await until(lambda: not [t for t in asyncio.all_tasks() if not t.done()
                                         and "[mq-0]" in t.get_name()],
                            what="the connections to mq-0 closed")
                assert view["brokers"]["mq-1"]["sessions"] == 1
                # our node's list only lost its last fallback: one entry, no move
                d2 = await e1.recv(Desired)
                assert d2.put[BROKER_MAP_KEY] == {"version": 5, "urls": [url1]}
                await e1.send(Report(node=node, seq=4))
                assert (await e1.recv(ReportAck)).seq == 4
                assert cloud.fleet.nodes[node].status.ready == "Ready"


async def test_first_broker_flags_on_a_fleet_tell_every_joined_node(
        tmp_path: Path, brokers: tuple[Mosquitto, Mosquitto]) -> None:
    """Issue 14: nodes that joined under the one-broker default (version 1) are told
    their list when cloudcore restarts with its first `--broker` flags: the map is
    version 2, every node gets a `broker/-/map` entry, and the told marker follows."""
    a, b = brokers
    settings = settings_for(tmp_path, a, b)
    flags, settings.mqtt.brokers = settings.mqtt.brokers, {}
    nodes = two_nodes()
    async with cloudcore(settings) as cloud:
        admin = (settings.store.state_dir / "admin.token").read_text().strip()
        tls = ssl.create_default_context(cafile=str(cloud.ca.cert_path))
        async with httpx.AsyncClient(base_url=cloud.url, verify=tls,
                                     headers={"Authorization": f"Bearer {admin}"}) as api:
            for node in nodes:
                token = (await api.post("/api/v1/jointokens", json={"ttlSeconds": 600})
                         ).json()["token"]
                j = (await api.post("/api/v1/join", json={"token": token, "name": node})
                     ).json()
                assert j["broker_map_version"] == 1
        await cloud.store.flush()
    settings.mqtt.brokers = flags
    async with cloudcore(settings) as cloud:
        m = cloud.brokers.map
        assert m.version == 2 and list(m.brokers) == ["mq-0", "mq-1"]

        def told() -> dict[str, Any]:
            return cloud.fleet.desired_sets.entries_of(BROKER_MAP_KEY)

        await until(lambda: set(told()) == set(nodes), what="every node told")
        for node in nodes:
            entry = parse_broker_map_entry(BROKER_MAP_KEY, told()[node])
            assert entry.version == 2
            assert list(entry.urls) == m.urls_for(topics.partition_of(node))
        await cloud.store.flush()
        assert cloud.store.load()["meta"]["brokermap-told"] == 2
