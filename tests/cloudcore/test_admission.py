"""Pod security admission: refused at apply and dry run with every violation, stamped
with the level when admitted, relabels never touch what runs."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from api_fixture import open_api
from cloudcore_fakes import add_node, daemonset, make_fleet

from cloudcore.errors import ConfigError, NamespaceNotFound
from cloudcore.fleet.admission import Admission, PolicyRefused, PolicySettings
from shared import policy
from shared.entries import parse_pod_entry, pod_key
from shared.errors import ObjectError
from shared.models import Namespace, parse_object

ENFORCE = policy.ENFORCE_LABEL


def namespace(name: str, level: str | None) -> dict[str, Any]:
    labels = {ENFORCE: level} if level else {}
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": labels}}


def pod(name: str = "p", ns: str = "default", **spec: Any) -> dict[str, Any]:
    container = spec.pop("container", {})
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns},
            "spec": {"containers": [{"name": "main", "image": "busybox", **container}],
                     **spec}}


ROOT = {"volumes": [{"name": "root", "hostPath": {"path": "/"}}],
        "container": {"volumeMounts": [{"name": "root", "mountPath": "/host"}],
                      "securityContext": {"privileged": True}}}


def bad_daemonset(ns: str = "default") -> dict[str, Any]:
    ds = daemonset("dev")
    ds["metadata"]["namespace"] = ns
    tpl = ds["spec"]["template"]["spec"]
    tpl["hostNetwork"] = True
    tpl["containers"][0]["securityContext"] = {"privileged": True}
    return ds


# -- the admission on its own ----------------------------------------------------------------


def test_refusal_lists_every_violation_of_every_object() -> None:
    adm = Admission()
    objs = [parse_object(pod(**copy.deepcopy(ROOT))), parse_object(bad_daemonset())]
    with pytest.raises(PolicyRefused) as info:
        adm.admit(objs, {})
    err = info.value
    assert err.message.splitlines() == [
        "refused by pod security policy (4 violations):",
        'Pod default/p: spec.volumes[0].hostPath.path="/": hostPath is not under a prefix '
        "the admin allows (allowed: none) (policy baseline)",
        "Pod default/p: spec.containers[0].securityContext.privileged=true: privileged "
        "containers are not allowed (policy baseline)",
        "DaemonSet default/dev: spec.template.spec.hostNetwork=true: the host's network "
        "namespace is not allowed (policy baseline)",
        "DaemonSet default/dev: spec.template.spec.containers[0].securityContext.privileged"
        "=true: privileged containers are not allowed (policy baseline)",
    ]
    assert err.field == "spec.volumes[0].hostPath.path"
    assert isinstance(err, ObjectError) and len(err.violations) == 4
    # nothing was stamped: all or nothing
    assert all(policy.LEVEL_ANNOTATION not in o.metadata.annotations for o in objs[:1])


def test_namespace_level_default_and_a_namespace_in_the_same_apply() -> None:
    objs = [parse_object(pod(ns="devices", **copy.deepcopy(ROOT)))]
    with pytest.raises(NamespaceNotFound, match='namespaces "devices" not found'):
        Admission().admit(objs, {})  # namespaces must exist
    with pytest.raises(PolicyRefused):  # one the apply creates has the default level
        Admission().admit(objs, {}, create_namespaces=True)
    ns = parse_object(namespace("devices", "privileged"))
    Admission().admit([ns, *objs], {})  # the Namespace of the same apply counts
    assert objs[0].metadata.annotations[policy.LEVEL_ANNOTATION] == "privileged"
    stored = {"devices": Namespace.model_validate(namespace("devices", "privileged"))}
    Admission().admit([parse_object(pod(ns="devices", **copy.deepcopy(ROOT)))], stored)
    # a cloud default of privileged admits it anywhere; restricted refuses even a plain pod
    Admission(PolicySettings("privileged")).admit([parse_object(pod(**copy.deepcopy(ROOT)))],
                                                  {})
    with pytest.raises(PolicyRefused, match="runAsNonRoot"):
        Admission(PolicySettings("restricted")).admit([parse_object(pod())], {})


def test_a_namespace_label_that_is_not_a_level_is_refused() -> None:
    with pytest.raises(ObjectError, match=r"Namespace x: .*'root' is not a policy level") as e:
        Admission().admit([parse_object(namespace("x", "root"))], {})
    assert e.value.field == "metadata.labels"
    # one stored before labels were checked counts as restricted (as in Kubernetes)
    stored = {"x": Namespace.model_validate(namespace("x", "root"))}
    with pytest.raises(PolicyRefused, match=r"\(policy restricted\)"):
        Admission().admit([parse_object(pod(ns="x"))], stored)


def test_admitted_objects_are_stamped_and_a_users_stamp_is_overwritten() -> None:
    settings = PolicySettings.from_flags(host_path_allow=["/var/log", "/srv:rw"])
    spec = {"volumes": [{"name": "l", "hostPath": {"path": "/var/log/app"}}],
            "container": {"volumeMounts": [{"name": "l", "mountPath": "/l",
                                            "readOnly": True}]}}
    doc = pod(**spec)
    doc["metadata"]["annotations"] = {policy.LEVEL_ANNOTATION: "privileged",
                                      policy.HOST_PATH_ANNOTATION: "/:rw", "keep": "me"}
    obj = parse_object(doc)
    Admission(settings).admit([obj], {})
    assert obj.metadata.annotations == {policy.LEVEL_ANNOTATION: "baseline",
                                        policy.HOST_PATH_ANNOTATION: "/var/log", "keep": "me"}
    ds = parse_object(daemonset())
    Admission(settings).admit([ds], {})
    assert ds.spec.template.metadata.annotations == {policy.LEVEL_ANNOTATION: "baseline"}


def test_settings_from_flags_name_the_flag() -> None:
    assert PolicySettings.from_flags(default_level="restricted",
                                     host_path_allow=["/a:rw,/b"]).host_path_allow == (
        policy.HostPathRule("/a", True), policy.HostPathRule("/b"))
    with pytest.raises(ConfigError, match="--default-pod-security"):
        PolicySettings.from_flags(default_level="strict")
    with pytest.raises(ConfigError, match="--host-path-allow"):
        PolicySettings.from_flags(host_path_allow=["relative"])


# -- in the fleet ----------------------------------------------------------------------------


def test_pods_carry_their_level_and_a_relabel_does_not_evict_them() -> None:
    fleet = make_fleet()
    add_node(fleet, "n1")
    fleet.apply([parse_object(namespace("tools", "privileged"))])
    fleet.apply([parse_object(bad_daemonset("tools"))])
    entry = parse_pod_entry("k", fleet.desired["n1"].values()[pod_key("tools", "dev-n1")])
    assert entry.policy == policy.Admitted("privileged")
    assert policy.check(entry.spec, entry.policy.level) == []

    fleet.apply([parse_object(namespace("tools", "baseline"))])
    # the running pod keeps its entry (and its level): relabelling evicts nothing
    again = parse_pod_entry("k", fleet.desired["n1"].values()[pod_key("tools", "dev-n1")])
    assert again == entry
    with pytest.raises(PolicyRefused, match="DaemonSet tools/dev"):
        fleet.apply([parse_object(bad_daemonset("tools"))])  # the next apply is checked
    with pytest.raises(PolicyRefused):
        fleet.plan([parse_object(bad_daemonset("tools"))])
    # an unchanged re-apply of an admitted workload stays unchanged
    fleet.apply([parse_object(daemonset("ok"))])
    assert [r.action for r in fleet.plan([parse_object(daemonset("ok"))])] == ["unchanged"]


# -- through the API ---------------------------------------------------------------------------


async def test_api_refuses_with_422_and_every_line_and_dry_run_too(tmp_path: Path) -> None:
    async with open_api(tmp_path) as api:
        for dry in (True, False):
            r = await api.client.post("/api/v1/apply", json={
                "documents": [pod(**copy.deepcopy(ROOT)), bad_daemonset()], "dryRun": dry})
            assert r.status_code == 422, r.text
            body = r.json()
            lines = body["error"].splitlines()
            assert lines[0] == "refused by pod security policy (4 violations):"
            assert any("spec.template.spec.hostNetwork=true" in x for x in lines)
            assert body["field"] == "spec.volumes[0].hostPath.path"
        assert not api.fleet.pods and not api.fleet.daemonsets

        r = await api.client.post("/api/v1/apply", json={
            "documents": [namespace("devices", "privileged"),
                          pod(ns="devices", **copy.deepcopy(ROOT))]})
        assert r.status_code == 200, r.text
        r = await api.client.get("/api/v1/pods/devices/p")
        assert r.json()["metadata"]["annotations"][policy.LEVEL_ANNOTATION] == "privileged"


def test_cloudcore_flags_reach_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from cloudcore.__main__ import main, parse_args

    s = parse_args(["--default-pod-security", "restricted", "--host-path-allow", "/var/log",
                    "--host-path-allow", "/data:rw"]).validate()
    assert s.policy == PolicySettings("restricted", (policy.HostPathRule("/var/log"),
                                                     policy.HostPathRule("/data", True)))
    monkeypatch.setenv("CLOUDCORE_HOST_PATH_ALLOW", "/srv,/opt:rw")
    assert parse_args([]).policy.host_path_allow == (policy.HostPathRule("/srv"),
                                                     policy.HostPathRule("/opt", True))
    assert main(["--default-pod-security", "strict"]) == 2
