"""cloudcore.cluster.leases.Member's rules, run in one event loop against an in-memory
KV that keeps NATS's semantics (revisions shared by a bucket, CAS on create, update and
delete, watches in revision order) and can cut one member off, as a network partition
would. In one event loop every event has an exact order, so "the holder announced the
loss before anyone else acquired" is checked exactly, not by timestamps.

The real thing (nats-server, member processes, kill -9) is in
tests/integration/test_cluster_leases.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import SimpleNamespace

from cloudcore.cluster.errors import CASConflict, KVUnavailable
from cloudcore.cluster.kv import Entry
from cloudcore.cluster.leases import Change, LeaseSettings, Member
from shared import topics

ALL = set(range(topics.PARTITIONS))
PERIOD = 0.6  # seconds; the smallest the settings allow is 0.5


@dataclass
class Store:
    rev: int = 0
    keys: dict[tuple[str, str], Entry] = field(default_factory=dict)
    watches: list[FakeWatch] = field(default_factory=list)
    cut: set[str] = field(default_factory=set)  # clients that cannot reach "NATS"
    answer_delay: float = 0.0  # an update lands at once; its answer comes this late
    in_flight: int = 0  # updates landed whose answers have not come yet
    lax: set[str] = field(default_factory=set)  # clients whose CAS is not checked

    def write(self, bucket: str, key: str, value: bytes, op: str) -> int:
        self.rev += 1
        e = Entry(key=key, value=value, revision=self.rev, operation=op)  # type: ignore[arg-type]
        self.keys[(bucket, key)] = e
        for w in self.watches:
            if w.bucket == bucket:
                w.offer(e)
        return self.rev


class FakeWatch:
    def __init__(self, store: Store, bucket: str, client: str) -> None:
        self.store, self.bucket, self.client = store, bucket, client
        self.queue: asyncio.Queue[Entry | None] = asyncio.Queue()
        self.held: list[Entry] = []  # what a cut-off client has not received yet
        self.caught_up = asyncio.Event()
        self.caught_up.set()

    def offer(self, e: Entry) -> None:
        if self.client in self.store.cut:
            self.held.append(e)
        else:
            self.flush()
            self.queue.put_nowait(e)

    def flush(self) -> None:
        for e in self.held:
            self.queue.put_nowait(e)
        self.held.clear()

    def __aiter__(self) -> AsyncIterator[Entry]:
        return self

    async def __anext__(self) -> Entry:
        e = await self.queue.get()
        if e is None:
            raise StopAsyncIteration
        return e

    async def stop(self) -> None:
        self.queue.put_nowait(None)


class FakeBucket:
    def __init__(self, store: Store, name: str, client: str) -> None:
        self.store, self.name, self.client = store, name, client

    async def _reach(self) -> None:
        await asyncio.sleep(0)
        if self.client in self.store.cut:
            raise KVUnavailable("cut off")

    def _current(self, key: str) -> Entry | None:
        return self.store.keys.get((self.name, key))

    async def get(self, key: str) -> Entry | None:
        await self._reach()
        e = self._current(key)
        return None if e is None or e.deleted else e

    async def create(self, key: str, value: bytes) -> int:
        await self._reach()
        e = self._current(key)
        if e is not None and not e.deleted and self.client not in self.store.lax:
            raise CASConflict(self.name, key, 0)
        return await self._answer(self.store.write(self.name, key, value, "put"))

    async def update(self, key: str, value: bytes, *, revision: int) -> int:
        await self._reach()
        e = self._current(key)
        if (e is None or e.revision != revision) and self.client not in self.store.lax:
            raise CASConflict(self.name, key, revision)
        return await self._answer(self.store.write(self.name, key, value, "put"))

    async def _answer(self, rev: int) -> int:
        if self.store.answer_delay:
            self.store.in_flight += 1
            try:
                await asyncio.sleep(self.store.answer_delay)
            finally:
                self.store.in_flight -= 1
        return rev

    async def delete(self, key: str, *, revision: int | None = None) -> None:
        await self._reach()
        e = self._current(key)
        if revision is not None and (e is None or e.revision != revision):
            raise CASConflict(self.name, key, revision)
        self.store.write(self.name, key, b"", "delete")

    async def watch(self, **_: object) -> FakeWatch:
        await self._reach()
        w = FakeWatch(self.store, self.name, self.client)
        for (b, _), e in sorted(self.store.keys.items(), key=lambda kv: kv[1].revision):
            if b == self.name:
                w.queue.put_nowait(e)
        self.store.watches.append(w)
        return w


class FakeKV:
    def __init__(self, store: Store, client: str) -> None:
        self.store, self.client = store, client
        self.settings = SimpleNamespace(request_timeout=1.0)

    async def bucket(self, name: str, **_: object) -> FakeBucket:
        return FakeBucket(self.store, name, self.client)


@dataclass
class Log:
    """Every change of every member, in the exact order they happened."""

    events: list[tuple[str, Change]] = field(default_factory=list)

    def recorder(self, name: str):  # type: ignore[no-untyped-def]
        async def on_change(c: Change) -> None:
            self.events.append((name, c))
        return on_change

    def owned(self, name: str) -> set[int]:
        out: set[int] = set()
        for who, c in self.events:
            if who == name:
                out = set(c.owned)
        return out

    def check_exclusive(self) -> None:
        """At every point of the log, no partition (and not the global lease) is held
        by two members."""
        holder: dict[int, str] = {}
        glob: str | None = None
        for who, c in self.events:
            for p in c.lost:
                assert holder.pop(p) == who
            if c.global_lost:
                assert glob == who
                glob = None
            for p in c.acquired:
                assert p not in holder, f"{who} acquired {p} still held by {holder[p]}"
                holder[p] = who
            if c.global_acquired:
                assert glob is None, f"{who} took the global lease held by {glob}"
                glob = who


def member(store: Store, log: Log, name: str) -> Member:
    return Member(FakeKV(store, name), LeaseSettings(name=name, lease_period=PERIOD),  # type: ignore[arg-type]
                  on_change=log.recorder(name))


async def until(cond, timeout: float) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.01)


async def test_two_members_split_then_one_stops() -> None:
    store, log = Store(), Log()
    a, b = member(store, log, "A"), member(store, log, "B")
    async with asyncio.TaskGroup() as tg:
        ta = tg.create_task(a.run())
        tb = tg.create_task(b.run())
        await until(lambda: len(log.owned("A")) == len(log.owned("B")) == 128, 10)
        assert log.owned("A") | log.owned("B") == ALL
        assert a.holds_global != b.holds_global
        ta.cancel()  # a clean stop: announce, then release
        await until(lambda: log.owned("B") == ALL and b.holds_global, 10)
        tb.cancel()
    log.check_exclusive()
    assert log.owned("A") == log.owned("B") == set()
    assert all(e.deleted for (bucket, _), e in store.keys.items() if bucket.endswith("leases"))


async def test_a_cut_off_member_lets_go_before_others_take_over() -> None:
    store, log = Store(), Log()
    a, b = member(store, log, "A"), member(store, log, "B")
    async with asyncio.TaskGroup() as tg:
        ta = tg.create_task(a.run())
        await until(lambda: log.owned("A") == ALL and a.holds_global, 10)
        tb = tg.create_task(b.run())
        await until(lambda: len(log.owned("A")) == len(log.owned("B")) == 128, 10)
        a_had = log.owned("A")

        store.cut.add("A")  # A can no longer renew, nor see anything
        await until(lambda: log.owned("B") == ALL and b.holds_global, PERIOD * 5)
        # A said it lost every lease (expired) before B acquired any of them
        a_lost_at = next((i for i, (who, c) in enumerate(log.events)
                          if who == "A" and c.reason == "expired"), None)
        b_took_at = min(i for i, (who, c) in enumerate(log.events)
                        if who == "B" and c.acquired & a_had)
        assert a_lost_at is not None, "B took A's partitions; A never said it lost them"
        assert a_lost_at < b_took_at, "B took A's partitions before A said it lost them"
        assert not ta.done()  # an outage is not fatal

        store.cut.discard("A")  # back: its heartbeat key was reaped, it joins again
        for w in store.watches:
            w.flush()
        await until(lambda: len(log.owned("A")) == len(log.owned("B")) == 128, PERIOD * 10)
        ta.cancel()
        tb.cancel()
    log.check_exclusive()
