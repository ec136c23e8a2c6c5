"""Secret and Namespace kinds; ConfigMap/Secret delivery to exactly the nodes that use them."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
from api_fixture import open_api
from cloudcore_fakes import FakeStore, add_node, make_fleet

from cloudcore.errors import NotFound
from cloudcore.fleet import Fleet
from shared.entries import config_files, configmap_key, pod_key, secret_key
from shared.models import parse_object


def apply(fleet: Any, *docs: dict[str, Any]) -> list[str]:
    return [r.action for r in fleet.apply([parse_object(d) for d in docs])]


def cm(name: str, **data: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}


def secret(name: str, **data: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
            "stringData": data}


def pod(name: str, node: str, *, cms: tuple[str, ...] = (), secrets: tuple[str, ...] = ()
        ) -> dict[str, Any]:
    vols = [{"name": f"c-{c}", "configMap": {"name": c}} for c in cms]
    vols += [{"name": f"s-{s}", "secret": {"secretName": s}} for s in secrets]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"nodeName": node, "volumes": vols,
                     "containers": [{"name": "main", "image": "busybox",
                                     "volumeMounts": [{"name": v["name"],
                                                       "mountPath": f"/m/{v['name']}"}
                                                      for v in vols]}]}}


def keys(fleet: Fleet, node: str) -> set[str]:
    return set(fleet.desired[node].items)


def fleet3() -> tuple[Fleet, list[set[str]]]:
    fleet = make_fleet()
    changed: list[set[str]] = []
    fleet.desired_sets.add_listener(changed.append)
    for n in ("n1", "n2", "n3"):
        add_node(fleet, n)
    return fleet, changed


def test_configmap_and_secret_go_only_to_nodes_whose_pods_use_them() -> None:
    fleet, changed = fleet3()
    apply(fleet, cm("conf", a="1"), secret("pw", key="hunter2"), cm("unused", x="y"))
    assert not changed or all(not c for c in changed)  # nobody uses them yet
    apply(fleet, pod("p1", "n1", cms=("conf",)), pod("p2", "n2", cms=("conf",), secrets=("pw",)),
          pod("p3", "n3"))
    ck, sk = configmap_key("default", "conf"), secret_key("default", "pw")
    assert keys(fleet, "n1") == {pod_key("default", "p1"), ck}
    assert keys(fleet, "n2") == {pod_key("default", "p2"), ck, sk}
    assert keys(fleet, "n3") == {pod_key("default", "p3")}
    assert configmap_key("default", "unused") not in set().union(*(keys(fleet, n)
                                                                   for n in fleet.desired))
    value = fleet.desired["n2"].items[sk][0]
    assert config_files(sk, value) == {"key": b"hunter2"}
    assert config_files(ck, fleet.desired["n1"].items[ck][0]) == {"a": b"1"}

    # a change of the ConfigMap is a delta to n1 and n2 only; of the Secret to n2 only
    gens = {n: fleet.desired[n].gen for n in ("n1", "n2", "n3")}
    changed.clear()
    assert apply(fleet, cm("conf", a="2")) == ["configured"]
    assert changed == [{"n1", "n2"}]
    d = fleet.desired["n1"].delta(gens["n1"], fleet.desired["n1"].epoch)
    assert set(d.put) == {ck} and not d.delete
    assert config_files(ck, fleet.desired["n1"].items[ck][0]) == {"a": b"2"}
    changed.clear()
    apply(fleet, secret("pw", key="s3cret"))
    assert changed == [{"n2"}]
    assert config_files(sk, fleet.desired["n2"].items[sk][0]) == {"key": b"s3cret"}
    assert fleet.desired["n3"].gen == gens["n3"]

    # unchanged objects do not bump anything
    changed.clear()
    assert apply(fleet, cm("conf", a="2"), secret("pw", key="s3cret")) == ["unchanged"] * 2
    assert changed == []

    # the entry leaves a node when its last pod using it goes
    fleet.delete("Pod", "default", "p1")
    assert keys(fleet, "n1") == set()
    assert ck in keys(fleet, "n2")
    # a pod that stops mounting it drops it too
    apply(fleet, pod("p2", "n2", secrets=("pw",)))
    assert keys(fleet, "n2") == {pod_key("default", "p2"), sk}
    # deleting the Secret removes its entry from the nodes (the pod stays)
    changed.clear()
    fleet.delete("Secret", "default", "pw")
    assert changed == [{"n2"}] and keys(fleet, "n2") == {pod_key("default", "p2")}
    # and recreating it delivers it again
    apply(fleet, secret("pw", key="again"))
    assert sk in keys(fleet, "n2")


def test_workload_pods_get_their_configmaps_and_namespaces_are_respected() -> None:
    fleet, _ = fleet3()
    apply(fleet, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}},
          {**cm("conf", a="1"), "metadata": {"name": "conf", "namespace": "shop"}})
    apply(fleet, {"apiVersion": "apps/v1", "kind": "DaemonSet",
                  "metadata": {"name": "agent", "namespace": "shop"},
                  "spec": {"selector": {"matchLabels": {"app": "a"}},
                           "template": {"metadata": {"labels": {"app": "a"}},
                                        "spec": {"nodeSelector": {"kubernetes.io/hostname": "n3"},
                                                 "volumes": [{"name": "c",
                                                              "configMap": {"name": "conf"}}],
                                                 "containers": [{"name": "m",
                                                                 "image": "busybox"}]}}}})
    assert configmap_key("shop", "conf") in keys(fleet, "n3")
    assert "n1" not in fleet.desired or not keys(fleet, "n1")
    # a pod in another namespace naming the same ConfigMap does not get shop's
    apply(fleet, pod("p", "n1", cms=("conf",)))
    assert keys(fleet, "n1") == {pod_key("default", "p")}


def test_secret_is_stored_normalised_and_namespace_is_cluster_scoped() -> None:
    store = FakeStore()
    fleet = make_fleet(store)
    assert apply(fleet, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
                         "data": {"a": base64.b64encode(b"x").decode()},
                         "stringData": {"b": "y"}}) == ["created"]
    stored = store.data[("secrets", "default/s")]
    assert stored["data"] == {"a": "eA==", "b": "eQ=="} and not stored.get("stringData")
    assert apply(fleet, {"apiVersion": "v1", "kind": "Namespace",
                         "metadata": {"name": "shop", "labels": {"team": "a"}}}) == ["created"]
    assert ("namespaces", "shop") in store.data
    assert fleet.get("Namespace", None, "shop")["metadata"]["labels"] == {"team": "a"}
    assert [o["metadata"]["name"] for o in fleet.list("Namespace")] == ["shop"]
    with pytest.raises(Exception, match="namespace"):
        parse_object({"apiVersion": "v1", "kind": "Namespace",
                      "metadata": {"name": "x", "namespace": "y"}})
    fleet.delete("Namespace", None, "shop")
    with pytest.raises(NotFound):
        fleet.get("Namespace", None, "shop")
    # reload from the store
    again = make_fleet(store)
    again.load({"secrets": {k: v for (db, k), v in store.data.items() if db == "secrets"}})
    assert again.secrets[("default", "s")].decoded() == {"a": b"x", "b": b"y"}


async def test_api_secrets_redacted_in_lists_and_namespaces(tmp_path: Path) -> None:
    async with open_api(tmp_path) as api:
        c = api.client
        r = await c.post("/api/v1/apply", json={"documents": [
            secret("pw", key="hunter2"),
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}]})
        assert r.status_code == 200, r.text
        listed = (await c.get("/api/v1/secrets")).json()["items"]
        assert listed[0]["data"] == {"key": "<redacted>"} and "hunter2" not in str(listed)
        assert "aHVudGVyMg==" not in (await c.get("/api/v1/secrets?fields=data")).text
        nd = await c.get("/api/v1/secrets", headers={"Accept": "application/x-ndjson"})
        assert "aHVudGVyMg==" not in nd.text
        revealed = (await c.get("/api/v1/secrets?reveal=true")).json()["items"]
        assert revealed[0]["data"] == {"key": "aHVudGVyMg=="}
        one = (await c.get("/api/v1/secrets/default/pw")).json()
        assert one["data"] == {"key": "aHVudGVyMg=="}

        ns = (await c.get("/api/v1/namespaces")).json()["items"]
        # default and kube-system always exist, as in Kubernetes
        assert [n["metadata"]["name"] for n in ns] == ["default", "kube-system", "shop"]
        assert "namespace" not in ns[0]["metadata"]
        assert (await c.get("/api/v1/namespaces/shop")).status_code == 200
        assert (await c.get("/api/v1/namespaces/x/shop")).status_code == 404
        page = (await c.get("/api/v1/namespaces?limit=3")).json()
        assert len(page["items"]) == 3 and "continue" not in page
        assert (await c.delete("/api/v1/namespaces/shop")).status_code == 200
        assert (await c.get("/api/v1/namespaces/shop")).status_code == 404
        assert (await c.delete("/api/v1/secrets/default/pw")).status_code == 200
        assert (await c.get("/api/v1/secrets")).json()["items"] == []
        # both survive a restart of the store
        await c.post("/api/v1/apply", json={"documents": [secret("k", a="b")]})
        await api.store.flush()
        rec = api.store.load()
        assert "default/k" in rec["secrets"]
