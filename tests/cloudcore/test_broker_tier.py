"""The broker tier's cloud side (proposal 0007) without a broker: the map's start-up
rules, live changes persisted in a real LMDB store and told to exactly the nodes whose
list changed, and the hub following each node to the broker it was last heard on."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cloudcore_fakes import FakeStore, add_node, make_fleet

from cloudcore.config import StoreSettings, SyncSettings
from cloudcore.errors import Conflict, NotFound
from cloudcore.fleet import Fleet
from cloudcore.metrics import Metrics
from cloudcore.store import Store
from cloudcore.synchub import SyncHub
from cloudcore.synchub.brokers import (
    STORE_DB,
    STORE_KEY,
    TOLD_KEY,
    BrokerTier,
    Routes,
    initial_map,
    initial_told,
)
from shared import topics
from shared.brokermap import Broker, BrokerMap
from shared.codec import Report, ReportAck, Will, decode, encode
from shared.entries import BROKER_MAP_KEY, parse_broker_map_entry
from shared.errors import ObjectError

TWO = {"mq-0": "mqtts://b0:8883", "mq-1": "mqtts://b1:8883"}


def nodes_by_partition(count: int) -> dict[int, str]:
    """One node name per partition for the first `count` distinct partitions hit."""
    out: dict[int, str] = {}
    i = 0
    while len(out) < count:
        name = f"n{i}"
        out.setdefault(topics.partition_of(name), name)
        i += 1
    return out


class FakeConnections:
    def __init__(self) -> None:
        self.opened: list[str] = []
        self.closed: list[str] = []

    def open(self, name: str, broker: Broker) -> None:
        self.opened.append(name)

    def close(self, name: str) -> None:
        self.closed.append(name)

    def connected(self, name: str) -> bool:
        return name == "mq-0"


def test_initial_map_store_wins_flags_add_default_is_not_persisted() -> None:
    m, store = initial_map(None, {}, default_url="mqtts://cloud.example:8883")
    assert (m.version, list(m.brokers), store) == (1, ["mq-0"], False)
    assert m.urls_for(7) == ["mqtts://cloud.example:8883"]
    m, store = initial_map(None, TWO, default_url="x")
    assert store and m.home(0) == "mq-0" and m.home(1) == "mq-1"
    stored = m.move([0], "mq-1").to_value()
    again, store = initial_map(stored, TWO, default_url="x")
    assert again.to_value() == stored and not store  # the store wins over the flags
    grown, store = initial_map(stored, {**TWO, "mq-2": "mqtts://b2"}, default_url="x")
    assert store and grown.version == 3 and grown.homes()["mq-2"] == []
    with pytest.raises(ObjectError, match="broker map in the store is invalid"):
        initial_map({"version": 1}, {}, default_url="x")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with Store(StoreSettings(state_dir=tmp_path / "state", batch_interval=0.005)) as s:
        writer = asyncio.create_task(s.run())
        try:
            yield s
        finally:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)


def make_tier(fleet: Fleet, store: Store, m: BrokerMap,
              conns: FakeConnections) -> BrokerTier:
    def tell(entries: dict[str, dict[str, Any]]) -> None:
        for node, value in entries.items():
            fleet.desired_sets.put_entry(node, BROKER_MAP_KEY, value)
        fleet.commit()

    return BrokerTier(routes=Routes(m), store=store, connections=conns,
                      nodes=lambda: list(fleet.nodes), tell=tell, persisted=False)


async def test_changes_are_persisted_and_told_only_to_nodes_whose_list_changed(
        store: Store, tmp_path: Path) -> None:
    fleet = make_fleet()
    by_p = nodes_by_partition(40)
    for name in by_p.values():
        add_node(fleet, name)
    conns = FakeConnections()
    tier = make_tier(fleet, store, BrokerMap.spread(TWO), conns)
    p_on_0 = sorted(p for p in by_p if tier.map.home(p) == "mq-0")[:3]

    view = await tier.move(p_on_0, "mq-1")
    assert view["version"] == 2
    told = fleet.desired_sets.entries_of(BROKER_MAP_KEY)
    assert set(told) == {by_p[p] for p in p_on_0}  # nobody else
    entry = parse_broker_map_entry(BROKER_MAP_KEY, told[by_p[p_on_0[0]]])
    assert entry.version == 2 and entry.urls == ("mqtts://b1:8883", "mqtts://b0:8883")
    nd = fleet.desired_sets.get(by_p[p_on_0[0]])
    assert nd is not None and BROKER_MAP_KEY in nd.items  # rides the desired set
    assert (await tier.move(p_on_0, "mq-1"))["version"] == 2  # nothing to do, no version

    await tier.add("mq-2", "mqtts://b2:8883")
    assert conns.opened == ["mq-2"] and tier.map.version == 3
    assert len(fleet.desired_sets.entries_of(BROKER_MAP_KEY)) == 3  # no list changed

    with pytest.raises(NotFound):
        await tier.move([1], "mq-9")
    with pytest.raises(Conflict, match="still home of"):
        await tier.remove("mq-0")
    on_0 = {p for p in by_p if tier.map.home(p) == "mq-0"}
    await tier.drain("mq-0")
    assert tier.map.homes()["mq-0"] == []
    told = fleet.desired_sets.entries_of(BROKER_MAP_KEY)
    # mq-0's partitions changed (it went last); those already (mq-1, mq-0) did not
    assert set(told) == {by_p[p] for p in on_0 | set(p_on_0)}
    assert len(told) < len(by_p)
    await tier.remove("mq-0")
    assert conns.closed == ["mq-0"]
    with pytest.raises(Conflict, match="only active broker"):
        tier2 = make_tier(fleet, store, BrokerMap.single("mq-0", "mqtts://b0"), conns)
        await tier2.drain("mq-0")

    view = tier.view()
    assert view["brokers"]["mq-1"]["connected"] is False and view["persisted"] is True
    # durable: the store holds the map that was answered
    await store.flush()
    stored = store.load()[STORE_DB][STORE_KEY]
    assert BrokerMap.from_value(stored) == tier.map and tier.map.version == 5


async def test_a_broker_map_entry_survives_a_reload_of_the_fleet() -> None:
    store = FakeStore()
    fleet = make_fleet(store)
    add_node(fleet, "n1")
    value = {"version": 2, "urls": ["mqtts://b1:8883"]}
    fleet.desired_sets.put_entry("n1", BROKER_MAP_KEY, value)
    fleet.commit()
    gen = fleet.desired_sets.get("n1").gen  # type: ignore[union-attr]
    records: dict[str, dict[str, Any]] = {}
    for (db, key), v in store.data.items():
        records.setdefault(db, {})[key] = v
    again = make_fleet(FakeStore())
    again.load(records)
    again.commit()
    assert again.desired_sets.entry("n1", BROKER_MAP_KEY) == value
    nd = again.desired_sets.get("n1")
    assert nd is not None and nd.gen == gen and nd.items[BROKER_MAP_KEY][0] == value


class DurableStore(FakeStore):
    def durable(self) -> asyncio.Future[None]:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


async def test_the_hub_answers_through_the_broker_it_heard_the_node_on() -> None:
    fleet = make_fleet()
    routes = Routes(BrokerMap.spread(TWO))
    hub = SyncHub(nodes=fleet, desired=fleet.desired_sets, store=DurableStore(),  # type: ignore[arg-type]
                  settings=SyncSettings(), metrics=Metrics(), insecure=True, routes=routes)
    sent: list[tuple[str, Any]] = []
    hub.attach(lambda part, topic, payload, broker: sent.append((broker, decode(payload))))
    node = "n1"
    home = routes.map.home(topics.partition_of(node))
    other = "mq-1" if home == "mq-0" else "mq-0"
    hub.handler_for(other)(topics.up(node), encode(Report(node=node, seq=1)))
    assert [(b, type(m)) for b, m in sent] == [(other, ReportAck)]
    assert routes.sessions() == {other: 1} and routes.last_heard(node) == other
    # a will through the broker it left (not cleanly) is stale: still Ready
    hub.handler_for(home)(topics.will(node), encode(Will(node=node)))
    assert fleet.nodes[node].status.ready == "Ready"
    hub.handler_for(home)(topics.up(node), encode(Report(node=node, seq=2)))
    assert sent[-1][0] == home and routes.sessions() == {home: 1}
    hub.handler_for(home)(topics.will(node), encode(Will(node=node)))
    assert fleet.nodes[node].status.ready == "NotReady"
    # a node never heard is sent to through its partition's home
    assert routes.broker_for("never", topics.partition_of("never")) == routes.map.home(
        topics.partition_of("never"))


def test_broker_flags_are_checked_before_anything_starts() -> None:
    from cloudcore.__main__ import parse_args
    from cloudcore.errors import ConfigError

    s = parse_args(["--broker", "mq-0=mqtts://a:8883", "--broker", "mq-1=mqtts://b"])
    assert s.validate().mqtt.brokers == {"mq-0": "mqtts://a:8883", "mq-1": "mqtts://b"}
    for flags, words in ((["--broker", "mq-0"], "NAME=URL"),
                         (["--broker", "a=mqtts://x", "--broker", "a=mqtts://y"], "twice"),
                         (["--broker", "MQ_0=mqtts://x"], "DNS label"),
                         (["--broker", "mq-0=tcp://x:1"], "not a broker URL"),
                         (["--broker", "mq-0=mqtt://x:1883"], "needs --insecure")):
        with pytest.raises(ConfigError, match=words):
            parse_args(flags).validate()
    assert parse_args(["--insecure", "--broker", "mq-0=mqtt://x"]).validate().insecure


async def test_a_change_reaching_many_nodes_is_told_in_slices(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    from cloudcore.synchub import brokers as brokers_module

    monkeypatch.setattr(brokers_module, "TELL_SLICE", 4)
    names = [f"n{i}" for i in range(50)]
    calls: list[dict[str, Any]] = []
    m = BrokerMap.single("mq-0", "mqtts://b0").add("mq-1", "mqtts://b1")
    tier = BrokerTier(routes=Routes(m), store=store, connections=FakeConnections(),
                      nodes=lambda: names, tell=lambda e: calls.append(dict(e)),
                      persisted=True)
    await tier.drain("mq-0")  # every partition's list changes: every node is told
    assert all(len(c) <= 4 for c in calls) and len(calls) >= 13
    told = [n for c in calls for n in c]
    assert sorted(told) == sorted(names)  # each once
    assert {v["urls"][0] for c in calls for v in c.values()} == {"mqtts://b1:8883"}


async def test_a_deleted_node_no_longer_counts_as_a_session(store: Store) -> None:
    # `fedctl get brokers` says: remove a drained broker once it shows no sessions. A
    # node deleted while last heard there counted for ever (until a restart).
    fleet = make_fleet()
    for name in ("n1", "n2"):
        add_node(fleet, name)
    tier = make_tier(fleet, store, BrokerMap.spread(TWO), FakeConnections())
    tier.routes.heard("n1", "mq-1")
    tier.routes.heard("n2", "mq-1")
    assert tier.view()["brokers"]["mq-1"]["sessions"] == 2
    fleet.delete("Node", None, "n1")
    assert tier.view()["brokers"]["mq-1"]["sessions"] == 1
    assert tier.routes.last_heard("n1") is None and tier.routes.last_heard("n2") == "mq-1"


async def test_first_broker_flags_on_a_fleet_are_version_2_and_told_to_every_node(
        store: Store) -> None:
    # Issue 14: nodes joined under the one-broker default (version 1). When --broker flags
    # first appear, the map they build must be newer than what the nodes hold, and every
    # node must be told its list, or they stay on the broker they joined.
    m, to_store = initial_map(None, TWO, default_url="mqtts://old:8883", joined=True)
    assert to_store and m.version == 2
    assert initial_map(None, TWO, default_url="x")[0].version == 1  # a fresh fleet
    fleet = make_fleet()
    by_p = nodes_by_partition(6)
    for name in by_p.values():
        add_node(fleet, name)
    tier = make_tier(fleet, store, m, FakeConnections())
    assert await tier.tell_all() == len(by_p)
    told = fleet.desired_sets.entries_of(BROKER_MAP_KEY)
    assert set(told) == set(by_p.values())
    for p, name in by_p.items():
        entry = parse_broker_map_entry(BROKER_MAP_KEY, told[name])
        assert entry.version == 2 and list(entry.urls) == m.urls_for(p)


async def test_a_tell_cut_short_is_finished_at_the_next_start(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    # Issue 14: a change is saved and in force before the nodes are told, in slices; a
    # stop part-way left the rest untold for ever. The marker beside the map says which
    # version every node was told, and a start behind it tells everyone.
    from cloudcore.synchub import brokers as brokers_module

    monkeypatch.setattr(brokers_module, "TELL_SLICE", 4)
    names = [f"n{i}" for i in range(50)]
    calls: list[dict[str, Any]] = []

    def stops_after_one_slice(entries: dict[str, Any]) -> None:
        if calls:
            raise asyncio.CancelledError  # cloudcore stopped part-way
        calls.append(dict(entries))

    m = BrokerMap.single("mq-0", "mqtts://b0").add("mq-1", "mqtts://b1")
    store.put(STORE_DB, STORE_KEY, m.to_value())
    store.put(STORE_DB, TOLD_KEY, m.version)
    tier = BrokerTier(routes=Routes(m), store=store, connections=FakeConnections(),
                      nodes=lambda: names, tell=stops_after_one_slice, persisted=True)
    with pytest.raises(asyncio.CancelledError):
        await tier.drain("mq-0")
    assert len(calls) == 1 and len(calls[0]) < len(names)
    await store.flush()
    meta = store.load()[STORE_DB]
    stored, marker = meta[STORE_KEY], meta[TOLD_KEY]
    assert stored["version"] == m.version + 1 and marker == m.version  # behind

    # the next start
    again = BrokerMap.from_value(stored)
    told = initial_told(stored, marker, again)
    assert told == m.version
    seen: list[dict[str, Any]] = []
    tier = BrokerTier(routes=Routes(again), store=store, connections=FakeConnections(),
                      nodes=lambda: names, tell=lambda e: seen.append(dict(e)),
                      persisted=True, told=told)
    assert await tier.catch_up() == len(names)
    assert sorted(n for c in seen for n in c) == sorted(names)
    assert {v["urls"][0] for c in seen for v in c.values()} == {"mqtts://b1:8883"}
    await store.flush()
    assert store.load()[STORE_DB][TOLD_KEY] == again.version
    assert await tier.catch_up() == 0  # caught up: nobody told twice
    # a stored map from before the marker is taken as told; nothing stored: version 1
    assert initial_told(stored, None, again) == again.version
    assert initial_told(None, None, BrokerMap.spread(TWO, 2)) == 1


async def test_a_node_deleted_mid_tell_gets_no_entry(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    # Issue 14: the tell goes in slices over a list of nodes taken at its start; a node
    # deleted between slices still got a broker/-/map entry (kept for ever).
    from cloudcore.service import broker_map_teller
    from cloudcore.synchub import brokers as brokers_module

    monkeypatch.setattr(brokers_module, "TELL_SLICE", 2)
    fleet = make_fleet()
    names = [f"n{i}" for i in range(12)]
    for name in names:
        add_node(fleet, name)
    teller = broker_map_teller(fleet)
    gone: list[str] = []

    def tell(entries: dict[str, dict[str, Any]]) -> None:
        teller(entries)
        if not gone:  # after the first slice, delete a node not told yet
            victim = next(n for n in reversed(names) if n not in entries)
            fleet.delete("Node", None, victim)
            gone.append(victim)

    m = BrokerMap.single("mq-0", "mqtts://b0").add("mq-1", "mqtts://b1")
    tier = BrokerTier(routes=Routes(m), store=store, connections=FakeConnections(),
                      nodes=lambda: list(fleet.nodes), tell=tell, persisted=True)
    await tier.drain("mq-0")  # every node's list changes
    told = fleet.desired_sets.entries_of(BROKER_MAP_KEY)
    assert gone and gone[0] not in told
    assert set(told) == set(names) - set(gone)


async def test_a_broker_nodes_were_last_heard_on_is_removed_only_with_force(
        store: Store) -> None:
    # Issue 14: removing a drained broker closes the cloud's connections at once; the
    # nodes still there were cut off until their next home retry, without a word.
    fleet = make_fleet()
    for name in ("n1", "n2"):
        add_node(fleet, name)
    tier = make_tier(fleet, store, BrokerMap.spread(TWO), FakeConnections())
    await tier.drain("mq-0")
    tier.routes.heard("n1", "mq-0")
    with pytest.raises(Conflict, match="still has 1 session"):
        await tier.remove("mq-0")
    assert "mq-0" in tier.map.brokers
    view = await tier.remove("mq-0", force=True)
    assert list(view["brokers"]) == ["mq-1"]
