"""shared.policy: Pod Security Standards levels over both pod schemas."""

from __future__ import annotations

from typing import Any

import pytest

from shared import models, pods, policy
from shared.errors import ObjectError
from shared.policy import Admitted, HostPathRule, check, parse_host_path_allow


def spec(container: dict[str, Any] | None = None, **pod: Any) -> dict[str, Any]:
    return {"containers": [{"name": "main", "image": "busybox", **(container or {})}], **pod}


def violations(raw: dict[str, Any], level: policy.Level, allow: tuple[str, ...] = ()
               ) -> list[str]:
    """The violations' lines, the same from the pydantic and the pydantic-free schema."""
    rules = parse_host_path_allow(allow)
    cloud = check(models.PodSpec.model_validate(raw), level, host_path_allow=rules)
    edge = check(pods.PodSpec.parse(raw), level, host_path_allow=rules)
    assert cloud == edge
    return [str(v) for v in cloud]


RESTRICTED_OK = spec(
    {"securityContext": {"allowPrivilegeEscalation": False,
                         "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}},
    securityContext={"runAsNonRoot": True, "runAsUser": 1000,
                     "seccompProfile": {"type": "RuntimeDefault"}},
    volumes=[{"name": "s", "emptyDir": {}}, {"name": "c", "configMap": {"name": "c"}},
             {"name": "k", "secret": {"secretName": "k"}}])


def test_a_plain_pod_passes_baseline_and_not_restricted() -> None:
    assert violations(spec(), "baseline") == []
    assert violations(spec(), "privileged") == []
    assert violations(spec(), "restricted") == [
        "spec.containers[0].securityContext.allowPrivilegeEscalation=null: must be false "
        "(policy restricted)",
        "spec.containers[0].securityContext.runAsNonRoot=null: must be true (here or in the "
        "pod's securityContext) (policy restricted)",
        "spec.containers[0].securityContext.capabilities.drop=[]: must include ALL "
        "(policy restricted)",
        "spec.containers[0].securityContext.seccompProfile.type=null: must be RuntimeDefault "
        "or Localhost (here or in the pod's securityContext) (policy restricted)",
    ]
    assert violations(RESTRICTED_OK, "restricted") == []


@pytest.mark.parametrize(("raw", "line"), [
    (spec(hostNetwork=True), "spec.hostNetwork=true: the host's network namespace"),
    (spec({"securityContext": {"privileged": True}}),
     "spec.containers[0].securityContext.privileged=true: privileged containers"),
    (spec({"securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}}}),
     'spec.containers[0].securityContext.capabilities.add[0]="SYS_ADMIN": adding'),
    (spec({"securityContext": {"capabilities": {"add": ["CAP_NET_RAW"]}}}),
     'capabilities.add[0]="CAP_NET_RAW"'),
    (spec({"securityContext": {"capabilities": {"add": ["ALL"]}}}), 'add[0]="ALL"'),
    (spec({"securityContext": {"seccompProfile": {"type": "Unconfined"}}}),
     'spec.containers[0].securityContext.seccompProfile.type="Unconfined"'),
    (spec(securityContext={"seccompProfile": {"type": "Unconfined"}}),
     'spec.securityContext.seccompProfile.type="Unconfined"'),
    (spec({"ports": [{"containerPort": 80, "hostPort": 8080}]}),
     "spec.containers[0].ports[0].hostPort=8080: host ports are not allowed"),
    (spec(volumes=[{"name": "root", "hostPath": {"path": "/"}}]),
     'spec.volumes[0].hostPath.path="/": hostPath is not under a prefix the admin allows '
     "(allowed: none)"),
    (spec(volumes=[{"name": "tty", "hostPath": {"path": "/dev/ttyUSB0"}}]),
     'spec.volumes[0].hostPath.path="/dev/ttyUSB0": host device is not under a prefix'),
    (spec(volumes=[{"name": "gpio", "hostPath": {"path": "/sys/class/gpio",
                                                  "type": "CharDevice"}}]),
     "host device is not under"),
])
def test_baseline_refuses_what_kubernetes_baseline_refuses(raw: dict[str, Any],
                                                            line: str) -> None:
    lines = violations(raw, "baseline")
    assert len(lines) == 1 and line in lines[0] and lines[0].endswith("(policy baseline)")
    assert violations(raw, "privileged") == []
    assert violations(raw, "restricted")  # restricted includes baseline


def test_baseline_capabilities_and_runtime_default_pass() -> None:
    raw = spec({"securityContext": {"capabilities": {"add": sorted(
        policy.BASELINE_CAPABILITIES), "drop": ["NET_RAW"]},
        "seccompProfile": {"type": "RuntimeDefault"}}},
        securityContext={"seccompProfile": {"type": "Localhost", "localhostProfile": "a.json"}})
    assert violations(raw, "baseline") == []


def test_accelerators_are_resources_not_host_devices() -> None:
    raw = spec({"resources": {"limits": {"nvidia.com/gpu": 1}}})
    assert violations(raw, "baseline") == []


def test_every_violation_is_reported_not_just_the_first() -> None:
    raw = spec({"securityContext": {"privileged": True, "capabilities": {"add": ["SYS_ADMIN"]}},
                "ports": [{"containerPort": 1, "hostPort": 1}],
                "volumeMounts": [{"name": "root", "mountPath": "/host"}]},
               hostNetwork=True, volumes=[{"name": "root", "hostPath": {"path": "/"}}])
    fields = [line.split("=", 1)[0] for line in violations(raw, "baseline")]
    assert fields == ["spec.hostNetwork", "spec.volumes[0].hostPath.path",
                      "spec.containers[0].ports[0].hostPort",
                      "spec.containers[0].securityContext.privileged",
                      "spec.containers[0].securityContext.capabilities.add[0]"]


def test_host_path_allowlist_read_only_unless_rw() -> None:
    raw = spec({"volumeMounts": [{"name": "logs", "mountPath": "/logs"},
                                 {"name": "data", "mountPath": "/data", "readOnly": True}]},
               volumes=[{"name": "logs", "hostPath": {"path": "/var/log/app"}},
                        {"name": "data", "hostPath": {"path": "/srv/data/x"}}])
    assert violations(raw, "baseline", ("/var/log", "/srv/data")) == [
        "spec.containers[0].volumeMounts[0].readOnly=false: /var/log/app is allowed "
        "read-only (prefix /var/log); set readOnly: true (policy baseline)"]
    assert violations(raw, "baseline", ("/var/log:rw,/srv/data",)) == []
    # a prefix matches whole path components only
    assert len(violations(raw, "baseline", ("/var/lo:rw", "/srv/data"))) == 1
    # restricted allows no hostPath, whatever the allowlist
    lines = violations(raw, "restricted", ("/var/log:rw", "/srv/data:rw"))
    assert sum("hostPath volumes are not allowed" in line for line in lines) == 2
    # privileged needs no allowlist
    assert violations(raw, "privileged") == []


def test_host_devices_only_where_the_admin_allows_them() -> None:
    raw = spec({"volumeMounts": [{"name": "tty", "mountPath": "/dev/ttyS0"}]},
               volumes=[{"name": "tty", "hostPath": {"path": "/dev/ttyUSB0",
                                                     "type": "CharDevice"}}])
    assert violations(raw, "baseline", ("/dev/ttyUSB0:rw",)) == []
    assert "host device" in violations(raw, "baseline", ("/dev/ttyUSB1:rw",))[0]


@pytest.mark.parametrize(("text", "prefix", "writable"), [
    ("/var/log", "/var/log", False), ("/var/log/:ro", "/var/log", False),
    ("/data:rw", "/data", True), ("//srv//x/", "/srv/x", False), ("/", "/", False),
])
def test_host_path_rules_parse(text: str, prefix: str, writable: bool) -> None:
    assert HostPathRule.parse(text) == HostPathRule(prefix, writable)


@pytest.mark.parametrize("text", ["var/log", "/a/../etc", "/a,b", "rw"])
def test_bad_host_path_rules_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="absolute path"):
        HostPathRule.parse(text)


def test_host_path_rule_picks_the_longest_prefix() -> None:
    rules = parse_host_path_allow(["/srv:rw", "/srv/ro", "/"])
    assert policy.host_path_rule("/srv/ro/x", rules) == HostPathRule("/srv/ro")
    assert policy.host_path_rule("/srv/rox", rules) == HostPathRule("/srv", True)
    assert policy.host_path_rule("/etc", rules) == HostPathRule("/")
    assert policy.host_path_rule("/etc", rules[:2]) is None


def test_restricted_rules() -> None:
    root = {**RESTRICTED_OK, "securityContext": {**RESTRICTED_OK["securityContext"],
                                                 "runAsUser": 0, "runAsNonRoot": False}}
    assert [line.split("=", 1)[0] for line in violations(root, "restricted")] == [
        "spec.securityContext.runAsUser", "spec.containers[0].securityContext.runAsNonRoot"]
    sc = RESTRICTED_OK["containers"][0]["securityContext"]
    caps = spec({"securityContext": {**sc, "capabilities": {"drop": ["ALL"],
                                                            "add": ["CHOWN"]}}},
                securityContext=RESTRICTED_OK["securityContext"])
    assert violations(caps, "baseline") == []
    assert violations(caps, "restricted") == [
        'spec.containers[0].securityContext.capabilities.add[0]="CHOWN": adding this '
        "capability is not allowed (allowed: NET_BIND_SERVICE) (policy restricted)"]
    # the container's own settings count as much as the pod's
    own = spec({"securityContext": {**sc, "runAsNonRoot": True,
                                    "seccompProfile": {"type": "Localhost",
                                                       "localhostProfile": "p.json"}}})
    assert violations(own, "restricted") == []


def test_the_path_prefix_names_the_field_in_a_workload() -> None:
    vs = check(models.PodSpec.model_validate(spec(hostNetwork=True)), "baseline",
               path="spec.template.spec")
    assert [(v.field, v.value, v.level) for v in vs] == \
        [("spec.template.spec.hostNetwork", True, "baseline")]


def test_levels() -> None:
    assert policy.level_of({}) == "baseline"
    assert policy.level_of({}, "privileged") == "privileged"
    assert policy.level_of({policy.ENFORCE_LABEL: "restricted"}) == "restricted"
    with pytest.raises(ObjectError, match="'strict' is not a policy level"):
        policy.level_of({policy.ENFORCE_LABEL: "strict"})
    assert policy.stricter("baseline", "restricted") == "restricted"
    assert policy.stricter("privileged", "baseline") == "baseline"
    with pytest.raises(ValueError, match="unknown policy level"):
        check(pods.PodSpec.parse(spec()), "strict")  # type: ignore[arg-type]


def test_admitted_round_trips_through_annotations_and_entries() -> None:
    allow = parse_host_path_allow(["/var/log", "/data:rw", "/unused"])
    raw = spec(volumes=[{"name": "l", "hostPath": {"path": "/var/log/x"}},
                        {"name": "d", "hostPath": {"path": "/data"}}])
    adm = Admitted.of(pods.PodSpec.parse(raw), "baseline", allow)
    assert adm == Admitted("baseline", (HostPathRule("/var/log"), HostPathRule("/data", True)))
    assert adm.annotations() == {policy.LEVEL_ANNOTATION: "baseline",
                                 policy.HOST_PATH_ANNOTATION: "/var/log,/data:rw"}
    assert Admitted.from_annotations(adm.annotations()) == adm
    assert Admitted.from_entry(adm.entry_value()) == adm
    assert Admitted.of(pods.PodSpec.parse(raw), "privileged", allow) == Admitted("privileged")
    assert Admitted.from_annotations({}) is None
    assert Admitted.from_annotations({policy.LEVEL_ANNOTATION: "nope"}) is None
    for bad in ("baseline", {"level": "x"}, {"level": "baseline", "extra": 1},
                {"level": "baseline", "hostPathAllow": "/x"},
                {"level": "baseline", "hostPathAllow": ["x"]}):
        with pytest.raises(ObjectError, match="policy"):
            Admitted.from_entry(bad)
