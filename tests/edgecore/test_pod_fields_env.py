"""env[].valueFrom and envFrom: the schema's rules, the agent's resolution (Kubernetes'
order and messages), and the reconciler keeping a container waiting with
CreateContainerConfigError until the ConfigMap / Secret / key it needs is there."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edgecore.cache import Cache
from edgecore.reconciler import CrashLoop, Reconciler
from edgecore.reconciler import env as envs
from edgecore.reconciler.naming import container_spec
from edgecore.reconciler.volumes import Volumes
from shared.delta import EdgeDesired
from shared.entries import (
    configmap_entry,
    configmap_key,
    parse_pod_entry,
    pod_entry,
    pod_key,
    referenced_keys,
    secret_entry,
    secret_key,
)
from shared.errors import ObjectError
from shared.models import Pod
from shared.pods import PodSpec

from edgecore_fakes import FakeRuntime  # isort: skip

FACTS = envs.PodFacts(node="edge-1", pod_ip="10.88.0.5", host_ip="192.168.1.9",
                      cpu_millis=4000, memory_bytes=8 * 2**30)


def entry_of(spec: dict[str, Any], *, labels: dict[str, str] | None = None,
             annotations: dict[str, str] | None = None, uid: str | None = None):
    pod = Pod.model_validate({"metadata": {"name": "web", "namespace": "shop",
                                           "labels": labels or {},
                                           "annotations": annotations or {}, "uid": uid},
                              "spec": spec})
    return parse_pod_entry(pod_key("shop", "web"), pod_entry(pod))


def data_of(items: dict[str, Any]):
    vols = Volumes(Path("/nonexistent"))
    return lambda k: vols.config_data(k, items)


ITEMS = {
    configmap_key("shop", "conf"): configmap_entry({"MODE": "fast", "LEVEL": "3"}),
    secret_key("shop", "creds"): secret_entry({"password": b"s3cret", "user": "admin"}),
}


def test_every_source_resolves_in_kubernetes_order() -> None:
    spec = {"nodeName": "edge-1", "serviceAccountName": "agent", "containers": [{
        "name": "main", "image": "busybox",
        "command": ["/bin/app", "--node=$(NODE)", "$$(NODE)", "$(UNDEFINED)"],
        "args": ["--level=$(LEVEL)"],
        "resources": {"requests": {"cpu": "250m", "memory": "64Mi"},
                      "limits": {"memory": "128Mi"}},
        "envFrom": [{"configMapRef": {"name": "conf"}},
                    {"prefix": "S_", "secretRef": {"name": "creds"}}],
        "env": [
            {"name": "MODE", "value": "slow"},  # env overrides envFrom
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "GREETING", "value": "on $(NODE) at $(LATER)"},
            {"name": "LATER", "value": "x"},
            {"name": "PASS", "valueFrom": {"secretKeyRef": {"name": "creds",
                                                            "key": "password"}}},
            {"name": "POD", "valueFrom": {"fieldRef": {"apiVersion": "v1",
                                                       "fieldPath": "metadata.name"}}},
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {
                "fieldPath": "metadata.labels['app']"}}},
            {"name": "TEAM", "valueFrom": {"fieldRef": {
                "fieldPath": "metadata.annotations['team']"}}},
            {"name": "SA", "valueFrom": {"fieldRef": {
                "fieldPath": "spec.serviceAccountName"}}},
            {"name": "PODIP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "HOSTIP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
            {"name": "CPU_REQ_M", "valueFrom": {"resourceFieldRef": {
                "resource": "requests.cpu", "divisor": "1m"}}},
            {"name": "CPU_REQ", "valueFrom": {"resourceFieldRef": {
                "resource": "requests.cpu"}}},  # 250m rounds up to 1 core
            {"name": "CPU_LIM", "valueFrom": {"resourceFieldRef": {
                "containerName": "main", "resource": "limits.cpu"}}},  # unset: node's
            {"name": "MEM_LIM_MI", "valueFrom": {"resourceFieldRef": {
                "resource": "limits.memory", "divisor": "1Mi"}}},
            {"name": "MEM_REQ", "valueFrom": {"resourceFieldRef": {
                "resource": "requests.memory"}}},
        ]}]}
    entry = entry_of(spec, labels={"app": "shopfront"},
                     annotations={"team": "edge", "other": "not carried"}, uid="u-1")
    c = entry.spec.containers[0]
    env = envs.build(entry, c, data=data_of(ITEMS), facts=FACTS)
    assert env == {
        "MODE": "slow", "LEVEL": "3", "S_password": "s3cret", "S_user": "admin",
        "NODE": "edge-1", "GREETING": "on edge-1 at $(LATER)",
        "LATER": "x", "PASS": "s3cret", "POD": "web", "NS": "shop", "UID": "u-1",
        "APP": "shopfront", "TEAM": "edge", "SA": "agent", "PODIP": "10.88.0.5",
        "HOSTIP": "192.168.1.9", "CPU_REQ_M": "250", "CPU_REQ": "1", "CPU_LIM": "4",
        "MEM_LIM_MI": "128", "MEM_REQ": str(64 * 2**20)}
    assert list(env)[:4] == ["MODE", "LEVEL", "S_password", "S_user"]
    spec_ = container_spec(entry, c, env=env)
    assert spec_.command == ("/bin/app", "--node=edge-1", "$(NODE)", "$(UNDEFINED)")
    assert spec_.args == ("--level=3",)
    assert spec_.env["PASS"] == "s3cret"


def test_the_entry_carries_the_uid_and_only_the_annotations_the_env_reads() -> None:
    """The uid always (a pod made again under its name is a new pod on the node)."""
    spec = {"containers": [{"name": "m", "image": "b", "env": [
        {"name": "T", "valueFrom": {"fieldRef": {"fieldPath":
                                                 "metadata.annotations['team']"}}}]}]}
    pod = Pod.model_validate({"metadata": {"name": "web", "uid": "u-7",
                                           "annotations": {"team": "a", "x": "y"}},
                              "spec": spec})
    value = pod_entry(pod)
    assert value["annotations"] == {"team": "a"} and value["uid"] == "u-7"
    plain = pod_entry(Pod.model_validate({"metadata": {"name": "web", "uid": "u",
                                                       "annotations": {"team": "a"}},
                                          "spec": {"containers": [{"name": "m",
                                                                   "image": "b"}]}}))
    assert "annotations" not in plain and plain["uid"] == "u"
    # no uid from the cloud: one derived from the pod's key, stable
    entry = parse_pod_entry("pod/default/web", {k: v for k, v in value.items() if k != "uid"})
    assert envs.pod_uid(entry) == envs.pod_uid(entry) != ""


def test_referenced_keys_include_env_sources() -> None:
    spec = PodSpec.parse({"containers": [{"name": "m", "image": "b",
        "envFrom": [{"configMapRef": {"name": "a"}}, {"secretRef": {"name": "b"}}],
        "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}},
                {"name": "Y", "valueFrom": {"secretKeyRef": {"name": "d", "key": "k",
                                                             "optional": True}}}]}]})
    assert referenced_keys("ns", spec) == {"configmap/ns/a", "secret/ns/b",
                                           "configmap/ns/c", "secret/ns/d"}


@pytest.mark.parametrize(("env", "env_from", "message"), [
    ([{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "conf", "key": "NOPE"}}}], [],
     "couldn't find key NOPE in ConfigMap shop/conf"),
    ([{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "gone", "key": "K"}}}], [],
     "configmap 'gone' not found"),
    ([{"name": "X", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "nope"}}}], [],
     "couldn't find key nope in Secret shop/creds"),
    ([{"name": "X", "valueFrom": {"secretKeyRef": {"name": "gone", "key": "k"}}}], [],
     "secret 'gone' not found"),
    ([], [{"secretRef": {"name": "gone"}}], "secret 'gone' not found (envFrom"),
])
def test_a_missing_required_reference_is_an_error(env, env_from, message) -> None:
    entry = entry_of({"containers": [{"name": "m", "image": "b", "env": env,
                                      "envFrom": env_from}]})
    with pytest.raises(envs.EnvError, match=message.replace("(", r"\(")):
        envs.build(entry, entry.spec.containers[0], data=data_of(ITEMS), facts=FACTS)


def test_optional_references_are_left_out() -> None:
    entry = entry_of({"containers": [{"name": "m", "image": "b",
        "envFrom": [{"configMapRef": {"name": "gone", "optional": True}}],
        "env": [{"name": "A", "valueFrom": {"configMapKeyRef": {
                    "name": "conf", "key": "NOPE", "optional": True}}},
                {"name": "B", "valueFrom": {"secretKeyRef": {
                    "name": "gone", "key": "k", "optional": True}}},
                {"name": "C", "value": "c"}]}]})
    assert envs.build(entry, entry.spec.containers[0], data=data_of(ITEMS),
                      facts=FACTS) == {"C": "c"}


@pytest.mark.parametrize(("env", "field", "text"), [
    ({"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "spec.hostname"}}},
     "spec.containers[0].env[0].valueFrom.fieldRef.fieldPath", "not a supported fieldPath"),
    ({"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels"}}},
     "spec.containers[0].env[0].valueFrom.fieldRef.fieldPath", "not a supported fieldPath"),
    ({"name": "X", "value": "v", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
     "spec.containers[0].env[0]", "value and valueFrom cannot both be set"),
    ({"name": "X", "valueFrom": {}}, "spec.containers[0].env[0].valueFrom",
     "exactly one of fieldRef"),
    ({"name": "X", "valueFrom": {"resourceFieldRef": {"resource": "limits.gpu"}}},
     "spec.containers[0].env[0].valueFrom.resourceFieldRef.resource", "must be one of"),
    ({"name": "X", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu",
                                                      "divisor": "0"}}},
     "spec.containers[0].env[0].valueFrom.resourceFieldRef.divisor", "positive cpu"),
    ({"name": "X", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu",
                                                      "containerName": "other"}}},
     "spec", "names no container of the pod"),
    ({"name": "X", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "a/b"}}},
     "spec.containers[0].env[0].valueFrom.configMapKeyRef.key", "alphanumerics"),
    ({"name": "A=B", "value": "v"}, "spec.containers[0].env[0].name", "without '='"),
    ({"name": "X", "valueFrom": {"fieldRef": {"apiVersion": "v2",
                                              "fieldPath": "spec.nodeName"}}},
     "spec.containers[0].env[0].valueFrom.fieldRef.apiVersion", "must be one of"),
])
def test_the_schema_refuses_what_kubernetes_refuses(env, field, text) -> None:
    with pytest.raises(ObjectError, match=text) as info:
        PodSpec.parse({"containers": [{"name": "m", "image": "b", "env": [env]}]}, "spec")
    assert info.value.field == field


def test_env_from_needs_one_source() -> None:
    with pytest.raises(ObjectError, match="exactly one of configMapRef, secretRef"):
        PodSpec.parse({"containers": [{"name": "m", "image": "b", "envFrom": [
            {"prefix": "P_"}]}]})


# -- the reconciler --------------------------------------------------------------------------


class Sink:
    def __init__(self) -> None:
        self.latest: dict[str, Any] = {}

    def update(self, key: str, status: Any) -> None:
        self.latest[key] = status


async def test_the_container_waits_until_its_configmap_key_arrives(tmp_path: Path) -> None:
    rt = FakeRuntime(clock=lambda: 1000.0)
    sink = Sink()
    pod = Pod.model_validate({"metadata": {"name": "web", "namespace": "shop"}, "spec": {
        "containers": [{"name": "main", "image": "busybox:1", "env": [
            {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "conf",
                                                               "key": "MODE"}}},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}]}]}})
    k = pod_key("shop", "web")
    items: dict[str, Any] = {k: pod_entry(pod),
                             configmap_key("shop", "conf"): configmap_entry({"OTHER": "1"})}
    rec = Reconciler(node="edge-1", runtime=rt, cache=Cache(tmp_path / "cache"),
                     desired=lambda: EdgeDesired(epoch="E", gen=1, items=dict(items)),
                     sink=sink, clock=lambda: 1000.0, crashloop=CrashLoop(),
                     volumes=Volumes(tmp_path / "pods"))
    await rec.reconcile_once()
    st = sink.latest[k]
    assert (st.phase, st.reason) == ("Pending", "CreateContainerConfigError")
    assert "couldn't find key MODE in ConfigMap shop/conf" in st.message
    assert st.container_statuses[0].restart_count == 0 and not rt.containers
    items[configmap_key("shop", "conf")] = configmap_entry({"MODE": "fast"})
    await rec.reconcile_once()
    assert sink.latest[k].phase == "Running"
    (c,) = rt.containers.values()
    assert c.spec.env["MODE"] == "fast" and c.spec.env["NODE"] == "edge-1"


def test_plain_values_refer_to_earlier_ones_without_value_from() -> None:
    entry = entry_of({"containers": [{"name": "m", "image": "b",
                                      "command": ["echo", "$(URL)", "$$(URL)"],
                                      "env": [{"name": "HOST", "value": "db"},
                                              {"name": "URL", "value": "http://$(HOST):1"},
                                              {"name": "COST", "value": "$$5"}]}]})
    spec = container_spec(entry, entry.spec.containers[0])
    assert dict(spec.env) == {"HOST": "db", "URL": "http://db:1", "COST": "$5"}
    assert spec.command == ("echo", "http://db:1", "$(URL)")
