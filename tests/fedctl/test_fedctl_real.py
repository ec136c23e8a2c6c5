"""fedctl against a real cloudcore API (FastAPI + LMDB store, no broker) in a thread."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn
import yaml
from typer.testing import CliRunner

from cloudcore.api import create_app
from cloudcore.auth import Auth, Role
from cloudcore.config import StoreSettings
from cloudcore.fleet import Fleet, Liveness
from cloudcore.metrics import Metrics
from cloudcore.scheduler import Scheduler
from cloudcore.store import Store
from fedctl.app import app

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cloudcore"))
from cloudcore_fakes import add_node


@dataclass
class Cloud:
    url: str
    fleet: Fleet
    auth: Auth
    loop: asyncio.AbstractEventLoop

    def call(self, fn: Any, *args: Any, **kw: Any) -> Any:
        """Run fn in the server's loop thread (the fleet is not thread-safe)."""
        fut = asyncio.run_coroutine_threadsafe(_wrap(fn, *args, **kw), self.loop)
        return fut.result(10)


async def _wrap(fn: Any, *args: Any, **kw: Any) -> Any:
    return fn(*args, **kw)


def _serve(tmp: Path, auth_on: bool, ready: threading.Event, box: dict[str, Any]) -> None:
    async def main() -> None:
        async with Store(StoreSettings(state_dir=tmp / "s", batch_interval=0.005)) as store:
            writer = asyncio.create_task(store.run())
            fleet = Fleet(store=store, scheduler=Scheduler(),
                          liveness=Liveness(default_heartbeat=30, missed=3, now=0))
            auth = Auth(store=store, enabled=auth_on)
            api = create_app(fleet, metrics=Metrics(), flush=store.flush, auth=auth)
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            server = uvicorn.Server(uvicorn.Config(api, lifespan="off", log_level="warning"))
            box.update(server=server, fleet=fleet, auth=auth, loop=asyncio.get_running_loop(),
                       url=f"http://127.0.0.1:{sock.getsockname()[1]}")
            serving = asyncio.create_task(server.serve(sockets=[sock]))
            while not server.started:
                await asyncio.sleep(0.01)
            ready.set()
            await serving
            writer.cancel()
            sock.close()

    asyncio.run(main())


def _cloud(tmp_path: Path, auth_on: bool) -> Iterator[Cloud]:
    ready, box = threading.Event(), {}  # type: ignore[var-annotated]
    t = threading.Thread(target=_serve, args=(tmp_path, auth_on, ready, box), daemon=True)
    t.start()
    assert ready.wait(10)
    try:
        yield Cloud(box["url"], box["fleet"], box["auth"], box["loop"])
    finally:
        box["loop"].call_soon_threadsafe(box["fleet"].watches.close)
        box["server"].should_exit = True
        t.join(10)


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[Cloud]:
    yield from _cloud(tmp_path, False)


@pytest.fixture
def secure_cloud(tmp_path: Path) -> Iterator[Cloud]:
    yield from _cloud(tmp_path, True)


def fed(cloud: Cloud | None, *args: str, env: dict[str, str] | None = None) -> Any:
    argv = (["--server", cloud.url] if cloud else []) + list(args)
    return CliRunner().invoke(app, argv, env=env)


def test_join_token_lifecycle(cloud: Cloud) -> None:
    r = fed(cloud, "token", "create", "--ttl", "2h", "--labels", "zone=shop,tier=edge")
    assert r.exit_code == 0, r.output
    token = r.stdout.strip()
    assert len(token.split(".")) == 2
    r = fed(cloud, "token", "list")
    assert token.split(".")[0] in r.stdout and "tier=edge,zone=shop" in r.stdout
    assert "1h" in r.stdout or "119m" in r.stdout
    r = fed(cloud, "token", "revoke", token.split(".")[0])
    assert r.exit_code == 0 and "revoked" in r.stdout
    r = fed(cloud, "token", "revoke", "nosuch")
    assert r.exit_code == 3


def test_label_cordon_drain_events_delete(cloud: Cloud) -> None:
    for n in ("a", "b"):
        cloud.call(add_node, cloud.fleet, n)
    manifest = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
                "spec": {"replicas": 2, "template": {"spec": {"containers": [
                    {"name": "w", "image": "busybox"}]}}}}
    r = CliRunner().invoke(app, ["--server", cloud.url, "apply", "-f", "-"],
                           input=yaml.safe_dump(manifest))
    assert r.exit_code == 0, r.output
    assert fed(cloud, "label", "node", "a", "zone=x", "kubernetes.io/hostname-").exit_code == 0
    labels = cloud.fleet.nodes["a"].metadata.labels
    assert labels.get("zone") == "x" and "kubernetes.io/hostname" not in labels
    assert fed(cloud, "label", "node", "a", "oops").exit_code == 2

    r = fed(cloud, "cordon", "b")
    assert r.stdout.strip() == "node/b cordoned"
    r = fed(cloud, "get", "nodes")
    assert "Ready,SchedulingDisabled" in r.stdout
    assert fed(cloud, "uncordon", "b").exit_code == 0
    r = fed(cloud, "drain", "a")
    assert r.exit_code == 0, r.output
    assert "node/a drained" in r.stdout
    assert all(v == "b" for v in cloud.fleet.bound.values())

    r = fed(cloud, "events", "node/a")
    assert "Cordoned" in r.stdout and "Drained" in r.stdout
    r = fed(cloud, "events", "-o", "json")
    assert any(e["reason"] == "Scheduled" for e in json.loads(r.stdout)["items"])

    r = fed(cloud, "node", "delete", "a")
    assert r.stdout.strip() == "node/a deleted" and "a" not in cloud.fleet.nodes
    assert fed(cloud, "delete", "node", "b").exit_code == 0


def test_get_pages_and_fast_json(cloud: Cloud) -> None:
    def many() -> None:
        for i in range(1200):
            add_node(cloud.fleet, f"n{i:05d}")

    cloud.call(many)
    r = fed(cloud, "get", "nodes", "-o", "json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert [n["metadata"]["name"] for n in doc["items"]] == [f"n{i:05d}" for i in range(1200)]
    assert doc["items"][0]["status"]["allocatable"]["cpu"] == 4000
    r = fed(cloud, "get", "nodes")
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["NAME", "STATUS", "LAST", "SEEN", "GEN"] and len(lines) == 1201
    r = fed(cloud, "get", "nodes", "-o", "name")
    assert r.stdout.splitlines()[-1] == "node/n01199"


def test_get_watch(cloud: Cloud) -> None:
    cloud.call(add_node, cloud.fleet, "w1")
    threading.Timer(0.5, lambda: cloud.call(add_node, cloud.fleet, "w2")).start()
    r = fed(cloud, "get", "nodes", "-w", "--watch-for", "2s")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0].startswith("NAME") and lines[1].startswith("w1")
    assert any(line.startswith("w2") for line in lines[2:])
    r = fed(cloud, "get", "nodes", "-w", "--watch-for", "1s", "-o", "json")
    assert {json.loads(x)["type"] for x in r.stdout.splitlines()} == {"ADDED"}


def test_tokens_env_and_contexts(secure_cloud: Cloud, tmp_path: Path) -> None:
    cloud = secure_cloud
    admin, _ = cloud.call(cloud.auth.create_api_token, role=Role.ADMIN, name="root")
    r = fed(cloud, "get", "nodes")
    assert r.exit_code == 1 and "unauthorized" in r.stderr and "--token" in r.stderr
    r = fed(cloud, "--token", admin, "apitoken", "create", "--role", "read-only",
            "--name", "viewer")
    assert r.exit_code == 0, r.output
    viewer = r.stdout.strip()
    assert fed(cloud, "get", "nodes", env={"FEDCTL_TOKEN": viewer}).exit_code == 0
    r = fed(cloud, "--token", viewer, "cordon", "x")
    assert r.exit_code == 1 and "forbidden" in r.stderr and "needs operator" in r.stderr
    r = fed(cloud, "--token", admin, "whoami")
    assert r.stdout.strip() == "root (admin)"

    # contexts in the config file
    assert fed(None, "config", "set-context", "prod", "--server", cloud.url,
               "--token", admin).exit_code == 0
    lab = fed(None, "config", "set-context", "lab", "--server", "http://127.0.0.1:9")
    assert lab.exit_code == 0
    r = fed(None, "config", "get-contexts")
    rows = [line.split() for line in r.stdout.splitlines()[1:]]
    assert rows == [["lab", "http://127.0.0.1:9", "no", "-"],
                    ["*", "prod", cloud.url, "yes", "-"]]
    assert fed(None, "config", "use-context", "prod").exit_code == 0
    assert fed(None, "config", "current-context").stdout.strip() == "prod"
    assert fed(None, "whoami").stdout.strip() == "root (admin)"
    r = fed(None, "--context", "lab", "get", "nodes")
    assert r.exit_code == 1 and "127.0.0.1:9" in r.stderr
    assert fed(None, "--context", "nope", "get", "nodes").exit_code == 2
    assert fed(None, "config", "use-context", "nope").exit_code == 3


def test_get_namespaces_lists_those_in_use(cloud: Cloud) -> None:
    """`get ns` lists the Namespace objects and every namespace that objects live in
    (cloudcore keeps a Namespace object only for one applied as such)."""
    cloud.call(add_node, cloud.fleet, "edge-1")
    docs = [{"apiVersion": "apps/v1", "kind": "DaemonSet",
             "metadata": {"name": "agent", "namespace": "kube-system"},
             "spec": {"template": {"metadata": {"labels": {"app": "agent"}}, "spec": {
                 "containers": [{"name": "c", "image": "busybox"}]}}}},
            {"apiVersion": "v1", "kind": "Namespace",
             "metadata": {"name": "shop", "labels": {"tier": "edge"}}}]
    r = CliRunner().invoke(app, ["--server", cloud.url, "apply", "-f", "-"],
                           input=json.dumps({"apiVersion": "v1", "kind": "List",
                                             "items": docs}))
    assert r.exit_code == 0, r.output
    r = fed(cloud, "get", "ns")
    assert r.exit_code == 0, r.output
    rows = [line.split() for line in r.stdout.splitlines()]
    assert rows[0] == ["NAME", "STATUS", "LABELS", "AGE"]
    assert [row[0] for row in rows[1:]] == ["default", "kube-system", "shop"]
    assert rows[3][1:3] == ["Active", "tier=edge"] and rows[2][-1] == "-"
    got = yaml.safe_load(fed(cloud, "get", "namespace", "kube-system", "-o", "yaml").stdout)
    assert got == {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kube-system"}}
    names = json.loads(fed(cloud, "get", "namespaces", "-o", "json").stdout)["items"]
    assert [n["metadata"]["name"] for n in names] == ["default", "kube-system", "shop"]
    assert fed(cloud, "get", "namespace", "nosuch").exit_code == 3


def _cm(name: str, namespace: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace}, "data": {"a": "1"}}


def _apply(cloud: Cloud, docs: list[dict[str, Any]], *flags: str) -> Any:
    return CliRunner().invoke(app, ["--server", cloud.url, "apply", "-f", "-", *flags],
                              input=yaml.safe_dump_all(docs))


def test_apply_namespaces_first_create_namespace_and_refusals_per_document(
        cloud: Cloud) -> None:
    """Namespaces must exist (issue 18): a file's Namespace is applied before what goes in
    it wherever it is written; a document in a namespace that does not exist is refused
    by cloudcore on its own while the rest applies; --create-namespace makes it."""
    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}
    r = _apply(cloud, [_cm("a", "shop"), ns, _cm("b", "lab"), _cm("c", "default")])
    assert r.exit_code == 1, r.output
    assert r.stdout.splitlines() == ["configmap/a created", "namespace/shop created",
                                     "configmap/c created"]
    assert ('<stdin>#3 (ConfigMap/b): refused by cloudcore: namespaces "lab" not found'
            in r.stderr), r.stderr
    assert "1 of 4 documents refused (3 applied, 0 skipped)" in r.stderr
    assert cloud.call(lambda: sorted(cloud.fleet.configmaps)) == [
        ("default", "c"), ("shop", "a")]

    r = _apply(cloud, [_cm("b", "lab")], "--create-namespace", "--dry-run")
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines() == ["namespace/lab created (dry run)",
                                     "configmap/b created (dry run)"]
    assert cloud.call(lambda: "lab" in cloud.fleet.namespaces) is False
    r = _apply(cloud, [_cm("b", "lab")], "--create-namespace")
    assert r.stdout.splitlines() == ["namespace/lab created", "configmap/b created"]
    assert cloud.call(lambda: ("lab", "b") in cloud.fleet.configmaps)


def test_create_namespace(cloud: Cloud) -> None:
    r = fed(cloud, "create", "namespace", "factory")
    assert r.exit_code == 0 and r.stdout.strip() == "namespace/factory created", r.output
    assert cloud.call(lambda: "factory" in cloud.fleet.namespaces)
    r = fed(cloud, "create", "namespace", "factory")
    assert r.exit_code == 1 and 'namespaces "factory" already exists' in r.stderr
    r = fed(cloud, "create", "namespace", "Bad_Name")
    assert r.exit_code == 2 and "DNS-1123" in r.stderr


def test_apply_reports_every_field_cloudcore_refuses(cloud: Cloud) -> None:
    """A document fedctl passes and cloudcore refuses (here: the pod security policy)
    is reported with each of cloudcore's reasons, and the other documents apply."""
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
           "spec": {"hostPID": True, "containers": [
               {"name": "m", "image": "busybox", "securityContext": {"privileged": True}}]}}
    r = _apply(cloud, [pod, _cm("ok", "default")])
    assert r.exit_code == 1, r.output
    assert r.stdout.splitlines() == ["configmap/ok created"]
    err = r.stderr.splitlines()
    assert err[0] == ("error: <stdin>#1 (Pod/p): refused by cloudcore: refused by pod security "
                      "policy (2 violations):")
    assert err[1].strip().startswith("spec.hostPID=true")
    assert err[2].strip().startswith("spec.containers[0].securityContext.privileged=true")


def test_priority_classes_apply_and_get(cloud: Cloud) -> None:
    pc = {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
          "metadata": {"name": "edge-high"}, "value": 1000, "globalDefault": True}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
           "spec": {"priorityClassName": "edge-high",
                    "containers": [{"name": "m", "image": "busybox"}]}}
    r = _apply(cloud, [pod, pc])
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines() == ["pod/p created", "priorityclass/edge-high created"]
    rows = [line.split() for line in fed(cloud, "get", "pc").stdout.splitlines()]
    assert rows[0] == ["NAME", "VALUE", "GLOBAL-DEFAULT", "AGE"]
    assert rows[1][:3] == ["edge-high", "1000", "true"]
    got = yaml.safe_load(fed(cloud, "get", "pod", "p", "-o", "yaml").stdout)
    assert got["spec"]["priority"] == 1000
    r = _apply(cloud, [{**pod, "metadata": {"name": "q"},
                        "spec": {**pod["spec"], "priorityClassName": "nope"}}])
    assert r.exit_code == 1
    assert "spec.priorityClassName: no PriorityClass with name nope was found" in r.stderr
