"""cloudcore.cluster.kv against a real nats-server (TLS from a fleet CA, a password):
compare-and-set, watch, and the errors a shard sees when NATS is wrong or gone."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloudcore.cluster.errors import (
    BucketMissing,
    CASConflict,
    KVRefused,
    KVUnavailable,
)
from cloudcore.cluster.kv import KV, Entry, KVSettings
from testbed.natskv import NatsKV
from testbed.ports import free_port

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def nats1(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsKV]:
    with NatsKV(rundir=tmp_path_factory.mktemp("nats1"), servers=1) as srv:
        yield srv


def settings(srv: NatsKV, **kw: object) -> KVSettings:
    base: dict[str, object] = {"urls": tuple(srv.urls), "user": srv.user,
                               "password": srv.password, "ca_file": srv.ca_file,
                               "connect_timeout": 3.0, "request_timeout": 3.0}
    base.update(kw)
    return KVSettings(**base)  # type: ignore[arg-type]


async def next_entry(it: object, timeout: float = 5.0) -> Entry:
    return await asyncio.wait_for(it.__anext__(), timeout)  # type: ignore[attr-defined]


async def test_cas_create_update_delete(nats1: NatsKV) -> None:
    async with KV(settings(nats1)) as kv:
        b = await kv.bucket("t_cas", create=True)
        r1 = await b.create("k", b"one")
        with pytest.raises(CASConflict) as err:
            await b.create("k", b"again")
        assert err.value.key == "k" and err.value.expected == 0
        r2 = await b.update("k", b"two", revision=r1)
        assert r2 > r1
        with pytest.raises(CASConflict):  # a writer that read revision r1 loses
            await b.update("k", b"stale", revision=r1)
        got = await b.get("k")
        assert got is not None and (got.value, got.revision) == (b"two", r2)
        with pytest.raises(CASConflict):
            await b.delete("k", revision=r1)
        await b.delete("k", revision=r2)
        assert await b.get("k") is None
        deleted_at = await b.revision_of("k")
        assert deleted_at > r2
        r3 = await b.create("k", b"three")  # a deleted key may be created again
        assert (await b.get("k")).value == b"three"  # type: ignore[union-attr]
        assert r3 > deleted_at
        assert await b.get("never") is None and await b.revision_of("never") == 0


async def test_two_writers_one_wins(nats1: NatsKV) -> None:
    async with KV(settings(nats1)) as a, KV(settings(nats1)) as b:
        ba = await a.bucket("t_race", create=True)
        bb = await b.bucket("t_race")
        rev = await ba.put("lease", b"free")
        results = await asyncio.gather(ba.update("lease", b"A", revision=rev),
                                       bb.update("lease", b"B", revision=rev),
                                       return_exceptions=True)
        wins = [r for r in results if isinstance(r, int)]
        losses = [r for r in results if isinstance(r, CASConflict)]
        assert len(wins) == 1 and len(losses) == 1
        assert (await ba.get("lease")).value in (b"A", b"B")  # type: ignore[union-attr]


async def test_watch_sees_current_values_then_changes(nats1: NatsKV) -> None:
    async with KV(settings(nats1)) as kv:
        b = await kv.bucket("t_watch", create=True)
        r0 = await b.put("a", b"0")
        w = await b.watch()
        try:
            first = await next_entry(w)
            assert (first.key, first.value, first.revision) == ("a", b"0", r0)
            await asyncio.wait_for(w.caught_up.wait(), 5)
            r1 = await b.put("b", b"1")
            await b.delete("a")
            e1, e2 = await next_entry(w), await next_entry(w)
            assert (e1.key, e1.value, e1.revision, e1.deleted) == ("b", b"1", r1, False)
            assert (e2.key, e2.deleted) == ("a", True)
            assert e1.created is not None
        finally:
            await w.stop()
        # from a revision: every change from there on, deletions included
        w2 = await b.watch(from_revision=r1)
        try:
            got = [await next_entry(w2), await next_entry(w2)]
            assert [(e.key, e.deleted) for e in got] == [("b", False), ("a", True)]
        finally:
            await w2.stop()
        # a watch of some keys only
        w3 = await b.watch("x.*", deliver="new")
        try:
            await b.put("other", b"-")
            await b.put("x.1", b"y")
            e = await next_entry(w3)
            assert (e.key, e.value) == ("x.1", b"y")
        finally:
            await w3.stop()


async def test_missing_bucket_is_its_own_error(nats1: NatsKV) -> None:
    async with KV(settings(nats1)) as kv:
        with pytest.raises(BucketMissing, match="t_absent"):
            await kv.bucket("t_absent")


async def test_unreachable_and_refused(nats1: NatsKV) -> None:
    dead = f"tls://127.0.0.1:{free_port()}"
    with pytest.raises(KVUnavailable, match="NATS unreachable"):
        async with KV(settings(nats1, urls=(dead,), connect_timeout=1.5)):
            pass
    with pytest.raises(KVRefused, match="refused the login"):
        async with KV(settings(nats1, password="wrong")):
            pass


async def test_plain_client_is_refused_by_tls_server(nats1: NatsKV) -> None:
    plain = tuple(u.replace("tls://", "nats://") for u in nats1.urls)
    with pytest.raises((KVRefused, KVUnavailable)):
        async with KV(settings(nats1, urls=plain, ca_file=None, insecure=True,
                               connect_timeout=2.0)):
            pass


async def test_cluster_of_three_survives_a_server_kill(tmp_path: Path) -> None:
    with NatsKV(rundir=tmp_path / "nats3", servers=3) as srv:
        async with KV(settings(srv, request_timeout=5.0)) as kv:
            b = await kv.bucket("t_r3", create=True, replicas=3)
            rev = await b.create("k", b"v1")
            srv.kill(2)  # one of three: the bucket keeps a quorum
            for _ in range(50):  # a new stream leader may take a moment
                try:
                    rev = await b.update("k", b"v2", revision=rev)
                    break
                except KVUnavailable:
                    await asyncio.sleep(0.2)
            else:
                pytest.fail("the bucket never took a write after one server of 3 died")
            got = await b.get("k")
            assert got is not None and got.value == b"v2"


async def test_closing_the_connection_ends_its_watches(nats1: NatsKV) -> None:
    kv = KV(settings(nats1))
    await kv.connect()
    b = await kv.bucket("t_close", create=True)
    w = await b.watch(deliver="new")
    reader = asyncio.ensure_future(anext(w, None))
    await asyncio.sleep(0.1)
    await kv.close()
    assert await asyncio.wait_for(reader, 5) is None  # the iteration ended


async def test_insecure_mode_is_explicit_and_works(tmp_path: Path) -> None:
    with NatsKV(rundir=tmp_path / "plain", servers=1, insecure=True) as srv:
        assert all(u.startswith("nats://") for u in srv.urls)
        async with KV(KVSettings(urls=tuple(srv.urls), insecure=True)) as kv:
            b = await kv.bucket("t_plain", create=True)
            assert await b.get("k") is None
            await b.put("k", b"v")
            assert (await b.get("k")).value == b"v"  # type: ignore[union-attr]


async def test_two_shards_creating_a_bucket_at_once_both_open_it(nats1: NatsKV) -> None:
    """Shards that start together create their buckets at the same moment: the loser of
    that race gets "subjects overlap with an existing stream" (err 10065) from NATS, not
    "exists" (10058), and must open the bucket the winner made (CI caught a shard test
    failing on it)."""
    async with KV(settings(nats1)) as a, KV(settings(nats1)) as b, \
            KV(settings(nats1)) as c, KV(settings(nats1)) as d:
        for i in range(40):
            name = f"t_race{i}"
            opened = await asyncio.gather(*(kv.bucket(name, create=True)
                                            for kv in (a, b, c, d)))
            await opened[0].put("k", b"from a")
            for other in opened[1:]:
                got = await other.get("k")
                assert got is not None and got.value == b"from a"
