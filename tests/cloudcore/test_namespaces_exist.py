"""Namespaces must exist, as in Kubernetes (issue 18).

An object applied into a namespace without a Namespace object is refused with 404
`namespaces "X" not found`, unless a Namespace of the same apply creates it or the apply
asks for missing namespaces to be created; `default` and `kube-system` always exist; a
store written before this keeps working (the missing Namespace objects are created once,
at load, and logged); only an empty namespace can be deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

import pytest
from api_fixture import open_api
from cloudcore_fakes import FakeStore, add_node, deployment, make_fleet

from cloudcore.config import StoreSettings
from cloudcore.errors import Conflict, NamespaceNotFound
from cloudcore.fleet import Fleet
from cloudcore.fleet.lifecycle import Liveness
from cloudcore.scheduler import Scheduler
from cloudcore.store import Store
from shared.models import parse_object


def ns(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def cm(name: str, namespace: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace}, "data": {"a": "1"}}


def in_ns(doc: dict[str, Any], namespace: str) -> dict[str, Any]:
    return {**doc, "metadata": {**doc["metadata"], "namespace": namespace}}


def test_an_object_in_a_namespace_that_does_not_exist_is_refused() -> None:
    fleet = make_fleet()
    add_node(fleet, "n1")
    with pytest.raises(NamespaceNotFound, match=r'^namespaces "shop" not found'):
        fleet.apply([parse_object(in_ns(deployment("web"), "shop"))])
    with pytest.raises(NamespaceNotFound):  # a dry run says the same
        fleet.plan([parse_object(cm("c", "shop"))])
    assert not fleet.deployments and not fleet.pods and not fleet.configmaps
    # default and kube-system always exist, even before anything was loaded
    fleet.apply([parse_object(cm("c", "default")), parse_object(cm("c", "kube-system"))])
    assert set(fleet.configmaps) == {("default", "c"), ("kube-system", "c")}


def test_a_namespace_in_the_same_apply_counts_wherever_it_is_written() -> None:
    fleet = make_fleet()
    add_node(fleet, "n1")
    results = fleet.apply([parse_object(in_ns(deployment("web", replicas=1), "shop")),
                           parse_object(ns("shop"))])
    assert [(r.kind, r.action) for r in results] == [("Deployment", "created"),
                                                      ("Namespace", "created")]
    assert "shop" in fleet.namespaces and ("shop", "web") in fleet.deployments
    assert len(fleet.pods) == 1


def test_create_namespaces_creates_the_missing_ones_and_a_dry_run_creates_nothing() -> None:
    fleet = make_fleet()
    fleet.plan([parse_object(cm("c", "shop"))], create_namespaces=True)
    assert "shop" not in fleet.namespaces
    fleet.apply([parse_object(cm("c", "shop")), parse_object(cm("d", "shop")),
                 parse_object(cm("e", "lab"))], create_namespaces=True)
    assert {"shop", "lab"} <= set(fleet.namespaces)
    assert fleet.namespaces["shop"].metadata.labels == {}
    created = [e for e in fleet.events.list() if e["reason"] == "NamespaceCreated"]
    assert sorted(e["object"] for e in created) == ["Namespace/lab", "Namespace/shop"]


def test_only_an_empty_namespace_is_deleted_and_default_never() -> None:
    fleet = make_fleet(FakeStore())
    fleet.load({})
    fleet.apply([parse_object(ns("shop")), parse_object(cm("a", "shop")),
                 parse_object(cm("b", "shop")), parse_object(cm("x", "shopping"))],
                create_namespaces=True)
    with pytest.raises(Conflict, match=r'namespaces "shop" is not empty \(2 configmaps\)'):
        fleet.delete("Namespace", None, "shop")
    assert "shop" in fleet.namespaces
    for name in ("default", "kube-system"):
        with pytest.raises(Conflict, match="always exists"):
            fleet.delete("Namespace", None, name)
    fleet.delete("ConfigMap", "shop", "a")
    fleet.delete("ConfigMap", "shop", "b")
    fleet.delete("Namespace", None, "shop")  # empty now ("shopping" is another one)
    assert "shop" not in fleet.namespaces and ("shopping", "x") in fleet.configmaps


async def _open(path: Path) -> tuple[Store, Fleet, asyncio.Task[None]]:
    store = Store(StoreSettings(state_dir=path, batch_interval=0.005))
    await store.__aenter__()
    writer = asyncio.create_task(store.run())
    fleet = Fleet(store=store, scheduler=Scheduler(),
                  liveness=Liveness(default_heartbeat=30, missed=3, now=0))
    fleet.load(store.load())
    return store, fleet, writer


async def _close(store: Store, writer: asyncio.Task[None]) -> None:
    await store.flush()
    writer.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await writer
    await store.__aexit__(None, None, None)


async def test_a_store_from_before_keeps_its_objects_and_gets_their_namespaces_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "store"
    store, fleet, writer = await _open(path)
    assert {"default", "kube-system"} <= set(fleet.namespaces)
    fleet.apply([parse_object(cm("c", "legacy"))], create_namespaces=True)
    await store.flush()
    store.delete("namespaces", "legacy")  # as a store written before namespaces existed
    await _close(store, writer)

    caplog.set_level(logging.INFO, logger="cloudcore.fleet")
    store, fleet, writer = await _open(path)
    assert "legacy" in fleet.namespaces and ("legacy", "c") in fleet.configmaps
    assert [r.getMessage() for r in caplog.records if "Namespace legacy" in r.getMessage()] \
        == ["created Namespace legacy: objects stored before namespaces had to exist live "
            "in it"]
    fleet.apply([parse_object(cm("d", "legacy"))])  # and applying there works
    await _close(store, writer)

    caplog.clear()
    store, fleet, writer = await _open(path)  # once: persisted, not created again
    assert "legacy" in fleet.namespaces and ("legacy", "d") in fleet.configmaps
    assert not [r for r in caplog.records if "created Namespace" in r.getMessage()]
    await _close(store, writer)


async def test_api_404_409_and_create_namespaces(tmp_path: Path) -> None:
    async with open_api(tmp_path) as api:
        c = api.client
        r = await c.post("/api/v1/apply", json={"documents": [cm("c", "shop")]})
        assert r.status_code == 404, r.text
        assert r.json()["error"].startswith('namespaces "shop" not found')
        r = await c.post("/api/v1/apply", json={"documents": [cm("c", "shop")],
                                                "createNamespaces": True, "dryRun": True})
        assert r.status_code == 200, r.text
        assert (await c.get("/api/v1/namespaces/shop")).status_code == 404
        r = await c.post("/api/v1/apply", json={"documents": [cm("c", "shop")],
                                                "createNamespaces": True})
        assert r.status_code == 200, r.text
        assert r.json()["namespacesCreated"] == ["shop"]
        assert (await c.get("/api/v1/namespaces/shop")).status_code == 200
        r = await c.delete("/api/v1/namespaces/shop")
        assert r.status_code == 409 and "not empty (1 configmap)" in r.json()["error"]
        assert (await c.delete("/api/v1/namespaces/default")).status_code == 409
        assert (await c.delete("/api/v1/configmaps/shop/c")).status_code == 200
        assert (await c.delete("/api/v1/namespaces/shop")).status_code == 200
