"""The list cache: encoded JSON is never stale, and recently listed views are kept
encoded in the background as objects change."""

from __future__ import annotations

import asyncio
import json

import pytest
from cloudcore_fakes import add_node, make_fleet

from cloudcore.fleet import controller
from cloudcore.fleet.controller import Fleet
from cloudcore.fleet.projection import NODE_TABLE
from fedctl.render import TABLE_FIELDS
from shared.models import parse_object

TABLE = ("metadata.name", "status.lastSeen", "status.ready")


def names_and_seen(fleet: Fleet, keys: list[str]) -> list[tuple[str, float]]:
    out = []
    for raw in fleet.encoded_many("Node", keys, TABLE):
        o = json.loads(raw)
        out.append((o["metadata"]["name"], o["status"]["lastSeen"]))
    return out


def test_a_changed_object_is_never_served_stale() -> None:
    fleet = make_fleet()
    for n in ("a", "b"):
        add_node(fleet, n)
    before = names_and_seen(fleet, ["a", "b"])
    fleet.clock = lambda: 2e9
    fleet.mark_ready("a")  # a report: lastSeen changes
    after = names_and_seen(fleet, ["a", "b"])
    assert after[0] == ("a", 2e9) and after[1] == before[1]


def test_listed_views_are_refreshed_in_the_background() -> None:
    fleet = make_fleet()
    for i in range(50):
        add_node(fleet, f"n{i:02d}")
    keys = [f"n{i:02d}" for i in range(50)]
    fleet.encoded_many("Node", keys, TABLE)  # `get nodes` lists the table view
    fleet.clock = lambda: 2e9
    for k in keys[:30]:
        fleet.mark_ready(k)
    cache = fleet._encoded[("Node", TABLE)]
    assert sum(k in cache for k in keys) == 20  # changed ones dropped at once
    assert fleet.refresh_encoded(limit=25) == 25
    assert fleet.refresh_encoded(limit=25) == 5
    assert fleet.refresh_encoded(limit=25) == 0
    assert all(json.loads(cache[k])["status"]["lastSeen"] == 2e9 for k in keys[:30])
    # what the refresher encoded is what a list would encode
    fresh = make_fleet()
    for k in keys:
        add_node(fresh, k)
        fresh.nodes[k].status.last_seen = fleet.nodes[k].status.last_seen
    assert fleet.encoded_many("Node", keys, TABLE) == fresh.encoded_many("Node", keys, TABLE)


def test_deleted_objects_and_unlisted_views(monkeypatch: pytest.MonkeyPatch) -> None:
    fleet = make_fleet()
    for n in ("a", "b"):
        add_node(fleet, n)
    fleet.encoded_many("Node", ["a", "b"], TABLE)
    fleet.encoded_many("Node", ["a", "b"], None)
    fleet.mark_ready("b")
    fleet.delete("Node", None, "b")
    assert fleet.refresh_encoded(limit=10) == 0  # b is gone: nothing to encode
    assert "b" not in fleet._encoded[("Node", TABLE)]
    # a view nobody listed for KEEP_WARM is dropped, memory included
    now = controller.time.monotonic()
    monkeypatch.setattr(controller.time, "monotonic", lambda: now + controller.KEEP_WARM + 1)
    fleet.mark_ready("a")
    assert fleet.refresh_encoded(limit=10) == 1
    assert fleet._encoded == {}


def test_secret_values_stay_redacted_when_refreshed() -> None:
    fleet = make_fleet()
    fleet.apply([parse_object({"apiVersion": "v1", "kind": "Secret",
                               "metadata": {"name": "s", "namespace": "default"},
                               "stringData": {"password": "hunter2"}})])
    key = ("default", "s")
    assert b"hunter2" not in fleet.encoded("Secret", key)
    fleet.apply([parse_object({"apiVersion": "v1", "kind": "Secret",
                               "metadata": {"name": "s", "namespace": "default"},
                               "stringData": {"password": "swordfish"}})])
    fleet.refresh_encoded(limit=10)
    assert b"swordfish" not in fleet.encoded("Secret", key)
    assert b"<redacted>" in fleet.encoded("Secret", key)


async def test_keep_encoded_runs_until_cancelled() -> None:
    fleet = make_fleet()
    add_node(fleet, "a")
    fleet.encoded_many("Node", ["a"], TABLE)
    fleet.mark_ready("a")
    task = asyncio.create_task(fleet.keep_encoded(interval=0.01))
    for _ in range(100):
        await asyncio.sleep(0.01)
        if "a" in fleet._encoded[("Node", TABLE)]:
            break
    task.cancel()
    assert "a" in fleet._encoded[("Node", TABLE)]


async def test_the_get_nodes_view_is_encoded_at_start_and_kept() -> None:
    assert tuple(sorted(set(TABLE_FIELDS["Node"]))) == NODE_TABLE  # what fedctl asks for
    fleet = make_fleet()
    for i in range(30):
        add_node(fleet, f"n{i:02d}")
    task = asyncio.create_task(fleet.keep_encoded(interval=0.01, chunk=7))
    try:
        await asyncio.sleep(0.05)
        cache = fleet._encoded[("Node", NODE_TABLE)]
        assert len(cache) == 30  # before anyone listed
        for proj in fleet._listed:  # as if nobody had listed it for ages
            fleet._listed[proj] -= controller.KEEP_WARM + 1
        fleet.clock = lambda: 2e9
        fleet.mark_ready("n03")
        await asyncio.sleep(0.05)
        assert json.loads(fleet._encoded[("Node", NODE_TABLE)]["n03"])["status"]["lastSeen"] == 2e9
    finally:
        task.cancel()
