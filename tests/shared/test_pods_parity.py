"""One pod schema, held to it: the cloud's pydantic objects and the agent read the same
fields, recursively, and the statuses the agent builds are the fields the cloud reads.

The pod spec is defined once (`shared.pods`, msgspec Structs); `shared.models` must
use those very classes for `Pod.spec` and `PodTemplate.spec`, so the field trees
below are compared, not a fixture: a field added to one side only fails
`test_*_field_trees_*`. The statuses are still two definitions (the agent's slotted
dataclasses, the cloud's pydantic models), so their trees are compared the same way.
`FULL` must set every field of the spec, so a new field cannot skip the round trips.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from typing import Any, Union

import msgspec
import msgspec.inspect as mi
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from shared import models, pods, policy
from shared.entries import CLOUD_ONLY_FIELDS, parse_pod_entry, pod_entry, status_value
from shared.errors import ObjectError, UnsupportedField

Tree = dict[str, Any]
"""A field tree: wire name -> the tree of the field's object type, or None for a value."""


def struct_tree(t: mi.Type) -> Tree | None:
    """The field tree of a msgspec type (through lists, dicts and optionals)."""
    if isinstance(t, mi.StructType):
        return {f.encode_name: struct_tree(f.type) for f in t.fields}
    if isinstance(t, mi.ListType):
        return struct_tree(t.item_type)
    if isinstance(t, mi.DictType):
        return struct_tree(t.value_type)
    if isinstance(t, mi.UnionType):
        trees = [x for x in (struct_tree(u) for u in t.types) if x is not None]
        return trees[0] if trees else None
    return None


def _objects_in(annotation: Any) -> list[type]:
    """The classes with fields (pydantic models, Structs, dataclasses) an annotation
    names, through Optional, list, dict and Annotated."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _objects_in(typing.get_args(annotation)[0])
    if origin in (Union, types.UnionType, list, dict, typing.Literal):
        return [c for a in typing.get_args(annotation) for c in _objects_in(a)]
    if isinstance(annotation, type) and (issubclass(annotation, BaseModel | msgspec.Struct)
                                         or dataclasses.is_dataclass(annotation)):
        return [annotation]
    return []


def pydantic_tree(cls: type[BaseModel]) -> Tree:
    """The field tree pydantic validates and dumps for a model (wire names)."""
    out: Tree = {}
    for name, f in cls.model_fields.items():
        inner = _objects_in(f.annotation)
        out[f.alias or name] = _tree_of(inner[0]) if inner else None
    return out


def dataclass_tree(cls: type) -> Tree:
    """The field tree of a status dataclass as `to_wire()` names it."""
    hints = typing.get_type_hints(cls)
    out: Tree = {}
    for f in dataclasses.fields(cls):
        inner = _objects_in(hints[f.name])
        out[pods._camel(f.name)] = _tree_of(inner[0]) if inner else None
    return out


def _tree_of(cls: type) -> Tree | None:
    if issubclass(cls, BaseModel):
        return pydantic_tree(cls)
    if issubclass(cls, msgspec.Struct):
        return struct_tree(mi.type_info(cls))
    return dataclass_tree(cls)


def _paths(tree: Tree | None, at: str = "") -> set[str]:
    out: set[str] = set()
    for k, sub in (tree or {}).items():
        here = f"{at}.{k}" if at else k
        out |= {here} | _paths(sub, here)
    return out


def _fields_of(t: mi.Type) -> set[tuple[str, str]]:
    """Every (spec type, field) reachable from `t`."""
    out: set[tuple[str, str]] = set()
    seen: set[type] = set()

    def walk(t: mi.Type) -> None:
        if isinstance(t, mi.StructType) and t.cls not in seen:
            seen.add(t.cls)
            for f in t.fields:
                out.add((t.cls.__name__, f.encode_name))
                walk(f.type)
        elif isinstance(t, mi.ListType):
            walk(t.item_type)
        elif isinstance(t, mi.DictType):
            walk(t.value_type)
        elif isinstance(t, mi.UnionType):
            for u in t.types:
                walk(u)

    walk(t)
    return out


def _fields_set(t: mi.Type, doc: Any) -> set[tuple[str, str]]:
    """The (spec type, field) pairs a document sets somewhere."""
    if isinstance(t, mi.UnionType):
        return {x for u in t.types for x in _fields_set(u, doc)}
    if isinstance(t, mi.ListType) and isinstance(doc, list):
        return {x for v in doc for x in _fields_set(t.item_type, v)}
    if isinstance(t, mi.StructType) and isinstance(doc, dict):
        out: set[tuple[str, str]] = set()
        for f in t.fields:
            if f.encode_name in doc:
                out |= {(t.cls.__name__, f.encode_name)}
                out |= _fields_set(f.type, doc[f.encode_name])
        return out
    return set()


def test_the_cloud_uses_the_one_pod_spec() -> None:
    """No second definition: Pod.spec and PodTemplate.spec are `shared.pods.PodSpec`,
    and every spec piece `shared.models` names is the `shared.pods` class."""
    for model in (models.Pod, models.PodTemplate):
        assert _objects_in(model.model_fields["spec"].annotation) == [pods.PodSpec]
    for cls in pods.SPEC_TYPES:
        assert getattr(models, cls.__name__) is cls
    pod = models.parse_object({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a"},
                               "spec": MINIMAL})
    assert isinstance(pod, models.Pod) and type(pod.spec) is pods.PodSpec


def test_spec_field_trees_are_equal_recursively() -> None:
    cloud = pydantic_tree(models.Pod)["spec"]
    edge = struct_tree(mi.type_info(pods.PodSpec))
    assert cloud == edge
    template = pydantic_tree(models.DaemonSet)["spec"]["template"]["spec"]
    assert template == edge
    # the tree reaches the leaves: containers, volumes, probes, securityContext...
    assert {"containers.livenessProbe.httpGet.port", "volumes.configMap.items.path",
            "containers.securityContext.seccompProfile.localhostProfile",
            "securityContext.supplementalGroups", "tolerations.effect"} <= _paths(edge)


def test_status_field_trees_are_equal_recursively() -> None:
    """The agent's status dataclasses render exactly the fields the cloud's models read."""
    assert dataclass_tree(pods.PodStatus) == pydantic_tree(models.PodStatus)
    assert dataclass_tree(pods.ContainerStatus) == pydantic_tree(models.ContainerStatus)
    assert dataclass_tree(pods.LastState) == pydantic_tree(models.LastState)


def test_full_sets_every_field_of_the_spec() -> None:
    """A field nobody sets is a field no round trip below checks: add it to FULL."""
    spec = mi.type_info(pods.PodSpec)
    missing = _fields_of(spec) - _fields_set(spec, FULL)
    assert not missing, f"FULL does not set: {sorted(missing)}"


FULL: dict[str, Any] = {
    "containers": [
        {"name": "web", "image": "registry.local:5000/web:1", "command": ["/bin/web"],
         "args": ["--port", "8080"], "env": [
             {"name": "A", "value": "1"}, {"name": "B"},
             {"name": "C", "valueFrom": {"configMapKeyRef": {"name": "web-conf", "key": "c",
                                                             "optional": True}}},
             {"name": "D", "valueFrom": {"secretKeyRef": {"name": "web-keys", "key": "d",
                                                          "optional": False}}},
             {"name": "E", "valueFrom": {"fieldRef": {"apiVersion": "v1",
                                                      "fieldPath": "spec.nodeName"}}},
             {"name": "F", "valueFrom": {"resourceFieldRef": {
                 "containerName": "web", "resource": "limits.memory", "divisor": "1Mi"}}}],
         "envFrom": [{"prefix": "CONF_", "configMapRef": {"name": "web-conf",
                                                          "optional": True}},
                     {"secretRef": {"name": "web-keys", "optional": False}}],
         "workingDir": "/srv",
         "ports": [{"containerPort": 8080, "name": "http"},
                   {"containerPort": 53, "protocol": "UDP", "hostPort": 5353}],
         "resources": {"requests": {"cpu": "250m", "memory": "64Mi"},
                       "limits": {"cpu": 1, "memory": "128Mi", "example.com/npu": 1}},
         "imagePullPolicy": "Always",
         "volumeMounts": [{"name": "conf", "mountPath": "/etc/web", "readOnly": True},
                          {"name": "data", "mountPath": "/data",
                           "mountPropagation": "HostToContainer"}],
         "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http", "scheme": "HTTP"},
                           "periodSeconds": 5, "failureThreshold": 2},
         "readinessProbe": {"tcpSocket": {"port": 8080}, "successThreshold": 2},
         "startupProbe": {"exec": {"command": ["true"]}, "initialDelaySeconds": 1,
                          "timeoutSeconds": 3},
         "securityContext": {"runAsUser": 1000, "runAsGroup": 1000, "runAsNonRoot": True,
                             "readOnlyRootFilesystem": True, "privileged": False,
                             "allowPrivilegeEscalation": False,
                             "capabilities": {"add": ["NET_BIND_SERVICE"], "drop": ["ALL"]},
                             "seccompProfile": {"type": "Localhost",
                                                "localhostProfile": "profiles/web.json"}}},
        {"name": "side", "image": "busybox",
         "volumeMounts": [{"name": "data", "mountPath": "/shared",
                           "mountPropagation": "Bidirectional"}],
         "securityContext": {"privileged": True, "seccompProfile": {"type": "Unconfined"},
                             "procMount": "Unmasked"}},
    ],
    "initContainers": [
        {"name": "migrate", "image": "busybox", "command": ["/bin/migrate"],
         "volumeMounts": [{"name": "data", "mountPath": "/data"}]},
        {"name": "proxy", "image": "busybox", "restartPolicy": "Always",
         "readinessProbe": {"tcpSocket": {"port": 15001}}},
    ],
    "restartPolicy": "OnFailure",
    "nodeSelector": {"zone": "shop"},
    "nodeName": "edge-1",
    "tolerations": [{"key": "k", "operator": "Equal", "value": "v", "effect": "NoExecute",
                     "tolerationSeconds": 30}, {"operator": "Exists"}],
    "hostNetwork": True,
    "hostUsers": False,
    "serviceAccountName": "web",
    "automountServiceAccountToken": False,
    "priorityClassName": "edge-critical", "priority": 1000,
    "dnsPolicy": "None",
    "dnsConfig": {"nameservers": ["10.0.0.53", "fd00::53"], "searches": ["shop.local."],
                  "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]},
    "imagePullSecrets": [{"name": "regcred"}],
    "hostPID": True,
    "hostIPC": False,
    "securityContext": {"runAsUser": 1001, "runAsGroup": 1001, "runAsNonRoot": True,
                        "fsGroup": 2000, "fsGroupChangePolicy": "OnRootMismatch",
                        "supplementalGroups": [3000, 3001],
                        "sysctls": [{"name": "kernel.shm_rmid_forced", "value": "1"}],
                        "seccompProfile": {"type": "RuntimeDefault"}},
    "terminationGracePeriodSeconds": 3,
    "volumes": [
        {"name": "conf", "configMap": {"name": "web-conf", "optional": True,
                                       "items": [{"key": "a.conf", "path": "conf/a"}]}},
        {"name": "data", "hostPath": {"path": "/var/data", "type": "DirectoryOrCreate"}},
        {"name": "tmp", "emptyDir": {}},
        {"name": "keys", "secret": {"secretName": "web-keys", "optional": False,
                                     "items": [{"key": "tls.key", "path": "tls/key"}]}},
    ],
    "affinity": {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}],
                 "matchFields": [{"key": "metadata.name", "operator": "NotIn",
                                  "values": ["edge-0"]}]}]},
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 10, "preference": {"matchExpressions": [
                    {"key": "cores", "operator": "Gt", "values": ["4"]}]}}]},
        "podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "zone",
             "namespaces": ["data"]}]},
        "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 100, "podAffinityTerm": {
                "labelSelector": {"matchExpressions": [
                    {"key": "app", "operator": "In", "values": ["web"]}]},
                "namespaceSelector": {}, "topologyKey": "kubernetes.io/hostname"}}]},
    },
}
MINIMAL: dict[str, Any] = {"containers": [{"name": "main", "image": "busybox"}]}


def _canonical(raw: dict[str, Any]) -> dict[str, Any]:
    return pods.PodSpec.parse(raw).dump()


@pytest.mark.parametrize("raw", [FULL, MINIMAL], ids=["full", "minimal"])
def test_the_spec_round_trips_on_both_sides(raw: dict[str, Any]) -> None:
    """Cloud: apply -> store (every default written out) -> load -> desired entry; edge:
    the entry parsed back. The dump is the same at every step (so is the revision)."""
    want = _canonical(raw)
    pod = models.parse_object({"apiVersion": "v1", "kind": "Pod",
                               "metadata": {"name": "web"}, "spec": raw})
    stored = pod.model_dump(mode="json", by_alias=True, exclude_none=True)
    loaded = models.Pod.model_validate(stored)
    assert loaded.spec == pod.spec and loaded.spec.dump() == want
    assert models.Pod.model_validate(pod.model_dump()).spec == pod.spec  # snake_case names
    entry = parse_pod_entry("pod/default/web", pod_entry(loaded))
    on_node = {k: v for k, v in want.items() if k not in CLOUD_ONLY_FIELDS}
    assert entry.spec.dump() == on_node
    assert pod_entry(loaded)["revision"] == pod_entry(pod)["revision"]
    assert pod.dump()["spec"] == want


def test_pod_entry_round_trip():
    pod = models.parse_object({"apiVersion": "v1", "kind": "Pod",
                               "metadata": {"name": "web", "labels": {"app": "web"}},
                               "spec": FULL})
    assert isinstance(pod, models.Pod)
    value = pod_entry(pod)
    entry = parse_pod_entry("pod/default/web", value)
    assert (entry.name, entry.namespace, entry.labels, entry.revision) == \
        ("web", "default", {"app": "web"}, value["revision"])
    assert entry.spec.dump() == value["spec"]
    assert "policy" not in value and entry.policy is None  # admitted before levels


def test_scheduling_only_fields_stay_in_the_cloud_but_count_in_the_revision():
    """An agent from before affinity and priority refuses unknown spec fields, and a node
    has no use for another pod's selectors: the entry leaves them out. Changing them is
    still a new revision (a template change, as in Kubernetes)."""
    assert {"affinity", "priority"} <= set(FULL)  # FULL really carries them
    pod = models.parse_object({"apiVersion": "v1", "kind": "Pod",
                               "metadata": {"name": "web"}, "spec": FULL})
    assert isinstance(pod, models.Pod)
    value = pod_entry(pod)
    assert not CLOUD_ONLY_FIELDS & set(value["spec"])
    assert set(pod.spec.dump()) - set(value["spec"]) == CLOUD_ONLY_FIELDS
    bare = {k: v for k, v in FULL.items() if k not in CLOUD_ONLY_FIELDS}
    other = models.parse_object({"apiVersion": "v1", "kind": "Pod",
                                 "metadata": {"name": "web"}, "spec": bare})
    assert isinstance(other, models.Pod)
    assert pod_entry(other)["spec"] == value["spec"]
    assert pod_entry(other)["revision"] != value["revision"]


def test_pod_entry_carries_the_admitted_level():
    adm = policy.Admitted("baseline", policy.parse_host_path_allow(["/var/data:rw"]))
    pod = models.parse_object({"apiVersion": "v1", "kind": "Pod",
                               "metadata": {"name": "web", "annotations": adm.annotations()},
                               "spec": FULL})
    assert isinstance(pod, models.Pod)
    value = pod_entry(pod)
    assert value["policy"] == {"level": "baseline", "hostPathAllow": ["/var/data:rw"]}
    entry = parse_pod_entry("pod/default/web", value)
    assert entry.policy == adm
    assert [str(v) for v in policy.check(entry.spec, entry.policy.level,
                                         host_path_allow=entry.policy.host_path_allow)] == [
        str(v) for v in policy.check(pod.spec, "baseline",
                                     host_path_allow=adm.host_path_allow)]
    with pytest.raises(ObjectError, match="pod/default/web: policy") as info:
        parse_pod_entry("pod/default/web", {**value, "policy": {"level": "root"}})
    assert info.value.field == "policy"


@pytest.mark.parametrize(("value", "field"), [
    ("not a map", None),
    ({"name": "a", "namespace": "default", "revision": "r"}, "spec"),
    ({"name": 3, "namespace": "default", "revision": "r", "spec": MINIMAL}, "name"),
    ({"name": "a", "namespace": "default", "revision": "r", "labels": {"a": 1},
      "spec": MINIMAL}, "labels"),
    ({"name": "a", "namespace": "default", "revision": "r",
      "spec": {"containers": [{"name": "m", "image": 5}]}}, "spec.containers[0].image"),
    ({"name": "a", "namespace": "default", "revision": "r",
      "spec": {"containers": [{"name": "m", "image": "x", "gpus": 1}]}},
     "spec.containers[0].gpus"),
])
def test_garbled_entries_are_object_errors_naming_the_field(value, field):
    with pytest.raises(ObjectError) as info:
        parse_pod_entry("pod/default/a", value)
    assert info.value.field == field


def _cloud_verdict(raw: Any) -> str | None:
    try:
        models.parse_object({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a"},
                             "spec": raw})
    except ObjectError as exc:
        return exc.field
    return None


def _edge_verdict(raw: Any) -> str | None:
    try:
        parse_pod_entry("pod/default/a", {"name": "a", "namespace": "default",
                                          "revision": "r", "spec": raw})
    except ObjectError as exc:
        return exc.field
    return None


_scalars = (st.none() | st.booleans() | st.integers(-2, 70000) | st.sampled_from(
    [1.0, 0.5, "", "x", "/", "/a/../b", "a/b", "8080", "http", "web", "TCP", "Always",
     "Exists", "NoExecute", "100Mi", "bad!", "true", "conf", "data", "Never", "HTTP",
     "ALL", "NET_ADMIN", "Localhost", "Unconfined", "RuntimeDefault", "p.json"]))
_values = st.recursive(_scalars, lambda c: st.lists(c, max_size=2)
                       | st.dictionaries(st.sampled_from(["name", "port", "x", "path", "type",
                                                         "localhostProfile"]), c,
                                         max_size=2), max_leaves=4)


def _doc_paths(doc: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [at]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _doc_paths(v, (*at, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _doc_paths(v, (*at, i))
    return out


@st.composite
def _mutated(draw: st.DrawFn) -> Any:
    doc = copy.deepcopy(_canonical(draw(st.sampled_from([FULL, MINIMAL]))))
    for _ in range(draw(st.integers(1, 2))):
        at = draw(st.sampled_from(_doc_paths(doc)))
        if not at:
            continue
        parent = doc
        for p in at[:-1]:
            parent = parent[p]
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "delete":
            del parent[at[-1]]
        elif action == "add" and isinstance(parent, dict):
            parent[draw(st.sampled_from(["extra", "name", "port", "optional"]))] = \
                draw(_values)
        else:
            parent[at[-1]] = draw(_values)
    return doc


@settings(max_examples=400, deadline=None)
@given(_mutated())
def test_cloud_and_agent_give_the_same_verdict_naming_the_same_field(raw: Any) -> None:
    """The cloud (parse_object, through pydantic) and the agent (parse_pod_entry) refuse
    the same specs, naming the same field (the entry's `spec.` prefix included)."""
    assert _cloud_verdict(raw) == _edge_verdict(raw), raw


def test_unknown_field_is_unsupported_with_a_hint() -> None:
    with pytest.raises(UnsupportedField, match=r"containers\[0\]\.gpus") as info:
        pods.PodSpec.parse({"containers": [{"name": "m", "image": "x", "gpus": 1}]})
    assert info.value.hint == ""
    with pytest.raises(UnsupportedField, match="did you mean 'image'") as info:
        pods.PodSpec.parse({"containers": [{"name": "m", "imagee": "x"}]}, "spec")
    assert info.value.field == "spec.containers[0].imagee"


def test_a_pydantic_validation_error_still_comes_from_model_validate() -> None:
    with pytest.raises(ValidationError):
        models.Pod.model_validate({"metadata": {"name": "a"}, "spec": {"containers": []}})


def test_status_renders_like_the_pydantic_status():
    new = pods.PodStatus(
        phase="Running", node_name="edge-1", revision="abc", ready=True, pod_ip="10.88.0.7",
        container_statuses=[
            pods.ContainerStatus(name="m", state="running", ready=True, restart_count=2,
                                 started_at=1.5, started=True,
                                 last_state=pods.LastState(exit_code=1, reason="Error")),
            pods.ContainerStatus(name="w", reason="ContainerCreating",
                                 message="pulling 1.0 of 2.0 MB")])
    old = models.PodStatus.model_validate(status_value(new))
    assert status_value(old) == status_value(new)
    assert status_value(pods.PodStatus()) == {"phase": "Pending", "containerStatuses": []}


def test_a_template_spec_placed_on_a_node_shares_the_rest() -> None:
    spec = pods.PodSpec.parse(FULL)
    placed = spec.with_node("edge-9")
    assert placed.node_name == "edge-9" and placed.containers is spec.containers
    assert placed.dump() == {**spec.dump(), "nodeName": "edge-9"}
    pod = models.Pod.model_validate({"metadata": {"name": "a"}, "spec": placed})
    assert pod.spec is placed  # an already-built spec is taken as is
