"""The store's compact form of DaemonSet pods and their desired entries (proposal 0004,
issue 13): each is kept as its own fields plus the id of a part shared per template
revision (`objects.Parts`); what a restart loads, what the API shows and what goes on
the wire are what full records gave. Real LMDB."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from cloudcore_fakes import add_node, daemonset

from cloudcore.config import StoreSettings
from cloudcore.fleet import Fleet, Liveness
from cloudcore.fleet.desired import PodRef, pod_value
from cloudcore.fleet.objects import PARTS_DB, dump_object
from cloudcore.fleet.template import DaemonPod, pack_uid, uid_text
from cloudcore.scheduler import Scheduler
from cloudcore.store import Store
from shared.codec import encode
from shared.entries import pod_key
from shared.models import parse_object

NODES = ("n1", "n2", "n3")


@contextlib.asynccontextmanager
async def running(state: Path) -> AsyncIterator[tuple[Fleet, Store]]:
    """A fleet over the LMDB store at `state`, loaded from it, its writer running."""
    async with Store(StoreSettings(state_dir=state, batch_interval=0.01)) as store:
        writer = asyncio.create_task(store.run())
        fleet = Fleet(store=store, scheduler=Scheduler(),
                      liveness=Liveness(default_heartbeat=30, missed=3, now=0.0))
        fleet.load(store.load())
        try:
            yield fleet, store
            await store.flush()
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer


def raw_records(state: Path) -> dict[str, dict[str, Any]]:
    import lmdb

    env = lmdb.open(str(state), max_dbs=32, readonly=True, lock=False)
    try:
        out: dict[str, dict[str, Any]] = {}
        with env.begin() as txn:
            for db in ("pods", "desired", PARTS_DB):
                handle = env.open_db(db.encode(), txn=txn, create=False)
                out[db] = {k.decode(): msgpack.unpackb(v, raw=False)
                           for k, v in txn.cursor(db=handle)}
        return out
    finally:
        env.close()


def shown(fleet: Fleet) -> tuple[Any, Any, Any]:
    pods = {f"{k[0]}/{k[1]}": dump_object(p) for k, p in sorted(fleet.pods.items())}
    sets = {n: (nd.gen, nd.values()) for n, nd in sorted(fleet.desired.items())}
    wire = {n: encode(nd.snapshot()) for n, nd in sorted(fleet.desired.items())}
    return pods, sets, wire


async def test_daemonset_pods_are_stored_compact_and_load_back_as_they_were(
        tmp_path: Path) -> None:
    state = tmp_path / "s"
    async with running(state) as (fleet, _):
        for n in NODES:
            add_node(fleet, n)
        fleet.apply([parse_object(daemonset(args=["sleep", "1d"]))])
        fleet.apply([parse_object({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}}, "spec": {
                         "containers": [{"name": "c", "image": "busybox"}]}}}})])
        fleet.apply([parse_object({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bare"},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "busybox"}]}})])
        fleet.pod_statuses("n2", {pod_key("default", "agent-n2"): {
            "phase": "Running", "ready": True,
            "containerStatuses": [{"name": "main", "state": "running", "ready": True}]}})
        before = shown(fleet)
        ref = fleet.desired["n1"].items[pod_key("default", "agent-n1")][0]
        assert isinstance(ref, PodRef)
        # on the wire, byte for byte the entry of the full pod
        pod = fleet.pods[("default", "agent-n1")]
        assert isinstance(pod, DaemonPod)
        assert (msgpack.packb(fleet.desired["n1"].values()[pod_key("default", "agent-n1")])
                == msgpack.packb(pod_value(pod.materialise())))

    raw = raw_records(state)
    stored = raw["pods"]["default/agent-n2"]
    assert "spec" not in stored and "metadata" not in stored and stored["part"] in raw[PARTS_DB]
    assert stored["status"]["phase"] == "Running"
    assert "part" not in raw["pods"]["default/bare"]  # a bare pod is stored in full
    web = [v for k, v in raw["pods"].items() if k.startswith("default/web-")]
    assert len(web) == 2 and all("part" in v and v["node"] is None for v in web)
    item = raw["desired"]["n1"]["items"][pod_key("default", "agent-n1")]
    assert item[0] in raw[PARTS_DB] and len(item) == 3  # [part id, uid, kgen]
    assert isinstance(item[1], bytes) and len(item[1]) == 16  # the uid's 16 bytes
    assert stored["uid"] == raw["desired"]["n2"]["items"][pod_key("default", "agent-n2")][1]
    assert len(raw[PARTS_DB]) == 3  # the two workloads' pods' parts, the entries' part

    async with running(state) as (again, _):
        assert shown(again) == before
        assert isinstance(again.pods[("default", "agent-n3")], DaemonPod)
        assert isinstance(again.desired["n3"].items[pod_key("default", "agent-n3")][0],
                          PodRef)


async def test_parts_of_gone_revisions_are_dropped_at_load(tmp_path: Path) -> None:
    state = tmp_path / "s"
    async with running(state) as (fleet, _):
        for n in NODES:
            add_node(fleet, n)
        fleet.apply([parse_object(daemonset(args=["sleep", "1d"]))])
    first = set(raw_records(state)[PARTS_DB])
    async with running(state) as (fleet, _):
        fleet.delete("DaemonSet", "default", "agent")
        fleet.apply([parse_object(daemonset("other", args=["sleep", "2d"]))])
    assert first <= set(raw_records(state)[PARTS_DB])  # still there until a load
    async with running(state) as (fleet, _):
        pass
    left = raw_records(state)[PARTS_DB]
    assert len(left) == 2 and not first & set(left)
    async with running(state) as (fleet, _):
        assert {k for k, _ in fleet.desired["n1"].values().items()} == {
            pod_key("default", "other-n1")}


async def test_a_missing_part_is_made_again_from_the_pods(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    state = tmp_path / "s"
    async with running(state) as (fleet, _):
        for n in NODES:
            add_node(fleet, n)
        fleet.apply([parse_object(daemonset(args=["sleep", "1d"]))])
        before = {n: fleet.desired[n].values() for n in NODES}
        gen = fleet.desired["n1"].gen
    entry_part = raw_records(state)["desired"]["n1"]["items"][
        pod_key("default", "agent-n1")][0]
    async with Store(StoreSettings(state_dir=state)) as store:
        store.delete(PARTS_DB, entry_part)
    with caplog.at_level(logging.ERROR, logger="cloudcore.fleet"):
        async with running(state) as (again, _):
            assert {n: again.desired[n].values() for n in NODES} == before
            assert again.desired["n1"].gen == gen + 1  # put back: sent again
    assert "refers to missing parts" in caplog.text
    assert entry_part in raw_records(state)[PARTS_DB]  # written again


def test_uids_are_kept_as_bytes_only_when_their_text_comes_back_exactly() -> None:
    canonical = "54fe89ec-d473-4737-ae50-fdb336f8c293"
    assert pack_uid(canonical) == bytes.fromhex(canonical.replace("-", ""))
    assert uid_text(pack_uid(canonical)) == canonical
    for text in (canonical.upper(), "not-a-uuid", "{" + canonical[1:] + "}", "", None):
        assert pack_uid(text) == text and uid_text(pack_uid(text)) == text
