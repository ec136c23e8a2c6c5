"""The compact node record (issue 13 part 3, `cloudcore/fleet/noderecord.py`): what the
API, the list, a watch and the store show of a node is the JSON a `Node` gave, through
a report, a label change, a cordon, telemetry, a restart and a delete; and the record
stays compact (slotted, its shared parts shared)."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from api_fixture import open_api
from cloudcore_fakes import GI, FakeStore, add_node, make_fleet
from pydantic import BaseModel

from cloudcore.fleet.forecast import FORECAST_KEYS
from cloudcore.fleet.noderecord import STATUS_FIELDS, NodeRecord, NodeState
from cloudcore.fleet.objects import dump_object, record_of
from shared.models import Node, NodeStatus

UID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}$")
TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def _expected(got: dict[str, Any], *, labels: dict[str, str], status: dict[str, Any],
              annotations: dict[str, str], spec: dict[str, Any] | None = None
              ) -> dict[str, Any]:
    """The JSON a `Node` gave for these fields, with the uid, creation time and
    lastSeen of `got` (checked for their form)."""
    meta = got["metadata"]
    assert UID.match(meta["uid"]) and TIME.match(meta["creationTimestamp"])
    assert isinstance(got["status"]["lastSeen"], float)
    doc = {"apiVersion": "v1", "kind": "Node",
           "metadata": {"name": meta["name"], "namespace": "default", "labels": labels,
                        "annotations": annotations, "uid": meta["uid"],
                        "creationTimestamp": meta["creationTimestamp"]},
           "spec": spec or {"taints": [], "unschedulable": False},
           "status": {"lastSeen": got["status"]["lastSeen"], **status}}
    if "resourceVersion" in meta:
        doc["metadata"]["resourceVersion"] = meta["resourceVersion"]
    return doc


def _as_node(rec: NodeRecord) -> dict[str, Any]:
    """What pydantic makes of the record's stored form: a `Node`'s JSON."""
    return Node.model_validate(record_of(rec)).model_dump(mode="json", by_alias=True,
                                                          exclude_none=True)


def _status(**changes: Any) -> dict[str, Any]:
    base = {"capacity": {"cpu": 4000, "memory": 8 * GI, "pods": 110},
            "allocatable": {"cpu": 4000, "memory": 8 * GI, "pods": 110},
            "arch": "amd64", "os": "linux", "ready": "Ready", "reason": "NodeReported",
            "desiredGen": 0, "ackedGen": 0, "usage": {}}
    base.update(changes)
    order = ("capacity", "allocatable", "arch", "os", "agentVersion", "ready", "reason",
             "lastSeen", "desiredGen", "ackedGen", "usage", "agentUpgrade")
    return {k: base[k] for k in order if k in base}


async def test_api_json_of_a_node_through_report_label_cordon_delete(tmp_path: Path) -> None:
    async with open_api(tmp_path) as api:
        fleet = api.fleet
        add_node(fleet, "n1", labels={"zone": "a"})
        add_node(fleet, "n2", labels={"zone": "a"})
        hb = {"edgefed.io/heartbeat": "10"}
        labels = {"kubernetes.io/hostname": "n1", "zone": "a", "kubernetes.io/arch": "amd64",
                  "kubernetes.io/os": "linux"}
        got = (await api.client.get("/api/v1/nodes/n1")).json()
        assert got == _expected(got, labels=labels, annotations=hb, status=_status())

        # a report: new capacity, agent version, a label changed, another heartbeat
        fleet.node_status("n1", {"capacity": {"cpu": 8000, "memory": 16 * GI, "pods": 110},
                                 "allocatable": {"cpu": 7500, "memory": 15 * GI, "pods": 110},
                                 "agentVersion": "0.2.0", "arch": "arm64",
                                 "labels": {"zone": "b"}, "heartbeat": 20})
        got = (await api.client.get("/api/v1/nodes/n1")).json()
        labels = {**labels, "zone": "b", "kubernetes.io/arch": "arm64"}
        assert got == _expected(
            got, labels=labels, annotations={"edgefed.io/heartbeat": "20"},
            status=_status(capacity={"cpu": 8000, "memory": 16 * GI, "pods": 110},
                           allocatable={"cpu": 7500, "memory": 15 * GI, "pods": 110},
                           arch="arm64", agentVersion="0.2.0"))
        # the other node kept what it had (shared dicts are replaced, not changed)
        other = (await api.client.get("/api/v1/nodes/n2")).json()
        assert other["status"]["capacity"] == {"cpu": 4000, "memory": 8 * GI, "pods": 110}
        assert other["metadata"]["labels"]["zone"] == "a"
        assert other["metadata"]["annotations"] == hb

        # telemetry and NotReady
        fleet.add_telemetry("n1", [{"ts": 60, "node": {"cpu": 750, "mem": 3 * GI}}])
        fleet.mark_not_ready("n1", reason="NodeStatusUnknown", message="gone")
        # a label and a cordon through the API
        r = await api.client.patch("/api/v1/nodes/n1", json={
            "metadata": {"labels": {"tier": "gold", "zone": None}},
            "spec": {"unschedulable": True}})
        assert r.status_code == 200, r.text
        got = (await api.client.get("/api/v1/nodes/n1")).json()
        patched = r.json()
        patched["metadata"].pop("resourceVersion", None)
        assert patched == {**got, "metadata": {k: v for k, v in got["metadata"].items()
                                               if k != "resourceVersion"}}
        labels = {k: v for k, v in labels.items() if k != "zone"} | {"tier": "gold"}
        usage = got["status"]["usage"]
        assert set(usage) == {"cpu", "mem"} and 0 < usage["cpu"] < 1
        assert got == _expected(
            got, labels=labels,
            annotations={"edgefed.io/heartbeat": "20",
                         "edgefed.io/applied-labels": '{"tier": "gold"}'},
            spec={"taints": [], "unschedulable": True},
            status=_status(capacity={"cpu": 8000, "memory": 16 * GI, "pods": 110},
                           allocatable={"cpu": 7500, "memory": 15 * GI, "pods": 110},
                           arch="arm64", agentVersion="0.2.0", ready="NotReady",
                           reason="NodeStatusUnknown", usage=usage))
        # the list, and a projection, say the same
        items = (await api.client.get("/api/v1/nodes")).json()["items"]
        assert next(n for n in items if n["metadata"]["name"] == "n1") == got
        proj = (await api.client.get("/api/v1/nodes", params={
            "fields": "metadata.name,spec.unschedulable,status.ready", "limit": "1"})).json()
        assert proj["items"] == [{"metadata": {"name": "n1"}, "spec": {"unschedulable": True},
                                  "status": {"ready": "NotReady"}}]
        # the store's record is what pydantic makes of it, and loads back to the same
        rec = fleet.nodes["n1"]
        assert record_of(rec) == _as_node(rec) == dump_object(rec)

        # delete: gone from the API; its agent cannot bring it back
        r = await api.client.delete("/api/v1/nodes/n1")
        assert r.status_code == 200, r.text
        assert (await api.client.get("/api/v1/nodes/n1")).status_code == 404
        assert [n["metadata"]["name"] for n in
                (await api.client.get("/api/v1/nodes")).json()["items"]] == ["n2"]
        assert fleet.register_node("n1") is False


async def test_a_restart_loads_the_same_node(tmp_path: Path) -> None:
    """The store's record of a compact node loads back to the same JSON (Unknown until
    it reports, as before)."""
    async with open_api(tmp_path) as api:
        add_node(api.fleet, "n1", labels={"zone": "a"})
        api.fleet.node_status("n1", {"agentUpgrade": {"version": "0.3.0", "phase":
                                                      "Downloading"}})
        before = (await api.client.get("/api/v1/nodes/n1")).json()
        await api.store.flush()
    async with open_api(tmp_path) as api:
        after = (await api.client.get("/api/v1/nodes/n1")).json()
        assert after["status"].pop("ready") == "Unknown"
        assert after["status"].pop("reason") == "CloudcoreRestarted"
        for doc in (before, after):
            doc["metadata"].pop("resourceVersion", None)
        before["status"].pop("ready"), before["status"].pop("reason")
        assert after == before
        assert isinstance(api.fleet.nodes["n1"], NodeRecord)


def test_record_and_materialised_node_match_pydantic() -> None:
    """`record()` (the store's writes, built by hand) is what pydantic dumps of the
    `Node` it stands for, in every state a node takes; `materialise()` is that Node."""
    store = FakeStore()
    fleet = make_fleet(store)
    add_node(fleet, "n1", labels={"zone": "a"})
    rec = fleet.nodes["n1"]
    states = [lambda: None,
              lambda: fleet.patch_node("n1", labels={"x": "1"}, unschedulable=True),
              lambda: fleet.apply_forecasts({"n1": dict.fromkeys(FORECAST_KEYS, 0.5)}),
              lambda: fleet.node_status("n1", {"agentUpgrade": {"version": "0.3.0",
                                                                "phase": "Failed",
                                                                "message": "no"}})]
    for change in states:
        change()
        node = rec.materialise()
        assert isinstance(node, Node)
        assert record_of(rec) == _as_node(rec) == dump_object(node) == dump_object(rec)
        assert store.data[("nodes", "n1")] == record_of(rec)
        assert Node.model_validate(record_of(rec)) == node
    # a node with taints and a uid that is not a UUID, as a Node apply or an old store
    # may have them
    raw = {**record_of(rec), "spec": {"taints": [{"key": "k", "effect": "NoSchedule"}],
                                      "unschedulable": False}}
    raw["metadata"] = {**raw["metadata"], "uid": "not-a-uuid", "generation": 3}
    other = NodeRecord.of(Node.model_validate(raw))
    assert record_of(other) == _as_node(other) and record_of(other)["metadata"]["uid"] == \
        "not-a-uuid"


def test_the_record_stays_compact() -> None:
    """A node is two slotted objects and its own labels dict; what nodes have alike is
    one object (no timing: sizes of the objects a node holds on its own)."""
    fleet = make_fleet()
    for n in ("n1", "n2"):
        add_node(fleet, n, labels={"zone": "a"})
    a, b = fleet.nodes["n1"], fleet.nodes["n2"]
    for rec in (a, b):
        assert type(rec) is NodeRecord and type(rec.status) is NodeState
        assert not isinstance(rec, BaseModel) and not isinstance(rec.status, BaseModel)
        assert not hasattr(rec, "__dict__") and not hasattr(rec.status, "__dict__")
    assert a.spec is b.spec and a.annotations is b.annotations
    assert a.status.capacity is b.status.capacity
    assert a.status.allocatable is b.status.allocatable and a.status.usage is b.status.usage
    assert isinstance(a.puid, bytes) and len(a.puid) == 16
    assert a.metadata.uid == str(__import__("uuid").UUID(bytes=a.puid))
    own = (sys.getsizeof(a) + sys.getsizeof(a.status) + sys.getsizeof(a.labels)
           + sys.getsizeof(a.puid))
    # a Node took about 1.9 KB of its own (three models, three __dict__s, the uid text)
    assert own < 600, own
    # NodeState has NodeStatus's fields, in its order
    assert tuple(NodeStatus.model_fields) == STATUS_FIELDS


def test_metadata_view_writes_the_record() -> None:
    """Code written for a Node (the cluster's adoption sets uid and creation time,
    `Nodes.apply` sets labels) changes the record through `metadata`."""
    fleet = make_fleet()
    add_node(fleet, "n1")
    rec = fleet.nodes["n1"]
    uid = "0b5cbb8e-7c4e-4bd0-9d0e-6a3b1f3f4a11"
    rec.metadata.uid = uid
    rec.metadata.creation_timestamp = "2026-01-02T03:04:05Z"
    rec.metadata.labels = {"a": "b"}
    assert rec.metadata.uid == uid and isinstance(rec.puid, bytes)
    doc = dump_object(rec)["metadata"]
    assert (doc["uid"], doc["creationTimestamp"], doc["labels"]) == (
        uid, "2026-01-02T03:04:05Z", {"a": "b"})
    assert rec.metadata.name == "n1" and rec.metadata.namespace == "default"
    assert rec.metadata.generation is None
