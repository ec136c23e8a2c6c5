"""The cloud delivers to a node the ConfigMaps and Secrets its pods' env and
imagePullSecrets reference, not only those volumes mount (in process: the fleet core of
cloudcore with its fake store, as tests/cloudcore does).

The pod without volumes is an expected failure until cloudcore/fleet/desired.py's
`pod_refs` stops skipping pods without volumes (its memory shortcut, 2f91583): the change
is `if not spec.volumes:` -> `if not shared.entries.may_reference(spec):` (owned by the
cloud's engineer; strict, so the fix shows here)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from shared.models import parse_object

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cloudcore"))
from cloudcore_fakes import add_node, make_fleet

SECRET = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "regcred"},
          "type": "kubernetes.io/dockerconfigjson",
          "stringData": {".dockerconfigjson": json.dumps({"auths": {"r:5000": {
              "auth": "ZWRnZTpwdw=="}}})}}
CONF = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "conf"},
        "data": {"MODE": "fast"}}


def pod(name: str, node: str, *, volumes: bool) -> dict[str, Any]:
    spec: dict[str, Any] = {"nodeName": node, "imagePullSecrets": [{"name": "regcred"}],
                            "containers": [{"name": "main", "image": "r:5000/app", "env": [
                                {"name": "MODE", "valueFrom": {"configMapKeyRef": {
                                    "name": "conf", "key": "MODE"}}}]}]}
    if volumes:
        spec["volumes"] = [{"name": "scratch", "emptyDir": {}}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def delivered(volumes: bool) -> dict[str, list[str]]:
    f = make_fleet()
    for n in ("n1", "n2"):
        add_node(f, n)
    f.apply([parse_object(d) for d in (SECRET, CONF, pod("web", "n1", volumes=volumes))])
    return {n: sorted(f.desired[n].items) if n in f.desired else [] for n in ("n1", "n2")}


def test_env_and_pull_secret_references_reach_only_the_pods_node() -> None:
    assert delivered(volumes=True) == {
        "n1": ["configmap/default/conf", "pod/default/web", "secret/default/regcred"],
        "n2": []}


def test_a_pod_without_volumes_gets_its_references_too() -> None:
    assert delivered(volumes=False)["n1"] == [
        "configmap/default/conf", "pod/default/web", "secret/default/regcred"]
