"""The broker tier at run time (proposal 0007): the partition -> broker map, where each
node was last heard, and live changes of the map.

Two parts, each the one owner of its state:

- `Routes`: the current `shared.brokermap.BrokerMap` and, per node, the broker the hub
  last heard it on (an authenticated message, not a will). The hub sends a node's `down`
  to that broker, or to its partition's home while it has not been heard: the cloud
  follows the node, not the map, so a node on a fallback or mid-move is reached where it
  is. Memory only: after a restart every node is found again by its next message.
- `BrokerTier`: the operations of the API (`GET /api/v1/brokermap`, move, add, drain,
  remove). Each one changes the map (`BrokerMap` keeps the rules), persists it (the
  `brokermap` key of the store's `meta` database, committed before the call returns),
  opens or closes the cloud's connections to a broker (`Connections`, the service's),
  and puts the `broker/-/map` desired entry (`shared.entries.broker_map_entry`) into the
  set of every node whose list changed (`tell`, the fleet's desired sets), so agents move.
  A node whose list did not change gets no entry. After the last slice of that tell the
  `brokermap-told` key beside the map records the version told; at start a marker
  behind the map (a stop part-way) makes every node be told its list (`catch_up`).

Nothing here speaks MQTT or imports the fleet: the service passes the collaborators.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from cloudcore.errors import Conflict, NotFound
from cloudcore.store import Store
from shared import topics
from shared.brokermap import Broker, BrokerMap, normal_url
from shared.entries import broker_map_entry
from shared.errors import ObjectError

log = logging.getLogger("cloudcore.synchub.brokers")

STORE_DB = "meta"
STORE_KEY = "brokermap"
"""Where the map is persisted: key `brokermap` of the store's `meta` database."""
TOLD_KEY = "brokermap-told"
"""Beside it: the map version every node has been told its list of (an int), written
after the last slice of a change's tell. A map newer than it at start means cloudcore
stopped part-way through telling: every node is told its list again (`catch_up`)."""
DEFAULT_BROKER = "mq-0"
"""The name of the one broker of the embedded default (no `--broker` flag)."""
TELL_SLICE = 1000
"""Nodes told per commit when a change reaches many (a drain at 100,000 nodes): the
event loop is given back between slices, so no one call holds it for long."""


class Routes:
    """The map in force and the broker each node was last heard on."""

    def __init__(self, brokermap: BrokerMap) -> None:
        self.map = brokermap
        self._last: dict[str, str] = {}
        self._sessions: dict[str, int] = {}

    def heard(self, node: str, broker: str) -> None:
        """An authenticated message of `node` arrived through `broker`."""
        was = self._last.get(node)
        if was == broker:
            return
        self._last[node] = broker
        self._sessions[broker] = self._sessions.get(broker, 0) + 1
        if was is not None:
            self._sessions[was] -= 1

    def last_heard(self, node: str) -> str | None:
        """The broker `node` was last heard on (None: not since this process started)."""
        return self._last.get(node)

    def broker_for(self, node: str, partition: int) -> str:
        """Where `node` (of `partition`) is sent to: where it was last heard, else its
        partition's home."""
        last = self._last.get(node)
        if last is not None and last in self.map.brokers:
            return last
        return self.map.partitions[partition][0]

    def forget(self, node: str) -> None:
        was = self._last.pop(node, None)
        if was is not None:
            self._sessions[was] -= 1

    def keep_only(self, nodes: Iterable[str]) -> None:
        """Forget the nodes not in `nodes` (deleted since they were heard), so that a
        broker's `sessions` do not count them for ever."""
        known = set(nodes)
        for node in [n for n in self._last if n not in known]:
            self.forget(node)

    def drop_broker(self, broker: str) -> None:
        """`broker` left the map: nobody is heard there any more (its nodes are sent to
        through their homes until heard again)."""
        self._last = {n: b for n, b in self._last.items() if b != broker}
        self._sessions.pop(broker, None)

    def sessions(self) -> dict[str, int]:
        """Broker name -> the nodes last heard there."""
        return {b: n for b, n in self._sessions.items() if n}


class Connections(Protocol):
    """The cloud's connections to brokers (one subscriber and its publishers each)."""

    def open(self, name: str, broker: Broker) -> None:
        """Start connecting to a broker new to the map (returns at once)."""
        ...

    def close(self, name: str) -> None:
        """Stop the connections to a broker taken out of the map."""
        ...

    def connected(self, name: str) -> bool:
        """Whether the broker's subscriber is connected now."""
        ...


Tell = Callable[[dict[str, dict[str, Any]]], None]
"""tell({node: broker/-/map value}): put each entry into the node's desired set and
commit (the hub then sends it like any change)."""


class BrokerTier:
    """Live changes of the map (module docstring). Every change is serialised."""

    def __init__(self, *, routes: Routes, store: Store, connections: Connections,
                 nodes: Callable[[], Iterable[str]], tell: Tell,
                 persisted: bool, told: int | None = None) -> None:
        """`nodes()` names every node that may hold a list (joined or registered);
        `persisted` says whether the map in `routes` is already in the store (the
        embedded default is not, until its first change); `told` the map version every
        node has been told (`initial_told`; None: the map in `routes`)."""
        self.routes = routes
        self._store = store
        self._connections = connections
        self._nodes = nodes
        self._tell = tell
        self._persisted = persisted
        self._told = routes.map.version if told is None else told
        self._lock = asyncio.Lock()

    @property
    def map(self) -> BrokerMap:
        return self.routes.map

    # -- reads ------------------------------------------------------------------------

    def view(self) -> dict[str, Any]:
        """The map (`BrokerMap.to_value`) with, per broker, `sessions` (nodes last heard
        there, deleted nodes not counted), `connected` (the cloud's subscriber) and
        `homeOf` (how many partitions it is home of)."""
        self.routes.keep_only(self._nodes())
        out = self.map.to_value()
        sessions = self.routes.sessions()
        homes = self.map.homes()
        for name, b in out["brokers"].items():
            b["sessions"] = sessions.get(name, 0)
            b["connected"] = self._connections.connected(name)
            b["homeOf"] = len(homes[name])
        out["persisted"] = self._persisted
        return out

    def for_join(self, node: str) -> tuple[int, list[str]]:
        """(map version, the node's URLs home first) for a joining node's answer."""
        m = self.map
        return m.version, m.urls_for(topics.partition_of(node))

    # -- changes ----------------------------------------------------------------------

    async def move(self, partitions: list[int], to: str) -> dict[str, Any]:
        if not partitions:
            raise ObjectError("partitions: name at least one partition", field="partitions")
        self._known(to)
        return await self._change(lambda m: m.move(partitions, to),
                                  f"moved partitions {partitions[:8]}"
                                  f"{'...' if len(partitions) > 8 else ''} to {to}")

    async def add(self, name: str, url: str) -> dict[str, Any]:
        return await self._change(lambda m: m.add(name, url), f"added broker {name} {url}")

    async def drain(self, name: str) -> dict[str, Any]:
        self._known(name)
        active = [n for n, b in self.map.brokers.items() if b.state == "active" and n != name]
        if not active:
            raise Conflict(f"broker {name!r} is the only active broker; add another "
                           "before draining it")
        return await self._change(lambda m: m.drain(name), f"draining broker {name}")

    async def remove(self, name: str, *, force: bool = False) -> dict[str, Any]:
        """Refused while `name` is any partition's home, and (unless `force`) while nodes
        were last heard there: the cloud closes its connections at once, and such a node
        is reached again only when it next retries its home."""
        self._known(name)
        homed = self.map.homes()[name]
        if homed:
            raise Conflict(f"broker {name!r} is still home of {len(homed)} partition(s); "
                           "drain it (or move them) first")
        self.routes.keep_only(self._nodes())
        sessions = self.routes.sessions().get(name, 0)
        if sessions and not force:
            raise Conflict(f"broker {name!r} still has {sessions} session(s) (nodes last "
                           "heard there); wait until `fedctl get brokers` shows 0, or "
                           "force it (`fedctl brokers remove --force`, ?force=true): those "
                           "nodes are cut off until their next retry of their home broker")
        return await self._change(lambda m: m.remove(name), f"removed broker {name}")

    async def adopt(self, new: BrokerMap, what: str) -> dict[str, Any]:
        """A map changed through another shard (proposal 0008): made the map in force
        here as a change made here is (persisted, connections opened or closed, nodes
        whose list changed told), if it is newer than the one in force."""
        return await self._change(lambda m: new if new.version > m.version else m, what)

    def _known(self, name: str) -> None:
        if name not in self.map.brokers:
            raise NotFound("broker", name)

    async def _change(self, op: Callable[[BrokerMap], BrokerMap], what: str) -> dict[str, Any]:
        async with self._lock:
            old = self.map
            new = op(old)
            if new is old:
                return self.view()
            self._store.put(STORE_DB, STORE_KEY, new.to_value())
            await self._store.flush()  # the map is durable before anyone acts on it
            self._persisted = True
            self.routes.map = new
            for name in new.brokers.keys() - old.brokers.keys():
                self._connections.open(name, new.brokers[name])
            for name in old.brokers.keys() - new.brokers.keys():
                self._connections.close(name)
                self.routes.drop_broker(name)
            if self._told < old.version:  # a tell was cut short: everyone, not a diff
                told = await self._tell_partitions(self._lists(new))
            else:
                told = await self._tell_nodes(old, new)
            self._mark_told(new.version)
            log.info("broker map version %d: %s; %d node(s) told their new broker list",
                     new.version, what, told)
            return self.view()

    async def tell_all(self) -> int:
        """Tell every node its list in the map in force (sliced like a change), e.g. at a
        start whose `--broker` flags replaced the one-broker default that nodes joined
        under. Returns how many nodes were told."""
        async with self._lock:
            m = self.map
            told = await self._tell_partitions(self._lists(m))
            self._mark_told(m.version)
            log.info("broker map version %d: %d node(s) told their broker list",
                     m.version, told)
            return told

    async def catch_up(self) -> int:
        """At start: if the nodes were last told an older version than the map in force
        (cloudcore stopped part-way through a change's tell, or `--broker` flags replaced
        the default the nodes joined under), tell every node its list (`tell_all`).
        Returns how many nodes were told."""
        if self._told >= self.map.version:
            return 0
        log.info("broker map version %d, nodes last told version %d: telling every node "
                 "its list", self.map.version, self._told)
        return await self.tell_all()

    @staticmethod
    def _lists(m: BrokerMap) -> dict[int, dict[str, Any]]:
        return {p: broker_map_entry(m.version, m.urls_for(p))
                for p in range(topics.PARTITIONS)}

    def _mark_told(self, version: int) -> None:
        """Every node has been told `version` (after the last slice, so a stop part-way
        leaves the marker behind and `catch_up` finishes the job at the next start)."""
        self._told = version
        self._store.put(STORE_DB, TOLD_KEY, version)

    async def _tell_nodes(self, old: BrokerMap, new: BrokerMap) -> int:
        return await self._tell_partitions({
            p: broker_map_entry(new.version, new.urls_for(p))
            for p in range(topics.PARTITIONS) if old.urls_for(p) != new.urls_for(p)})

    async def _tell_partitions(self, changed: dict[int, dict[str, Any]]) -> int:
        """Put `changed[partition]` into the set of every node of those partitions."""
        if not changed:
            return 0
        told = 0
        entries: dict[str, dict[str, Any]] = {}
        for i, node in enumerate(self._nodes()):
            value = changed.get(topics.partition_of(node))
            if value is not None:
                entries[node] = value
            if len(entries) >= TELL_SLICE or (i + 1) % (4 * TELL_SLICE) == 0:
                if entries:
                    self._tell(entries)
                    told += len(entries)
                    entries = {}
                await asyncio.sleep(0)
        if entries:
            self._tell(entries)
            told += len(entries)
        return told


def initial_told(stored: Any, told: Any, start: BrokerMap) -> int:
    """The map version every node has been told, at start: `stored` is the stored map
    (None: none), `told` the stored `TOLD_KEY` (None: none), `start` the map
    `initial_map` chose. Nothing stored: the default the nodes joined under (1). A stored
    map without a marker is from before the marker: taken as told. `--broker` flags that
    add brokers to a told map change no node's list (a new broker is home of nothing)."""
    if stored is None:
        return 1
    stored_version = stored.get("version") if isinstance(stored, dict) else None
    if not isinstance(told, int) or not isinstance(stored_version, int):
        return start.version
    return start.version if told >= stored_version else told


def initial_map(stored: Any, flags: dict[str, str], *, default_url: str,
                joined: bool = False) -> tuple[BrokerMap, bool]:
    """The map to start with and whether it must be written to the store: the stored one
    if any (a flag naming a broker it lacks adds that broker, active, with no partitions;
    a flag giving a known broker another URL is ignored with a warning), else
    `BrokerMap.spread(flags)`, else the embedded default (one broker `mq-0` at
    `default_url`, not persisted until its first change, so it keeps following the
    `--mqtt-*` / `--advertise-mqtt` flags). `joined` says the store already has nodes:
    they joined under the default (version 1), so a map from the flags is version 2 and
    every node must be told its list (`BrokerTier.tell_all`). Raises ObjectError if the
    stored map is unreadable."""
    if stored is not None:
        try:
            m = BrokerMap.from_value(stored)
        except ObjectError as exc:
            raise ObjectError(f"the broker map in the store is invalid: {exc.message}",
                              field=exc.field) from None
        added = False
        for name, url in sorted(flags.items()):
            have = m.brokers.get(name)
            if have is None:
                m = m.add(name, url)
                added = True
                log.info("--broker %s=%s: added to the stored broker map (version %d), "
                         "active, home of no partition; move partitions to it with "
                         "`fedctl brokers move`", name, url, m.version)
            elif normal_url(url, f"--broker {name}") not in have.urls:
                log.warning("--broker %s=%s: the stored broker map has %s at %s and the "
                            "store wins (remove the broker and add it again to change its "
                            "address)", name, url, name, ", ".join(have.urls))
        return m, added
    if flags:
        if joined:
            log.info("--broker flags first given to a store with nodes (joined under the "
                     "one-broker default): broker map version 2, every node is told its "
                     "list")
        return BrokerMap.spread(flags, 2 if joined else 1), True
    return BrokerMap.single(DEFAULT_BROKER, default_url), False
