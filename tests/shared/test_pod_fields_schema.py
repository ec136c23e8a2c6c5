"""The pod fields issue 18 accepts (and those it refuses with a reason): the schema's
rules, as Kubernetes' validation has them, and the isolation policy's verdicts."""

from __future__ import annotations

from typing import Any

import pytest

from shared import policy
from shared.entries import referenced_keys
from shared.errors import ObjectError, UnsupportedField
from shared.pods import PodSpec


def spec(pod: dict[str, Any] | None = None, **container: Any) -> dict[str, Any]:
    return {**(pod or {}), "containers": [{"name": "m", "image": "busybox", **container}]}


def test_the_recorded_fields_parse_and_round_trip() -> None:
    raw = spec({"serviceAccountName": "agent", "automountServiceAccountToken": False,
                "priorityClassName": "system-node-critical", "dnsPolicy": "ClusterFirst",
                "dnsConfig": {"nameservers": ["1.1.1.1"], "searches": ["a.local"],
                              "options": [{"name": "ndots", "value": "5"}]},
                "imagePullSecrets": [{"name": "regcred"}], "hostPID": True, "hostIPC": True,
                "securityContext": {"fsGroupChangePolicy": "Always",
                                    "sysctls": [{"name": "net.ipv4.tcp_syncookies",
                                                 "value": "1"}]}},
               volumeMounts=[], securityContext={"procMount": "Default"})
    s = PodSpec.parse(raw)
    assert (s.service_account_name, s.priority_class_name, s.host_pid, s.host_ipc) == (
        "agent", "system-node-critical", True, True)
    assert PodSpec.parse(s.dump()) == s
    assert s.dump()["hostPID"] is True and s.dump()["hostIPC"] is True
    assert PodSpec.parse({**raw, "host_pid": True}).host_pid  # snake_case accepted too


@pytest.mark.parametrize(("raw", "field", "text"), [
    (spec({"dnsPolicy": "None"}), "spec.dnsConfig.nameservers", "at least one nameserver"),
    (spec({"dnsConfig": {"nameservers": ["1.1.1.1", "2.2.2.2", "3.3.3.3", "4.4.4.4"]}}),
     "spec.dnsConfig.nameservers", "at most 3"),
    (spec({"dnsConfig": {"nameservers": ["dns.local"]}}), "spec.dnsConfig.nameservers",
     "not an IP address"),
    (spec({"dnsPolicy": "ClusterFirstWithoutHostNet"}), "spec.dnsPolicy", "must be one of"),
    (spec({"serviceAccountName": "Agent_1"}), "spec.serviceAccountName", "DNS-1123"),
    (spec({"priorityClassName": "high prio"}), "spec.priorityClassName", "DNS-1123"),
    (spec({"imagePullSecrets": [{"name": ""}]}), "spec.imagePullSecrets[0].name", "DNS-1123"),
    (spec(volumeMounts=[{"name": "v", "mountPath": "/v", "mountPropagation": "Bidirectional"}])
     | {"volumes": [{"name": "v", "emptyDir": {}}]},
     "spec.containers[0].volumeMounts[0].mountPropagation", "only in a privileged container"),
    (spec(volumeMounts=[{"name": "v", "mountPath": "/v", "mountPropagation": "Shared"}])
     | {"volumes": [{"name": "v", "emptyDir": {}}]},
     "spec.containers[0].volumeMounts[0].mountPropagation", "must be one of"),
    (spec({"hostNetwork": True, "securityContext": {"sysctls": [
        {"name": "net.ipv4.tcp_syncookies", "value": "1"}]}}),
     "spec.securityContext.sysctls[0].name", "cannot be set with hostNetwork"),
    (spec({"hostIPC": True, "securityContext": {"sysctls": [
        {"name": "kernel.shm_rmid_forced", "value": "1"}]}}),
     "spec.securityContext.sysctls[0].name", "cannot be set with hostIPC"),
    (spec({"securityContext": {"sysctls": [{"name": "Net..x", "value": "1"}]}}),
     "spec.securityContext.sysctls[0].name", "not a sysctl name"),
    (spec(securityContext={"procMount": "Unmasked"}), "spec", "needs hostUsers: false"),
    (spec({"hostPid": True}), "spec.hostPid", "did you mean 'hostPID'"),
])
def test_invalid_values_are_refused_naming_the_field(raw: dict[str, Any], field: str,
                                                    text: str) -> None:
    with pytest.raises(ObjectError, match=text) as info:
        PodSpec.parse(raw, "spec")
    assert info.value.field == field


@pytest.mark.parametrize(("raw", "field", "text"), [
    (spec(securityContext={"seLinuxOptions": {"level": "s0:c1"}}),
     "spec.containers[0].securityContext.seLinuxOptions", "no SELinux labels"),
    (spec({"securityContext": {"appArmorProfile": {"type": "RuntimeDefault"}}}),
     "spec.securityContext.appArmorProfile", "no AppArmor profile"),
    (spec(securityContext={"windowsOptions": {"runAsUserName": "x"}}),
     "spec.containers[0].securityContext.windowsOptions", "Windows"),
    (spec({"securityContext": {"supplementalGroupsPolicy": "Strict"}}),
     "spec.securityContext.supplementalGroupsPolicy", "list the groups"),
])
def test_refused_security_fields_say_why(raw: dict[str, Any], field: str, text: str) -> None:
    with pytest.raises(UnsupportedField, match=text) as info:
        PodSpec.parse(raw, "spec")
    assert info.value.field == field


def test_bidirectional_propagation_in_a_privileged_container() -> None:
    s = PodSpec.parse(spec(volumeMounts=[{"name": "v", "mountPath": "/v",
                                          "mountPropagation": "Bidirectional"}],
                           securityContext={"privileged": True})
                      | {"volumes": [{"name": "v", "hostPath": {"path": "/mnt"}}]})
    assert s.containers[0].volume_mounts[0].mount_propagation == "Bidirectional"


@pytest.mark.parametrize(("raw", "field"), [
    (spec({"hostPID": True}), "spec.hostPID"),
    (spec({"hostIPC": True}), "spec.hostIPC"),
    (spec({"hostUsers": False}, securityContext={"procMount": "Unmasked"}),
     "spec.containers[0].securityContext.procMount"),
    (spec({"securityContext": {"sysctls": [{"name": "kernel.msgmax", "value": "65536"}]}}),
     "spec.securityContext.sysctls[0].name"),
])
def test_policy_gates_host_namespaces_and_unsafe_settings(raw: dict[str, Any],
                                                          field: str) -> None:
    s = PodSpec.parse(raw)
    for level in ("baseline", "restricted"):
        assert field in [v.field for v in policy.check(s, level)], level
    assert policy.check(s, "privileged") == []


def test_safe_sysctls_pass_baseline_and_reach_the_effective_settings() -> None:
    s = PodSpec.parse(spec({"hostPID": True, "securityContext": {"sysctls": [
        {"name": "net.ipv4.ip_local_port_range", "value": "1024 65000"}]}}))
    assert [v.field for v in policy.check(s, "baseline")] == ["spec.hostPID"]
    eff = policy.effective(s, s.containers[0])
    assert eff.host_pid and not eff.host_ipc
    assert eff.sysctls == (("net.ipv4.ip_local_port_range", "1024 65000"),)


def test_image_pull_secrets_are_delivered_with_the_pod() -> None:
    s = PodSpec.parse(spec({"imagePullSecrets": [{"name": "regcred"}]}))
    assert referenced_keys("shop", s) == {"secret/shop/regcred"}


@pytest.mark.parametrize(("raw", "refs"), [
    (spec(), False),
    (spec(env=[{"name": "A", "value": "1"}]), False),
    (spec(env=[{"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}]),
     True),  # no key, but a cheap "maybe" is enough
    (spec(envFrom=[{"configMapRef": {"name": "c"}}]), True),
    (spec({"imagePullSecrets": [{"name": "r"}]}), True),
    (spec({"volumes": [{"name": "v", "emptyDir": {}}]}), True),
    ({"initContainers": [{"name": "i", "image": "b", "env": [
        {"name": "A", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}],
      "containers": [{"name": "m", "image": "b"}]}, True),
])
def test_may_reference_is_true_whenever_referenced_keys_can_find_something(
        raw: dict[str, Any], refs: bool) -> None:
    from shared.entries import may_reference

    s = PodSpec.parse(raw)
    assert may_reference(s) is refs
    if not refs:
        assert referenced_keys("ns", s) == set()
