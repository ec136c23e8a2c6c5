"""Volumes, probes, securityContext and the configMap/secret entries of the desired set."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from shared.entries import (
    config_files,
    configmap_entry,
    configmap_key,
    pod_entry,
    referenced_keys,
    secret_entry,
    secret_key,
    telemetry_point,
)
from shared.errors import ObjectError, UnsupportedField
from shared.models import ConfigMap, Pod, Secret, parse_object


def pod_doc(container: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    c = {"name": "main", "image": "busybox", **(container or {})}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"},
            "spec": {"containers": [c], **spec}}


FULL = pod_doc(
    {"volumeMounts": [{"name": "conf", "mountPath": "/etc/app", "readOnly": True},
                      {"name": "scratch", "mountPath": "/tmp/s"},
                      {"name": "host", "mountPath": "/data"},
                      {"name": "creds", "mountPath": "/run/creds"}],
     "ports": [{"containerPort": 8080, "name": "http"}],
     "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"},
                       "periodSeconds": 5, "failureThreshold": 2},
     "readinessProbe": {"tcpSocket": {"port": 8080}, "successThreshold": 2},
     "startupProbe": {"exec": {"command": ["cat", "/tmp/ready"]}, "initialDelaySeconds": 1},
     "securityContext": {"runAsUser": 1000, "runAsGroup": 1001},
     "imagePullPolicy": "Always"},
    volumes=[{"name": "conf", "configMap": {"name": "app-conf",
                                            "items": [{"key": "a", "path": "sub/a.conf"}]}},
             {"name": "scratch", "emptyDir": {}},
             {"name": "host", "hostPath": {"path": "/var/data", "type": "DirectoryOrCreate"}},
             {"name": "creds", "secret": {"secretName": "creds"}}],
)


def test_full_pod_parses_and_round_trips() -> None:
    pod = parse_object(FULL)
    assert isinstance(pod, Pod)
    assert parse_object(pod.dump()) == pod
    c = pod.spec.containers[0]
    assert [m.mount_path for m in c.volume_mounts] == ["/etc/app", "/tmp/s", "/data", "/run/creds"]
    assert c.liveness_probe is not None and c.liveness_probe.http_get is not None
    assert c.probe_port(c.liveness_probe.http_get.port) == 8080
    assert c.readiness_probe is not None and c.readiness_probe.success_threshold == 2
    assert c.security_context is not None and c.security_context.user() == "1000:1001"
    assert pod.spec.volume("scratch").empty_dir is not None
    # emptyDir: {} survives the dump (it is not a default) and so the revision.
    assert pod.dump()["spec"]["volumes"][1] == {"name": "scratch", "emptyDir": {}}
    assert referenced_keys("default", pod.spec) == {"configmap/default/app-conf",
                                                    "secret/default/creds"}


def test_new_fields_do_not_change_old_revisions() -> None:
    plain = Pod.model_validate(pod_doc())
    assert "volumes" not in plain.spec.dump()
    assert pod_entry(plain)["revision"] == pod_entry(Pod.model_validate(pod_doc()))["revision"]


@pytest.mark.parametrize(("doc", "field", "match"), [
    (pod_doc({"volumeMounts": [{"name": "nope", "mountPath": "/x"}]}), "spec",
     "volumeMount 'nope' names no volume"),
    (pod_doc(volumes=[{"name": "v"}]), "spec.volumes[0]", "exactly one of hostPath"),
    (pod_doc(volumes=[{"name": "v", "emptyDir": {}, "hostPath": {"path": "/x"}}]),
     "spec.volumes[0]", "exactly one"),
    (pod_doc(volumes=[{"name": "v", "emptyDir": {}}, {"name": "v", "emptyDir": {}}]), "spec",
     "volume names must be unique"),
    (pod_doc({"volumeMounts": [{"name": "v", "mountPath": "relative"}]},
             volumes=[{"name": "v", "emptyDir": {}}]),
     "spec.containers[0].volumeMounts[0].mountPath", "absolute"),
    (pod_doc(volumes=[{"name": "v", "hostPath": {"path": "/a/../etc"}}]),
     "spec.volumes[0].hostPath.path", "absolute host path"),
    (pod_doc(volumes=[{"name": "v", "configMap": {"name": "c",
                                                   "items": [{"key": "k", "path": "../x"}]}}]),
     "spec.volumes[0].configMap.items[0].path", "relative path"),
    (pod_doc({"livenessProbe": {"periodSeconds": 3}}), "spec.containers[0].livenessProbe",
     "exactly one of exec"),
    (pod_doc({"readinessProbe": {"httpGet": {"port": "web"}}}), "spec.containers[0]",
     "names no container port"),
    (pod_doc({"livenessProbe": {"tcpSocket": {"port": 70000}}}), "spec.containers[0]",
     "outside 1..65535"),
    (pod_doc({"livenessProbe": {"exec": {"command": ["true"]}, "successThreshold": 2}}),
     "spec.containers[0]", "successThreshold must be 1"),
    (pod_doc({"livenessProbe": {"exec": {"command": ["true"]}, "periodSeconds": 0}}),
     "spec.containers[0].livenessProbe.periodSeconds", r"must be within 1\.\.86400"),
    (pod_doc({"securityContext": {"runAsUser": 0}}, securityContext={"runAsNonRoot": True}),
     "spec", "runAsNonRoot is true but runAsUser is 0"),
    (pod_doc({"securityContext": {"privileged": True, "allowPrivilegeEscalation": False}}),
     "spec.containers[0].securityContext", "cannot be false when privileged"),
    (pod_doc({"securityContext": {"capabilities": {"add": ["net_admin"]}}}),
     "spec.containers[0].securityContext.capabilities.add", "not a capability name"),
    (pod_doc({"securityContext": {"seccompProfile": {"type": "Localhost"}}}),
     "spec.containers[0].securityContext.seccompProfile", "localhostProfile is required"),
    (pod_doc(securityContext={"seccompProfile": {"type": "Localhost",
                                                 "localhostProfile": "/etc/x.json"}}),
     "spec.securityContext.seccompProfile.localhostProfile", "relative path"),
    (pod_doc(securityContext={"supplementalGroups": [-1]}),
     "spec.securityContext.supplementalGroups", "outside"),
    (pod_doc({"securityContext": {"runAsUser": -1}}),
     "spec.containers[0].securityContext.runAsUser", r"must be within 0\.\.4294967294"),
])
def test_bad_values_name_the_field(doc: dict[str, Any], field: str, match: str) -> None:
    with pytest.raises(ObjectError, match=match) as err:
        parse_object(doc)
    assert err.value.field == field


@pytest.mark.parametrize(("doc", "field"), [
    (pod_doc(volumes=[{"name": "v", "emptyDir": {"medium": "Memory"}}]),
     "spec.volumes[0].emptyDir.medium"),
    (pod_doc(volumes=[{"name": "v", "nfs": {"server": "x"}}]), "spec.volumes[0].nfs"),
    (pod_doc({"volumeMounts": [{"name": "v", "mountPath": "/x", "subPath": "a"}]},
             volumes=[{"name": "v", "emptyDir": {}}]),
     "spec.containers[0].volumeMounts[0].subPath"),
    (pod_doc({"livenessProbe": {"grpc": {"port": 1}}}), "spec.containers[0].livenessProbe.grpc"),
    (pod_doc({"securityContext": {"seLinuxOptions": {"level": "s0"}}}),
     "spec.containers[0].securityContext.seLinuxOptions"),
    (pod_doc(securityContext={"appArmorProfile": {"type": "RuntimeDefault"}}),
     "spec.securityContext.appArmorProfile"),
])
def test_unknown_fields_are_refused_by_name(doc: dict[str, Any], field: str) -> None:
    with pytest.raises(UnsupportedField) as err:
        parse_object(doc)
    assert err.value.field == field


def test_security_context_fields_parse_and_merge() -> None:
    from shared.policy import effective

    pod = parse_object(pod_doc(
        {"securityContext": {"runAsUser": 1000, "readOnlyRootFilesystem": True,
                             "allowPrivilegeEscalation": False,
                             "capabilities": {"add": ["NET_BIND_SERVICE"], "drop": ["ALL"]},
                             "seccompProfile": {"type": "Localhost",
                                                "localhostProfile": "edge/web.json"}},
         "ports": [{"containerPort": 80, "hostPort": 8080}]},
        securityContext={"runAsGroup": 2000, "runAsNonRoot": True, "fsGroup": 3000,
                         "supplementalGroups": [4000],
                         "seccompProfile": {"type": "RuntimeDefault"}},
        hostUsers=False, hostNetwork=False))
    assert isinstance(pod, Pod)
    assert parse_object(pod.dump()) == pod
    assert "hostNetwork" not in pod.dump()["spec"]  # the default is false now
    eff = effective(pod.spec, pod.spec.containers[0])
    assert (eff.user(), eff.run_as_non_root, eff.fs_group, eff.supplemental_groups) == \
        ("1000:2000", True, 3000, (4000,))
    assert (eff.seccomp, eff.seccomp_localhost, eff.cap_add, eff.cap_drop) == \
        ("Localhost", "edge/web.json", ("NET_BIND_SERVICE",), ("ALL",))
    assert (eff.read_only_root_filesystem, eff.allow_privilege_escalation, eff.privileged,
            eff.host_users, eff.host_network) == (True, False, False, False, False)
    plain = parse_object(pod_doc())
    assert isinstance(plain, Pod)
    eff = effective(plain.spec, plain.spec.containers[0])
    assert (eff.user(), eff.seccomp, eff.host_users, eff.host_network) == \
        (None, "RuntimeDefault", True, False)


def test_configmap_and_secret_entries() -> None:
    cm = ConfigMap.model_validate({"metadata": {"name": "c"}, "data": {"a.conf": "x=1"}})
    assert configmap_key("ns", "c") == "configmap/ns/c"
    assert config_files("configmap/ns/c", configmap_entry(cm)) == {"a.conf": b"x=1"}
    sec = Secret.model_validate({"metadata": {"name": "s"},
                                 "data": {"token": base64.b64encode(b"\x00\xff").decode()},
                                 "stringData": {"user": "admin"}})
    value = secret_entry(sec)
    assert secret_key("ns", "s") == "secret/ns/s"
    assert config_files("secret/ns/s", value) == {"token": b"\x00\xff", "user": b"admin"}
    with pytest.raises(ObjectError, match="not a valid file name"):
        config_files("configmap/ns/c", {"data": {"../evil": "x"}})
    with pytest.raises(ObjectError, match="not base64"):
        config_files("secret/ns/s", {"data": {"k": "%%%"}})
    with pytest.raises(ObjectError, match="mapping with 'data'"):
        config_files("configmap/ns/c", ["x"])
    with pytest.raises(ValueError, match="not valid base64"):
        Secret.model_validate({"metadata": {"name": "s"}, "data": {"k": "%%%"}})


def test_telemetry_point_shape() -> None:
    assert telemetry_point(60, node={"cpu": 250, "mem": 10}, pods={"pod/a/b": {"cpu": 1}}) == {
        "ts": 60, "node": {"cpu": 250, "mem": 10}, "pods": {"pod/a/b": {"cpu": 1}}}
