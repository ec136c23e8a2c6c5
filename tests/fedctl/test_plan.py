"""fedctl.plan: each document judged on its own, every problem of a document found.

The fields used here are ones issue 18 does not plan to support (lifecycle, subPath,
nfs, grpc probes...), so these tests do not change when its part 1 lands.
"""

from __future__ import annotations

import io
from typing import Any

import pytest
import yaml

from fedctl import plan
from fedctl.errors import ManifestError


def _pod(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"containers": [{"name": "c", "image": "busybox"}]}
    base.update(spec)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": base}


def _fields(doc: dict[str, Any]) -> list[str | None]:
    return [p.field for p in plan.problems_of(doc)]


def test_a_valid_document_has_no_problems() -> None:
    assert plan.problems_of(_pod()) == []


def test_every_unsupported_field_is_found_in_the_order_written() -> None:
    doc = _pod(containers=[{
        "name": "c", "image": "busybox", "lifecycle": {"preStop": {}},
        "volumeMounts": [{"name": "v", "mountPath": "/v", "subPath": "x"}],
        "terminationMessagePath": "/dev/termination-log"}],
        volumes=[{"name": "v", "emptyDir": {}}], schedulerName="mine")
    assert _fields(doc) == [
        "spec.containers[0].lifecycle",
        "spec.containers[0].volumeMounts[0].subPath",
        "spec.containers[0].terminationMessagePath",
        "spec.schedulerName",
    ]


def test_an_unsupported_volume_source_leaves_no_sourceless_volume_behind() -> None:
    """Taking `nfs` out would leave a volume without a source, which fails its own
    rule; a stand-in keeps it whole so the fields after it are still checked."""
    doc = _pod(volumes=[{"name": "v", "nfs": {"server": "s", "path": "/"}}],
               containers=[{"name": "c", "image": "busybox", "tty": True,
                            "volumeMounts": [{"name": "v", "mountPath": "/v"}]}])
    problems = plan.problems_of(doc)
    assert [p.field for p in problems] == ["spec.containers[0].tty", "spec.volumes[0].nfs"]
    assert problems[1].alternative == "hostPath, emptyDir, configMap or secret"
    assert not problems[1].planned


def test_an_unsupported_probe_handler_leaves_the_probe_whole() -> None:
    doc = _pod(containers=[{"name": "c", "image": "busybox",
                            "livenessProbe": {"grpc": {"port": 8080}, "periodSeconds": 5},
                            "stdin": True}])
    assert _fields(doc) == ["spec.containers[0].livenessProbe.grpc", "spec.containers[0].stdin"]


def test_a_misspelt_field_is_one_problem_not_two() -> None:
    """`imag` is unknown and `image` missing: the second is the first's consequence."""
    problems = plan.problems_of(_pod(containers=[{"name": "c", "imag": "busybox"}]))
    assert [p.line() for p in problems] == [
        "spec.containers[0].imag: not supported by edgefed (did you mean 'image'?)"]


def test_bad_values_are_all_named_with_their_limits() -> None:
    doc = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
           "spec": {"replicas": -1, "strategy": {"type": "Recreate"},
                    "template": {"spec": {"containers": [
                        {"name": "c", "image": "busybox",
                         "ports": [{"containerPort": 70000}]}]}}}}
    problems = plan.problems_of(doc)
    assert [p.field for p in problems] == [
        "spec.replicas", "spec.strategy.type",
        "spec.template.spec.containers[0].ports[0].containerPort"]
    assert "within 1..65535" in problems[2].reason
    assert problems[1].alternative.startswith("RollingUpdate")


def test_a_document_with_very_many_problems_is_cut_short() -> None:
    containers = [{"name": f"c{i}", "image": "busybox", "tty": True} for i in range(80)]
    assert len(plan.problems_of(_pod(containers=containers))) == plan.MAX_PROBLEMS


def test_planned_fields_say_so_and_name_the_alternative() -> None:
    assert plan.hint("spec.template.spec.hostPID") == ("", True)
    alt, planned = plan.hint("spec.template.spec.containers[1].env[0].valueFrom")
    assert planned and "configMap/secret volume" in alt
    assert plan.hint("spec.template.spec.affinity") == ("", False)  # supported now
    assert plan.hint("spec.template.spec.volumes[2].persistentVolumeClaim")[1] is False
    line = plan.Problem("spec.hostPID", "not supported by edgefed", planned=True).line()
    assert line == "spec.hostPID: not supported by edgefed (planned: issue 18)"


@pytest.mark.parametrize(("doc", "status", "says"), [
    ({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}}, "skipped",
     "docs/proposals/0005-edge-services.md"),
    ({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
      "metadata": {"name": "b"}}, "skipped", "fedctl apitoken create --role"),
    ({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "c"}},
     "skipped", "hostPath or emptyDir"),
    ({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "s"}}, "refused",
     "kind StatefulSet is not run by edgefed; instead: a Deployment"),
    ({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
      "metadata": {"name": "n"}}, "refused", "not enforced at the edge"),
    ({"apiVersion": "devices.kubeedge.io/v1beta1", "kind": "Device",
      "metadata": {"name": "d"}}, "refused",
     "Device (devices.kubeedge.io/v1beta1) is a custom resource"),
    ({"apiVersion": "apps/v1", "kind": "Deploymnet", "metadata": {"name": "d"}}, "refused",
     "unknown kind 'Deploymnet' (did you mean 'Deployment'?)"),
    ({"apiVersion": "extensions/v1beta1", "kind": "DaemonSet", "metadata": {"name": "d"},
      "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "b"}]}}}},
     "refused", "instead: apiVersion: apps/v1"),
])
def test_kinds_edgefed_does_not_serve(doc: dict[str, Any], status: str, says: str) -> None:
    o = plan.judge(doc, "f.yaml#1")
    assert o.status == status
    text = o.reason if status == "skipped" else " ".join(p.line() for p in o.problems)
    assert says in text


def test_plan_reads_every_file_and_goes_on_after_a_broken_one(tmp_path: Any) -> None:
    (tmp_path / "a.yaml").write_text("kind: Pod\nmetadata: [unclosed\n")
    (tmp_path / "b.yaml").write_text(yaml.safe_dump_all([_pod(), _pod()]))
    out = plan.plan([str(tmp_path), "-"], stdin=io.StringIO(yaml.safe_dump(
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}})))
    assert [(o.source.rsplit("/", 1)[-1], o.status) for o in out] == [
        ("a.yaml", "refused"), ("b.yaml#1", "apply"), ("b.yaml#2", "refused"),
        ("<stdin>#1", "skipped")]
    assert "not valid YAML" in out[0].problems[0].reason
    assert out[2].problems[0].reason == "pod/p is also defined in " + out[1].source
    assert out[1].document is not None and out[1].document.ref == "pod/p"


def test_nothing_to_apply_is_an_error(tmp_path: Any) -> None:
    (tmp_path / "empty.yaml").write_text("# nothing\n---\n")
    with pytest.raises(ManifestError, match="no objects found"):
        plan.plan([str(tmp_path / "empty.yaml")])
