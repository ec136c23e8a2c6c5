"""The list cache: encoded JSON is never stale, and recently listed views are kept
encoded in the background as objects change."""

from __future__ import annotations

import asyncio
import json

from cloudcore_fakes import add_node, make_fleet

from cloudcore.api import listcache
from cloudcore.api.listcache import ListCache
from cloudcore.fleet.projection import NODE_TABLE
from fedctl.render import TABLE_FIELDS
from shared.models import parse_object

TABLE = ("metadata.name", "status.lastSeen", "status.ready")


def names_and_seen(lists: ListCache, keys: list[str]) -> list[tuple[str, float]]:
    out = []
    for raw in lists.encoded_many("Node", keys, TABLE):
        o = json.loads(raw)
        out.append((o["metadata"]["name"], o["status"]["lastSeen"]))
    return out


def test_a_changed_object_is_never_served_stale() -> None:
    fleet = make_fleet()
    lists = ListCache(fleet.objects)
    for n in ("a", "b"):
        add_node(fleet, n)
    before = names_and_seen(lists, ["a", "b"])
    fleet.clock = lambda: 2e9
    fleet.mark_ready("a")  # a report: lastSeen changes
    after = names_and_seen(lists, ["a", "b"])
    assert after[0] == ("a", 2e9) and after[1] == before[1]


def test_listed_views_are_refreshed_in_the_background() -> None:
    fleet = make_fleet()
    lists = ListCache(fleet.objects)
    for i in range(50):
        add_node(fleet, f"n{i:02d}")
    keys = [f"n{i:02d}" for i in range(50)]
    lists.encoded_many("Node", keys, TABLE)  # `get nodes` lists the table view
    fleet.clock = lambda: 2e9
    for k in keys[:30]:
        fleet.mark_ready(k)
    cache = lists.cached("Node", TABLE)
    assert sum(k in cache for k in keys) == 20  # changed ones dropped at once
    assert lists.refresh_encoded(limit=25) == 25
    assert lists.refresh_encoded(limit=25) == 5
    assert lists.refresh_encoded(limit=25) == 0
    assert all(json.loads(cache[k])["status"]["lastSeen"] == 2e9 for k in keys[:30])
    # what the refresher encoded is what a list would encode
    fresh = make_fleet()
    fresh_lists = ListCache(fresh.objects)
    for k in keys:
        add_node(fresh, k)
        fresh.nodes[k].status.last_seen = fleet.nodes[k].status.last_seen
    assert (lists.encoded_many("Node", keys, TABLE)
            == fresh_lists.encoded_many("Node", keys, TABLE))


def test_deleted_objects_and_unlisted_views() -> None:
    fleet = make_fleet()
    now = [0.0]
    lists = ListCache(fleet.objects, clock=lambda: now[0])
    for n in ("a", "b"):
        add_node(fleet, n)
    lists.encoded_many("Node", ["a", "b"], TABLE)
    lists.encoded_many("Node", ["a", "b"], None)
    fleet.mark_ready("b")
    fleet.delete("Node", None, "b")
    assert lists.refresh_encoded(limit=10) == 0  # b is gone: nothing to encode
    assert "b" not in lists.cached("Node", TABLE)
    # a view nobody listed for KEEP_WARM is dropped, memory included
    now[0] += listcache.KEEP_WARM + 1
    fleet.mark_ready("a")
    assert lists.refresh_encoded(limit=10) == 1
    assert lists.projections() == []


def test_secret_values_stay_redacted_when_refreshed() -> None:
    fleet = make_fleet()
    lists = ListCache(fleet.objects)
    fleet.apply([parse_object({"apiVersion": "v1", "kind": "Secret",
                               "metadata": {"name": "s", "namespace": "default"},
                               "stringData": {"password": "hunter2"}})])
    key = ("default", "s")
    assert b"hunter2" not in lists.encoded("Secret", key)
    fleet.apply([parse_object({"apiVersion": "v1", "kind": "Secret",
                               "metadata": {"name": "s", "namespace": "default"},
                               "stringData": {"password": "swordfish"}})])
    lists.refresh_encoded(limit=10)
    assert b"swordfish" not in lists.encoded("Secret", key)
    assert b"<redacted>" in lists.encoded("Secret", key)


async def test_keep_encoded_runs_until_cancelled() -> None:
    fleet = make_fleet()
    lists = ListCache(fleet.objects)
    add_node(fleet, "a")
    lists.encoded_many("Node", ["a"], TABLE)
    fleet.mark_ready("a")
    task = asyncio.create_task(lists.keep_encoded(interval=0.01))
    for _ in range(100):
        await asyncio.sleep(0.01)
        if "a" in lists.cached("Node", TABLE):
            break
    task.cancel()
    assert "a" in lists.cached("Node", TABLE)


async def test_the_get_nodes_view_is_encoded_at_start_and_kept() -> None:
    assert tuple(sorted(set(TABLE_FIELDS["Node"]))) == NODE_TABLE  # what fedctl asks for
    fleet = make_fleet()
    now = [0.0]
    lists = ListCache(fleet.objects, clock=lambda: now[0])
    for i in range(30):
        add_node(fleet, f"n{i:02d}")
    task = asyncio.create_task(lists.keep_encoded(interval=0.01, chunk=7))
    try:
        await asyncio.sleep(0.05)
        cache = lists.cached("Node", NODE_TABLE)
        assert len(cache) == 30  # before anyone listed
        now[0] += listcache.KEEP_WARM + 1  # as if nobody had listed it for ages
        fleet.clock = lambda: 2e9
        fleet.mark_ready("n03")
        await asyncio.sleep(0.05)
        assert json.loads(lists.cached("Node", NODE_TABLE)["n03"])["status"]["lastSeen"] == 2e9
    finally:
        task.cancel()
