"""The agent follows its broker list (proposal 0007).

The order logic (`edgecore.link.brokers`) is tested as values; the link and the agent
against two real mosquittos and a scripted cloud listening on both: fallback when the
home does not answer, back home after `home_retry_s`, a make-before-break move when a
`broker/-/map` entry changes the list (no will on the broker left, the link never
down), the moved list surviving an agent restart, and desired entries of kinds this
agent does not know applied, acked and otherwise ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from edgecore.agent import Agent
from edgecore.config import AgentSettings
from edgecore.errors import ConfigError
from edgecore.join import JoinedConfig, JoinError, load_config
from edgecore.link import BrokerList, BrokerSource, Link
from shared import topics
from shared.codec import Ack, Desired, Resync, Will, decode, encode
from shared.entries import BROKER_MAP_KEY, broker_map_entry
from testbed.broker import Mosquitto

from edgecore_fakes import FakeRuntime  # isort: skip

NODE = "edge-brokers-1"
pytestmark = pytest.mark.timeout(90)


# -- the order, as values ----------------------------------------------------------------


def test_list_order_and_what_is_ahead() -> None:
    lst = BrokerList.of(["mqtts://a:8883", "mqtts://b", "mqtts://a:8883/", "mqtt://c:1884"],
                        version=3)
    assert lst.urls == ("mqtts://a:8883", "mqtts://b:8883", "mqtt://c:1884")  # dups dropped
    a, b, c = lst.endpoints
    assert (b.host, b.port, b.tls, c.tls) == ("b", 8883, True, False)
    assert lst.home == a and lst.order() == (a, b, c)
    assert lst.ahead_of(a) == ()
    assert lst.ahead_of(c) == (a, b)
    elsewhere = BrokerList.of(["mqtts://gone:8883"]).home
    assert lst.ahead_of(elsewhere) == (a, b, c)  # moved away from it: every one is better
    with pytest.raises(ValueError):
        BrokerList(endpoints=())


def test_entry_wins_over_the_join_list_while_present(caplog: pytest.LogCaptureFixture) -> None:
    joined = BrokerList.of(["mqtts://a:8883", "mqtts://b:8883"], version=1)
    assert BrokerList.effective(joined, {}) is joined
    moved = BrokerList.effective(
        joined, {BROKER_MAP_KEY: broker_map_entry(4, ["mqtts://b:8883", "mqtts://a:8883"])})
    assert (moved.version, moved.urls) == (4, ("mqtts://b:8883", "mqtts://a:8883"))
    # A malformed entry leaves the node on its join list (and says why).
    bad = BrokerList.effective(joined, {BROKER_MAP_KEY: {"version": 5, "urls": ["http://x"]}})
    assert bad is joined
    assert "ignoring the desired broker/-/map entry" in caplog.text and "http://x" in caplog.text
    joined4 = BrokerList.of(["mqtts://a:8883"], version=4)
    same = BrokerList.effective(joined4, {BROKER_MAP_KEY: broker_map_entry(4, ["mqtts://c"])})
    assert same.urls == ("mqtts://c:8883",)  # the join list's own version: the entry wins
    joined5 = BrokerList.of(["mqtts://a:8883"], version=5)
    assert BrokerList.effective(joined5, {BROKER_MAP_KEY: broker_map_entry(4, ["mqtts://c"])}
                                ) is joined5  # an entry older than the join list: not used

    items: dict[str, Any] = {}
    source = BrokerSource(joined, lambda: items)
    assert source() is joined
    items[BROKER_MAP_KEY] = broker_map_entry(6, ["mqtts://c:8883"])
    first = source()
    assert first.urls == ("mqtts://c:8883",) and source() is first  # worked out once
    del items[BROKER_MAP_KEY]  # the cloud's map is back to the join list: entry deleted
    assert source() is joined


def test_settings_list_and_its_checks(tmp_path: Path) -> None:
    s = AgentSettings(node="n1", state_dir=tmp_path, mqtt_host="h", mqtt_port=1884)
    assert s.broker_urls == ("mqtt://h:1884",)
    s = AgentSettings(node="n1", state_dir=tmp_path, tls=True, mqtt_host="h", mqtt_port=8884)
    assert s.broker_urls == ("mqtts://h:8884",)
    s = AgentSettings(node="n1", state_dir=tmp_path, tls=True,
                      mqtt_brokers=("mqtts://a:1", "mqtts://b:2"))
    assert s.broker_urls == ("mqtts://a:1", "mqtts://b:2")
    with pytest.raises(ConfigError, match="mqtt_brokers") as bad:
        AgentSettings(node="n1", state_dir=tmp_path, mqtt_brokers=("tcp://a:1",))
    assert "tcp://a:1" in str(bad.value)
    with pytest.raises(ConfigError, match="plain MQTT"):
        AgentSettings(node="n1", state_dir=tmp_path, tls=True, mqtt_brokers=("mqtt://a:1",))


def test_a_tls_agent_skips_the_plain_entries_of_a_mixed_list(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Issue 14: a mixed plain/TLS map stranded TLS agents: they refused to start on it.
    with caplog.at_level("WARNING", logger="edgecore.config"):
        s = AgentSettings(node="n1", state_dir=tmp_path, tls=True,
                          mqtt_brokers=("mqtt://a:1883", "mqtts://b:8883", "mqtt://c:1"))
    assert s.broker_urls == ("mqtts://b:8883",)
    assert "skipping mqtt://a:1883, mqtt://c:1" in caplog.text
    plain = AgentSettings(node="n1", state_dir=tmp_path,
                          mqtt_brokers=("mqtt://a:1883", "mqtts://b:8883"))
    assert plain.broker_urls == ("mqtt://a:1883", "mqtts://b:8883")  # a plain agent: both
    with pytest.raises(ConfigError, match="broker_move_jitter_s"):
        AgentSettings(node="n1", state_dir=tmp_path, broker_move_jitter_s=-1)


def test_joined_config_keeps_the_list_and_reads_old_files(tmp_path: Path) -> None:
    old = {"name": "n1", "broker": {"host": "10.0.0.1", "port": 8883}, "tls": True}
    cfg = JoinedConfig.parse(old, source="old.json")
    assert (cfg.brokers, cfg.broker_map_version) == ((), 0)
    assert cfg.broker_urls() == ("mqtts://10.0.0.1:8883",)  # an old file: [its broker]
    new = {**old, "brokers": ["mqtts://10.0.0.1:8883", "mqtts://10.0.0.2"],
           "broker_map_version": 7}
    cfg = JoinedConfig.parse(new, source="new.json")
    assert cfg.broker_urls() == ("mqtts://10.0.0.1:8883", "mqtts://10.0.0.2:8883")
    assert cfg.broker_map_version == 7
    path = tmp_path / "edgecore.json"
    path.write_text(json.dumps(cfg.dump()))
    assert load_config(path) == cfg
    with pytest.raises(JoinError, match=r"brokers\[1\]"):
        JoinedConfig.parse({**new, "brokers": ["mqtts://a", "ftp://b"]}, source="bad.json")


# -- the link and the agent against two real brokers -------------------------------------


@pytest.fixture
def brokers(tmp_path: Path) -> Iterator[tuple[Mosquitto, Mosquitto]]:
    """Two open brokers, NOT started: each test starts them when its story says."""
    a = Mosquitto(workdir=tmp_path / "mq-a", insecure=True)
    b = Mosquitto(workdir=tmp_path / "mq-b", insecure=True)
    try:
        yield a, b
    finally:
        for mq in (a, b):
            mq.stop()
            mq.remove()


def url(mq: Mosquitto) -> str:
    return f"mqtt://127.0.0.1:{mq.port}"


class Cloud:
    """Listens to the node's up and will topics on several brokers; records (broker,
    message) and can send down on any of them."""

    def __init__(self) -> None:
        self.clients: dict[str, aiomqtt.Client] = {}
        self.seen: list[tuple[str, Any]] = []
        self.inbox: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    async def reader(self, name: str, client: aiomqtt.Client) -> None:
        async for m in client.messages:
            item = (name, decode(bytes(m.payload)))  # type: ignore[arg-type]
            self.seen.append(item)
            await self.inbox.put(item)

    async def expect(self, broker: str, kind: type, pred: Callable[[Any], bool] = lambda m: True,
                     timeout: float = 15) -> Any:
        async with asyncio.timeout(timeout):
            while True:
                name, msg = await self.inbox.get()
                if name == broker and isinstance(msg, kind) and pred(msg):
                    return msg

    async def send(self, broker: str, msg: Any) -> None:
        await self.clients[broker].publish(topics.down(NODE), encode(msg), qos=1)

    def wills(self) -> list[str]:
        return [name for name, msg in self.seen if isinstance(msg, Will)]


@contextlib.asynccontextmanager
async def cloud_on(**mqs: Mosquitto) -> AsyncIterator[Cloud]:
    cloud = Cloud()
    async with contextlib.AsyncExitStack() as stack:
        tasks = []
        for name, mq in mqs.items():
            client = await stack.enter_async_context(
                aiomqtt.Client("127.0.0.1", mq.port, identifier=f"cloud-{name}"))
            await client.subscribe(topics.up(NODE), qos=1)
            await client.subscribe(topics.will(NODE), qos=1)
            cloud.clients[name] = client
            tasks.append(asyncio.create_task(cloud.reader(name, client)))
        try:
            yield cloud
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


class _Hello:
    """A LinkHandler that only says hello."""

    def hello(self) -> Resync:
        return Resync(node=NODE, gen=0)

    def pending(self, after: int) -> list[tuple[int, bytes]]:
        return []

    async def handle(self, msg: Any) -> list[Any]:
        return []


@contextlib.asynccontextmanager
async def watching(link: Link) -> AsyncIterator[list[float]]:
    """Samples `link.connected` every millisecond; yields the times it was seen down."""
    down: list[float] = []

    async def sample() -> None:
        while True:
            if not link.connected:
                down.append(time.monotonic())
            await asyncio.sleep(0.001)

    task = asyncio.create_task(sample())
    try:
        yield down
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@contextlib.asynccontextmanager
async def run_link(link: Link) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(link.run())
    try:
        yield task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_falls_back_when_home_is_down_and_goes_home_when_it_returns(
        brokers: tuple[Mosquitto, Mosquitto]) -> None:
    home, fallback = brokers
    fallback.start()  # the home is not running: connect refused
    lst = BrokerList.of([url(home), url(fallback)])
    link = Link(node=NODE, host="unused", port=1, handler=_Hello(), brokers=lambda: lst,
                home_retry_s=0.5, move_jitter_s=0)
    async with cloud_on(fallback=fallback) as cloud, run_link(link):
        await cloud.expect("fallback", Resync)
        assert link.endpoint == lst.endpoints[1] and link.stats.connect_failures >= 1
        home.start()
        async with cloud_on(home=home) as at_home, watching(link) as down:
            await at_home.expect("home", Resync, timeout=10)
            await asyncio.sleep(0.3)  # the old session's DISCONNECT has gone out
            assert link.endpoint == lst.home and link.stats.moves == 1
            assert down == []  # the link never went down while it moved
        assert cloud.wills() == []  # a clean DISCONNECT: the fallback sent no will


async def test_a_dead_home_costs_a_round_then_the_next_broker(
        brokers: tuple[Mosquitto, Mosquitto]) -> None:
    """Connected at home, the home dies: the next round finds the fallback."""
    home, fallback = brokers
    home.start()
    fallback.start()
    lst = BrokerList.of([url(home), url(fallback)])
    link = Link(node=NODE, host="unused", port=1, handler=_Hello(), brokers=lambda: lst,
                home_retry_s=3600, move_jitter_s=0)
    async with cloud_on(home=home, fallback=fallback) as cloud, run_link(link):
        await cloud.expect("home", Resync)
        assert link.endpoint == lst.home
        home.kill()
        await cloud.expect("fallback", Resync, timeout=20)
        assert link.endpoint == lst.endpoints[1]


async def test_a_changed_list_moves_make_before_break(
        brokers: tuple[Mosquitto, Mosquitto]) -> None:
    a, b = brokers
    a.start()
    b.start()
    lists = [BrokerList.of([url(a)], version=1)]
    changed = asyncio.Event()
    link = Link(node=NODE, host="unused", port=1, handler=_Hello(), brokers=lambda: lists[-1],
                brokers_changed=changed, home_retry_s=3600, move_jitter_s=0.5)
    async with cloud_on(a=a, b=b) as cloud, run_link(link):
        await cloud.expect("a", Resync)
        async with watching(link) as down:
            changed.set()  # an applied desired set that did not touch the list: no move
            await asyncio.sleep(0.8)
            assert link.endpoint == lists[0].home and link.stats.moves == 0
            lists.append(BrokerList.of([url(b), url(a)], version=2))
            changed.set()
            await cloud.expect("b", Resync, timeout=10)
            await asyncio.sleep(0.3)
            assert link.endpoint == lists[-1].home and link.stats.moves == 1
            assert down == []
        # Take the client id over on a: a session the move left there would will now
        # (without this the test passed with the old session never closed).
        async with aiomqtt.Client("127.0.0.1", a.port, identifier=NODE, clean_session=True):
            pass
        await asyncio.sleep(0.5)
        assert cloud.wills() == []


def agent_settings(tmp_path: Path, urls: list[str], **kw: Any) -> AgentSettings:
    return AgentSettings(node=NODE, state_dir=tmp_path / "state", mqtt_brokers=tuple(urls),
                         report_batch_s=0.05, reconcile_interval_s=0.2, heartbeat_s=3600,
                         reconnect_initial_s=0.05, reconnect_max_s=0.5,
                         broker_move_jitter_s=0, broker_home_retry_s=3600, **kw)


@contextlib.asynccontextmanager
async def running(agent: Agent) -> AsyncIterator[None]:
    task = asyncio.create_task(agent.run())
    await asyncio.wait_for(agent.started.wait(), 5)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_agent_follows_the_map_entry_and_restarts_on_the_new_list(
        tmp_path: Path, brokers: tuple[Mosquitto, Mosquitto]) -> None:
    a, b = brokers
    a.start()
    b.start()
    agent = Agent(agent_settings(tmp_path, [url(a), url(b)]), runtime=FakeRuntime(clock=time.time))
    async with cloud_on(a=a, b=b) as cloud:
        async with running(agent):
            hello = await cloud.expect("a", Resync)
            assert hello.gen == 0
            # The map moves the node's partition to b, in a snapshot with an entry kind no
            # agent knows yet: both are persisted and acked, the unknown one ignored.
            await cloud.send("a", Desired(
                node=NODE, epoch="E", base=0, gen=2, snapshot=True,
                put={BROKER_MAP_KEY: broker_map_entry(2, [url(b), url(a)]),
                     "future/-/thing": {"whatever": [1, 2]}}))
            # Acked on a, the broker it came through, even with no move jitter (0 here):
            # the move waits for the message in hand, so its Ack is not lost.
            assert (await cloud.expect("a", Ack)).gen == 2
            moved = await cloud.expect("b", Resync, timeout=10)
            assert (moved.epoch, moved.gen) == ("E", 2)  # the resync names what it holds
            assert agent.link is not None
            # the new session says hello before the link swaps over to it: wait for that
            async with asyncio.timeout(5):
                while agent.link.endpoint is None or agent.link.endpoint.url != url(b):
                    await asyncio.sleep(0.01)
            assert agent.sync is not None and agent.sync.stats.applied == 1
            assert agent.sync.stats.unexpected == 0
            # Later changes reach it on b, and the reconciler still passes over a desired
            # set holding kinds it does not know.
            reconciler = agent.reconciler
            assert reconciler is not None
            passes = reconciler.passes
            await cloud.send("b", Desired(node=NODE, epoch="E", base=2, gen=3,
                                          put={"future/-/other": 1}))
            assert (await cloud.expect("b", Ack)).gen == 3
            async with asyncio.timeout(10):
                while reconciler.passes <= passes:
                    await asyncio.sleep(0.02)
        assert cloud.wills() == []  # neither the move nor the stop fired a will
        # A restart starts from the persisted entry: b first, though the join list says a.
        again = Agent(agent_settings(tmp_path, [url(a), url(b)]),
                      runtime=FakeRuntime(clock=time.time))
        async with running(again):
            hello = await cloud.expect("b", Resync)
            assert hello.gen == 3
            assert not any(name == "a" and isinstance(m, Resync) and m.gen == 3
                           for name, m in cloud.seen)


def test_join_keeps_the_answers_list_and_run_uses_it(tmp_path: Path, capsys) -> None:
    """`edgecore join` against a real cloudcore API writes the node's broker list and the
    map version from the answer; `run` takes them unless a broker is named on its
    command line."""
    import sys

    from typer.testing import CliRunner

    from edgecore.__main__ import build_parser, main, settings_from_args
    from fedctl.app import app as fedctl_app

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
    from e2e_cloud import serve_cloud

    for cloud in serve_cloud(tmp_path):
        r = CliRunner().invoke(fedctl_app, ["--server", cloud.url, "token", "create"])
        assert r.exit_code == 0, r.output
        d = tmp_path / "edge"
        rc = main(["join", "--cloud", cloud.url, "--token", r.stdout.strip(), "--name",
                   "edge-7", "--state-dir", str(d), "--insecure-skip-tls-verify"])
        assert rc == 0, capsys.readouterr().err
        cfg = json.loads((d / "edgecore.json").read_text())
        # One broker (no --broker flags): the embedded map, version 1, its one URL.
        assert cfg["brokers"] in (["mqtt://broker.example:8883"],
                                  ["mqtts://broker.example:8883"])
        assert cfg["broker_map_version"] == 1
        s = settings_from_args(build_parser().parse_args(["run", "--state-dir", str(d)]))
        assert s.mqtt_brokers == tuple(cfg["brokers"])
        assert s.broker_map_version == cfg["broker_map_version"]
        s = settings_from_args(build_parser().parse_args(
            ["run", "--state-dir", str(d), "--mqtt-host", "10.0.0.1"]))
        assert s.mqtt_brokers == () and s.broker_urls[0].endswith("10.0.0.1:8883")


class _Stuck(_Hello):
    """Handles every message by waiting forever (a message in hand when a move comes)."""

    def __init__(self) -> None:
        self.took = asyncio.Event()

    async def handle(self, msg: Any) -> list[Any]:
        self.took.set()
        await asyncio.Event().wait()
        return []


async def test_stop_during_a_move_leaves_no_session_behind(
        brokers: tuple[Mosquitto, Mosquitto]) -> None:
    """The agent stops while a move has connected to the new broker and waits for the
    message in hand: the new session is closed cleanly, nothing is left on either
    broker (a leftover session would fire its will when its client id is taken over)."""
    a, b = brokers
    a.start()
    b.start()
    lists = [BrokerList.of([url(a)], version=1)]
    changed = asyncio.Event()
    handler = _Stuck()
    link = Link(node=NODE, host="unused", port=1, handler=handler, brokers=lambda: lists[-1],
                brokers_changed=changed, move_jitter_s=0)
    async with cloud_on(a=a, b=b) as cloud:
        task = asyncio.create_task(link.run())
        await cloud.expect("a", Resync)
        await cloud.send("a", Desired(node=NODE, epoch="E", base=0, gen=1, snapshot=True,
                                      put={}))
        await asyncio.wait_for(handler.took.wait(), 10)
        lists.append(BrokerList.of([url(b)], version=2))
        changed.set()
        await asyncio.sleep(1.0)  # the move connects to b and waits for the message
        assert link.endpoint == lists[0].home and link.stats.moves == 0
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)
        for mq in (a, b):  # take the client id over on both: a live session would will
            async with aiomqtt.Client("127.0.0.1", mq.port, identifier=NODE,
                                      clean_session=True):
                pass
        await asyncio.sleep(0.5)
        assert cloud.wills() == []


async def test_a_plain_agent_keeps_the_fleet_ca_for_the_mqtts_brokers_of_its_list(
        tmp_path: Path) -> None:
    """Issue 14: an agent that joined a plain broker dropped the fleet CA, so an
    `mqtts://` broker of a mixed map (verified against the system CAs) never took it. It
    keeps the CA now: its home (plain) is down, and it lands on the TLS fallback."""
    import shutil
    import ssl

    from edgecore.__main__ import build_parser, settings_from_args
    from edgecore.join import config_path, write_config
    from testbed.ports import free_port

    secure, ca = secure_broker(tmp_path)
    state = tmp_path / "state"
    state.mkdir()
    shutil.copy(ca.cert_path, state / "ca.crt")
    dead = f"mqtt://127.0.0.1:{free_port('127.0.0.1')}"
    tls_url = f"mqtts://127.0.0.1:{secure.port}"
    write_config(config_path(state), JoinedConfig(
        name=NODE, broker_host="127.0.0.1", broker_port=1, username=NODE,
        password="node-pw", tls=False, ca_file=str(state / "ca.crt"),
        brokers=(dead, tls_url), broker_map_version=2))
    s = settings_from_args(build_parser().parse_args(
        ["run", "--state-dir", str(state), "--insecure", "--reconnect-max", "0.5"]))
    assert not s.tls and s.ca_file == state / "ca.crt"
    assert s.broker_urls == (dead, tls_url)
    with secure:
        tls = ssl.create_default_context(cafile=str(ca.cert_path))
        async with aiomqtt.Client("127.0.0.1", secure.port, identifier="svc",
                                  username="svc", password="svc-pw", tls_context=tls) as c:
            await c.subscribe(topics.up(NODE), qos=1)
            agent = Agent(s, runtime=FakeRuntime(clock=time.time))
            async with running(agent):
                async with asyncio.timeout(20):
                    async for m in c.messages:
                        if isinstance(decode(bytes(m.payload)), Resync):  # type: ignore[arg-type]
                            break
                assert agent.link.connected


def secure_broker(tmp_path: Path) -> tuple[Mosquitto, Any]:
    """A TLS mosquitto (not started) with certificates from a fleet CA, NODE's login
    (password node-pw) and a cloud login `svc` (svc-pw); and that CA."""
    import shutil
    import subprocess

    from cloudcore.auth.pki import FleetCA
    from testbed.broker import BrokerSecurity

    if shutil.which("mosquitto_passwd") is None:
        pytest.skip("mosquitto_passwd is not installed")
    ca = FleetCA.open(tmp_path / "pki")
    secure = Mosquitto(workdir=tmp_path / "mq-tls", security=BrokerSecurity())
    ca.write_broker_certs(secure.tls_dir, ["127.0.0.1"])
    secure.passwd.touch()
    for user, pw in ((NODE, "node-pw"), ("svc", "svc-pw")):
        subprocess.run(["mosquitto_passwd", "-b", str(secure.passwd), user, pw], check=True,
                       capture_output=True)
    secure.acl.write_text("user svc\ntopic readwrite fed/v1/#\n\n"
                          "pattern read fed/v1/+/%u/down\npattern write fed/v1/+/%u/up\n"
                          "pattern write fed/v1/+/%u/will\n")
    return secure, ca


async def test_a_tls_link_skips_the_plain_brokers_of_a_mixed_map_entry(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Issue 14: a TLS agent given a mixed list by the map (plain home, TLS fallback)
    tried the plain home first on every round and every home retry, and was refused;
    it now leaves the plain entries out of its list (warned once) and goes to TLS."""
    from edgecore.link.link import TlsFiles
    from testbed.ports import free_port

    secure, ca = secure_broker(tmp_path)
    plain = f"mqtt://127.0.0.1:{free_port('127.0.0.1')}"
    tls_url = f"mqtts://127.0.0.1:{secure.port}"
    mixed = BrokerList.of([plain, tls_url], version=3)
    link = Link(node=NODE, host="127.0.0.1", port=1, handler=_Hello(),
                username=NODE, password="node-pw", tls=TlsFiles(ca_file=ca.cert_path),
                brokers=lambda: mixed, home_retry_s=0.2)
    assert (link.host, link.port) == ("127.0.0.1", secure.port)  # the TLS one is home
    with secure, caplog.at_level("WARNING", logger="edgecore.link.link"):
        async with run_link(link):
            async with asyncio.timeout(15):
                while not link.connected:
                    await asyncio.sleep(0.02)
            await asyncio.sleep(0.5)  # past a home retry or two
            assert link.endpoint is not None and link.endpoint.url == tls_url
    assert "refusing plain" not in caplog.text
    assert caplog.text.count(f"skipping {plain}") == 1
