"""The API's apply: every violation of a document in one 422, and per-document results
(issue 18 part 3), through the real API over a real LMDB store."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from api_fixture import open_api

BAD_POD = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bad"},
           "spec": {"hostPID": "yes", "shareProcessNamespace": True,
                    "containers": [{"name": "m", "image": "busybox", "imagee": "x",
                                    "ports": [{"containerPort": 70000}]}]}}


def cm(name: str, namespace: str = "default") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace}, "data": {"a": "1"}}


def privileged_pod(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"containers": [{"name": "m", "image": "busybox",
                                     "securityContext": {"privileged": True}}]}}


async def test_a_422_lists_every_violation_of_every_document(tmp_path: Path) -> None:
    async with open_api(tmp_path) as api:
        r = await api.client.post("/api/v1/apply", json={"documents": [
            cm("ok"), copy.deepcopy(BAD_POD), {"kind": "Service", "metadata": {"name": "s"}}]})
        assert r.status_code == 422, r.text
        body = r.json()
        # the top-level message and field are the first violation's, as before
        assert body["error"].startswith("documents[1]: Pod: ")
        assert body["field"] is not None
        fields = [(e["document"], e["field"]) for e in body["errors"]]
        assert fields == [("documents[1]", "spec.hostPID"),
                          ("documents[1]", "spec.shareProcessNamespace"),
                          ("documents[1]", "spec.containers[0].imagee"),
                          ("documents[1]", "spec.containers[0].ports[0].containerPort"),
                          ("documents[2]", "kind")], body["errors"]
        assert all(e["message"] for e in body["errors"])
        assert "did you mean 'image'" in body["errors"][2]["message"]
        assert not api.fleet.configmaps  # all or nothing: nothing applied

        # the pod security policy's violations, each with its path
        r = await api.client.post("/api/v1/apply", json={"documents": [
            privileged_pod("p")]})
        assert r.status_code == 422
        errs = r.json()["errors"]
        assert [e["field"] for e in errs] == ["spec.containers[0].securityContext.privileged"]
        assert "Pod default/p" in errs[0]["message"]

        # a request body that is not what the route takes: every field too
        r = await api.client.post("/api/v1/jointokens", json={"uses": 0, "description": 5})
        assert r.status_code == 422
        assert {e["field"] for e in r.json()["errors"]} == {"uses", "description"}


async def test_per_document_results_apply_what_passes(tmp_path: Path) -> None:
    async with open_api(tmp_path) as api:
        docs = [cm("a"), copy.deepcopy(BAD_POD), cm("b", "shop"), privileged_pod("p"),
                {"apiVersion": "v1", "kind": "List", "items": [cm("c"), {"kind": "Nope"}]},
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "lab"}},
                cm("d", "lab")]
        for dry in (True, False):
            r = await api.client.post("/api/v1/apply", json={
                "documents": docs, "perDocument": True, "dryRun": dry})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["perDocument"] is True
            res = body["results"]
            assert [x["status"] for x in res] == ["applied", "refused", "refused", "refused",
                                                  "applied", "refused", "applied",
                                                  "applied"]
            assert [x.get("code") for x in res] == [None, 422, 404, 422, None, 422, None,
                                                    None]
            assert res[0] == {"status": "applied", "kind": "ConfigMap",
                              "namespace": "default", "name": "a", "action": "created"}
            assert len(res[1]["errors"]) == 4 and res[1]["document"] == "documents[1]"
            assert res[2]["error"].startswith('namespaces "shop" not found')
            assert res[2]["field"] == "metadata.namespace"
            assert res[3]["errors"][0]["field"] == (
                "spec.containers[0].securityContext.privileged")
            assert res[5]["document"] == "documents[4].items[1]"
            assert (res[7]["namespace"], res[7]["name"]) == ("lab", "d")
            if dry:
                assert not api.fleet.configmaps and "lab" not in api.fleet.namespaces
        assert set(api.fleet.configmaps) == {("default", "a"), ("default", "c"),
                                             ("lab", "d")}
        assert not api.fleet.pods

        # a refused Namespace refuses what goes in it
        r = await api.client.post("/api/v1/apply", json={"perDocument": True, "documents": [
            cm("e", "bad"), {"apiVersion": "v1", "kind": "Namespace", "metadata": {
                "name": "bad", "labels": {"pod-security.kubernetes.io/enforce": "root"}}}]})
        res = r.json()["results"]
        assert [(x["status"], x["code"]) for x in res] == [("refused", 404), ("refused", 422)]

        # with createNamespaces the missing ones are made, and said so
        r = await api.client.post("/api/v1/apply", json={
            "perDocument": True, "createNamespaces": True,
            "documents": [cm("b", "shop"), copy.deepcopy(BAD_POD)]})
        body = r.json()
        assert [x["status"] for x in body["results"]] == ["applied", "refused"]
        assert body["namespacesCreated"] == ["shop"]
        assert ("shop", "b") in api.fleet.configmaps


async def test_without_per_document_the_answer_is_what_older_clients_read(
        tmp_path: Path) -> None:
    async with open_api(tmp_path) as api:
        r = await api.client.post("/api/v1/apply", json={"documents": [cm("a")]})
        assert r.json() == {"dryRun": False, "results": [
            {"kind": "ConfigMap", "namespace": "default", "name": "a", "action": "created"}]}
