"""fedctl against a stub of cloudcore's HTTP API (see conftest.py)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from fedctl.__main__ import main
from fedctl.app import app
from fedctl.config import DEFAULT_SERVER, resolve
from fedctl.errors import UsageError

REPO = Path(__file__).resolve().parents[2]
ANSI = "\x1b["

MANIFEST = """\
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: web
  labels: {app: web}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      nodeSelector: {zone: shop}
      containers:
        - name: web
          image: busybox:1.36
          command: ["httpd", "-f"]
          resources: {requests: {cpu: 100m, memory: 32Mi}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: api}
spec:
  replicas: 2
  template:
    metadata: {labels: {app: api}}
    spec:
      containers: [{name: api, image: busybox:1.36}]
---
# a comment-only document is skipped
---
apiVersion: v1
kind: ConfigMap
metadata: {name: cfg, namespace: shop}
data: {greeting: hello}
"""


def run(stub_url: str | None, *args: str, input: str | None = None) -> Any:
    argv = (["--server", stub_url] if stub_url else []) + list(args)
    return CliRunner().invoke(app, argv, input=input)


def node(name: str, *, ready: str = "Ready", acked: int = 3, desired: int = 3) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"zone": "shop"}},
        "status": {
            "ready": ready,
            "lastSeen": time.time() - 4,
            "ackedGen": acked,
            "desiredGen": desired,
            "arch": "arm64",
            "os": "linux",
            "agentVersion": "0.1.0",
            "capacity": {"cpu": 4000, "memory": 8 * 2**30, "pods": 110},
            "allocatable": {"cpu": 3500, "memory": 7 * 2**30, "pods": 110},
        },
    }


def pod(
    name: str,
    node_name: str | None,
    *,
    phase: str = "Running",
    app_label: str = "web",
    reason: str | None = None,
    message: str | None = None,
    restarts: int = 0,
) -> dict[str, Any]:
    status: dict[str, Any] = {
        "phase": phase,
        "nodeName": node_name,
        "containerStatuses": [
            {
                "name": "web",
                "state": "running",
                "ready": phase == "Running",
                "restartCount": restarts,
            }
        ],
    }
    if reason:
        status["reason"] = reason
    if message:
        status["message"] = message
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": app_label}},
        "spec": {"nodeName": node_name, "containers": [{"name": "web", "image": "busybox"}]},
        "status": status,
    }


# --- apply -----------------------------------------------------------------------------


def test_apply_multi_document_yaml_then_reapply(stub: Any, tmp_path: Path) -> None:
    f = tmp_path / "app.yaml"
    f.write_text(MANIFEST)
    r = run(stub.url, "apply", "-f", str(f))
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines() == [
        "daemonset/web created",
        "deployment/api created",
        "configmap/cfg created",
    ]
    method, path, body = stub.requests[-1]
    assert (method, path, body["dryRun"]) == ("POST", "/api/v1/apply", False)
    assert [d["kind"] for d in body["documents"]] == ["DaemonSet", "Deployment", "ConfigMap"]

    r = run(stub.url, "apply", "-f", str(f))
    assert r.stdout.splitlines()[0] == "daemonset/web unchanged"

    f.write_text(MANIFEST.replace("replicas: 2", "replicas: 3"))
    r = run(stub.url, "apply", "-f", str(tmp_path), "--dry-run")  # a directory
    assert r.exit_code == 0, r.output
    assert "deployment/api configured (dry run)" in r.stdout.splitlines()
    assert "+  replicas: 3" in r.stdout.splitlines()  # the diff against the live object
    posts = [req for req in stub.requests if req[0] == "POST"]
    assert posts[-1][2]["dryRun"] is True


def test_apply_from_stdin(stub: Any) -> None:
    r = run(stub.url, "apply", "-f", "-", input=MANIFEST.split("---")[1])
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == "deployment/api created"


def test_invalid_field_is_named_and_the_other_documents_still_go(stub: Any,
                                                                   tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(
        MANIFEST.replace(
            "image: busybox:1.36\n          command", "imag: busybox\n          command"
        )
    )
    r = run(stub.url, "apply", "-f", str(f))
    assert r.exit_code == 1
    assert r.stdout.splitlines() == ["deployment/api created", "configmap/cfg created"]
    lines = r.stderr.strip().splitlines()
    assert lines[0].startswith("error: ") and "bad.yaml#1 (DaemonSet/web): " in lines[0]
    assert "spec.template.spec.containers[0].imag: not supported by edgefed (did you mean " \
        "'image'?)" in lines[0]
    assert lines[1] == "error: 1 of 3 documents refused (2 applied, 0 skipped)"
    [(_, _, body)] = [req for req in stub.requests if req[0] == "POST"]
    assert [d["kind"] for d in body["documents"]] == ["Deployment", "ConfigMap"]

    f.write_text(MANIFEST.replace("replicas: 2", "replicas: -1"))
    r = run(stub.url, "apply", "-f", str(f))
    assert r.exit_code == 1 and "spec.replicas" in r.stderr and "bad.yaml#2" in r.stderr


def test_an_unexpanded_variable_is_refused_and_that_document_not_sent(stub: Any,
                                                                       tmp_path: Path) -> None:
    """The README's examples carry `${IMAGE}`: applied as they are, cloudcore took them
    and the pods failed with CreateContainerConfigError. fedctl refuses them instead."""
    f = tmp_path / "web.yaml"
    f.write_text(MANIFEST.replace("image: busybox:1.36\n          command",
                                  "image: ${IMAGE}\n          command"))
    r = run(stub.url, "apply", "-f", str(f))
    assert r.exit_code == 1
    assert ("web.yaml#1 (DaemonSet/web): spec.template.spec.containers[0].image: is "
            "'${IMAGE}': ${IMAGE} was not expanded") in r.stderr
    assert "envsubst < FILE | fedctl apply -f -" in r.stderr
    f.write_text(MANIFEST.replace("busybox:1.36\n", "${REGISTRY:-localhost:5000}/busybox\n"))
    r = run(stub.url, "apply", "-f", str(f))
    assert r.exit_code == 1 and "${REGISTRY} was not expanded" in r.stderr
    sent = [d["kind"] for req in stub.requests if req[0] == "POST" for d in req[2]["documents"]]
    assert "DaemonSet" not in sent
    # a shell in the pod expands its own variables; a ConfigMap may hold a template
    f.write_text(MANIFEST.replace('command: ["httpd", "-f"]',
                                  'command: ["sh", "-c", "echo ${HOSTNAME}"]')
                 .replace("data: {greeting: hello}", "data: {greeting: '${NAME}'}"))
    r = run(stub.url, "apply", "-f", str(f))
    assert r.exit_code == 0, r.output


def test_bad_yaml_and_missing_file(stub: Any, tmp_path: Path) -> None:
    f = tmp_path / "broken.yaml"
    f.write_text("kind: Pod\nmetadata: [unclosed\n")
    r = run(stub.url, "apply", "-f", str(f))
    assert r.exit_code == 1 and "not valid YAML (line" in r.stderr
    r = run(stub.url, "apply", "-f", str(tmp_path / "nope.yaml"))
    assert r.exit_code == 1 and "no such file or directory" in r.stderr
    # a broken file among others: the others are still applied
    (tmp_path / "cm.yaml").write_text(MANIFEST.rsplit("---", maxsplit=1)[-1])
    r = run(stub.url, "apply", "-f", str(f), "-f", str(tmp_path / "cm.yaml"))
    assert r.exit_code == 1 and r.stdout.splitlines() == ["configmap/cfg created"]
    assert "broken.yaml: not valid YAML (line" in r.stderr
    assert "1 of 2 documents refused (1 applied, 0 skipped)" in r.stderr


def test_server_side_rejection_is_one_line_with_field(stub: Any, tmp_path: Path) -> None:
    f = tmp_path / "cm.yaml"
    f.write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cfg\n"
        "  annotations: {stub/reject: 'quota exceeded'}\n"
    )
    r = run(stub.url, "apply", "-f", str(f))
    assert r.exit_code == 1
    assert r.stderr.strip() == (f"error: {f}#1 (ConfigMap/cfg): refused by cloudcore: "
                                "metadata.annotations: quota exceeded")


APP_AND_FRIENDS = """\
apiVersion: v1
kind: ServiceAccount
metadata: {name: agent}
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent}
spec:
  revisionHistoryLimit: 10
  template:
    spec:
      containers:
      - name: agent
        image: busybox
        terminationMessagePath: /dev/termination-log
        volumeMounts: [{name: data, mountPath: /data, subPath: agent}]
        lifecycle: {preStop: {exec: {command: [sleep, "5"]}}}
      volumes:
      - name: data
        persistentVolumeClaim: {claimName: agent-data}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: api}
spec:
  template:
    spec:
      containers: [{name: api, image: busybox}]
---
apiVersion: v1
kind: Service
metadata: {name: api}
spec:
  selector: {app: api}
  ports: [{port: 80}]
---
apiVersion: batch/v1
kind: Job
metadata: {name: once}
spec:
  template:
    spec:
      containers: [{name: once, image: busybox}]
"""


def test_each_document_on_its_own_every_problem_of_each_reported(stub: Any,
                                                                  tmp_path: Path) -> None:
    """kubectl-style (issue 18): a refused document lists all its bad fields at once, a
    kind edgefed does not serve is skipped with its reason, the rest is applied, and
    the exit code says something was refused."""
    f = tmp_path / "app.yaml"
    f.write_text(APP_AND_FRIENDS)
    r = run(stub.url, "apply", "-f", str(f))
    assert r.exit_code == 1
    out = r.stdout.splitlines()
    assert out[0].startswith("serviceaccount/agent skipped: pods get no Kubernetes API "
                             "identity at the edge")
    assert out[1] == "deployment/api created"
    assert out[2].startswith("service/api skipped: Services are not served at the edge yet")
    assert "docs/proposals/0005-edge-services.md" in out[2]
    assert len(out) == 3
    err = r.stderr.splitlines()
    assert err[0] == f"error: {f}#2 (DaemonSet/agent): refused, 5 problems:"
    assert err[1:6] == [
        "  spec.revisionHistoryLimit: not supported by edgefed; instead: leave it out: "
        "edgefed keeps the last template that rolled out (`fedctl rollout undo`)",
        "  spec.template.spec.containers[0].terminationMessagePath: not supported by "
        "edgefed; instead: leave it out: `fedctl logs` shows the container's output",
        "  spec.template.spec.containers[0].volumeMounts[0].subPath: not supported by "
        "edgefed (did you mean 'mountPath'?); instead: mount the volume at a directory; "
        "a configMap/secret volume's `items` choose the file names",
        "  spec.template.spec.containers[0].lifecycle: not supported by edgefed",
        "  spec.template.spec.volumes[0].persistentVolumeClaim: not supported by edgefed; "
        "instead: a hostPath (type: DirectoryOrCreate) or emptyDir volume",
    ]
    assert err[6] == (f"error: {f}#5 (Job/once): kind: kind Job is not run by edgefed; "
                      "instead: a Pod with restartPolicy: OnFailure or Never")
    assert err[7] == "error: 2 of 5 documents refused (1 applied, 2 skipped)"
    [(_, _, body)] = [req for req in stub.requests if req[0] == "POST"]
    assert [d["kind"] for d in body["documents"]] == ["Deployment"]


def test_only_unserved_kinds_is_not_an_error(stub: Any) -> None:
    doc = APP_AND_FRIENDS.split("---")[3]
    r = run(stub.url, "apply", "-f", "-", input=doc)
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("service/api skipped: ")
    assert [req for req in stub.requests if req[0] == "POST"] == []


def test_a_document_cloudcore_refuses_does_not_stop_the_others(stub: Any,
                                                               tmp_path: Path) -> None:
    """cloudcore's apply is all or nothing; fedctl sends the documents one by one once
    it refused the batch, so the others are still created (each in its own request)."""
    f = tmp_path / "app.yaml"
    f.write_text(MANIFEST.replace("metadata: {name: api}",
                                  "metadata: {name: api, annotations: {stub/reject: 'no room'}}"))
    r = run(stub.url, "apply", "-f", str(f))
    assert r.exit_code == 1
    assert r.stdout.splitlines() == ["daemonset/web created", "configmap/cfg created"]
    assert r.stderr.splitlines() == [
        f"error: {f}#2 (Deployment/api): refused by cloudcore: metadata.annotations: no room",
        "error: 1 of 3 documents refused (2 applied, 0 skipped)"]
    posts = [len(req[2]["documents"]) for req in stub.requests if req[0] == "POST"]
    assert posts == [3, 1, 1, 1]  # the batch, then one by one
    assert stub.find("deployments", "default", "api") is None
    assert stub.find("daemonsets", "default", "web") is not None


def test_an_object_defined_twice_is_refused_the_second_time(stub: Any, tmp_path: Path) -> None:
    one = MANIFEST.rsplit("---", maxsplit=1)[-1]
    r = run(stub.url, "apply", "-f", "-", input=one + "---\n" + one)
    assert r.exit_code == 1
    assert r.stdout.splitlines() == ["configmap/cfg created"]
    assert ("<stdin>#2 (ConfigMap/cfg): metadata.name: configmap/cfg is also defined in "
            "<stdin>#1") in r.stderr


# --- get -------------------------------------------------------------------------------


def test_get_nodes_table(stub: Any) -> None:
    stub.put(node("edge-1"))
    stub.put(node("edge-2", ready="NotReady", acked=2, desired=3))
    r = run(stub.url, "get", "nodes")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["NAME", "STATUS", "LAST", "SEEN", "GEN"]
    assert lines[1].split()[:2] == ["edge-1", "Ready"] and lines[1].split()[-1] == "3/3"
    assert lines[2].split()[:2] == ["edge-2", "NotReady"] and lines[2].split()[-1] == "2/3"
    assert "ago" in lines[1]
    assert ANSI not in r.stdout

    r = run(stub.url, "get", "no", "-o", "wide")
    assert (
        "arm64" in r.stdout
        and "3500m" in r.stdout
        and "7Gi" in r.stdout
        and "zone=shop" in r.stdout
    )


def test_get_pods_wide_shows_the_pod_ip(stub: Any) -> None:
    web = pod("web-a", "edge-1")
    web["status"]["podIP"] = "10.88.0.7"
    stub.put(web)
    stub.put(pod("web-b", None, phase="Pending", reason="Unschedulable"))
    r = run(stub.url, "get", "pods", "-o", "wide")
    assert r.exit_code == 0, r.output
    head, *rows = r.stdout.splitlines()
    assert "IP" in head.split()
    ip_col = head.split().index("IP")
    by_name = {row.split()[0]: row.split() for row in rows}
    assert by_name["web-a"][ip_col] == "10.88.0.7"
    assert "10.88.0.7" not in " ".join(by_name["web-b"])


def test_get_pods_json_selector_and_node(stub: Any) -> None:
    stub.put(pod("web-a", "edge-1", restarts=2))
    stub.put(pod("web-b", None, phase="Pending", reason="Unschedulable"))
    stub.put(pod("api-a", "edge-2", app_label="api"))
    r = run(stub.url, "get", "pods", "-l", "app=web", "-o", "json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["kind"] == "List"
    assert [p["metadata"]["name"] for p in doc["items"]] == ["web-a", "web-b"]
    assert (
        "labelSelector=app%3Dweb" in stub.requests[-1][1]
        or "labelSelector=app=web" in stub.requests[-1][1]
    )

    r = run(stub.url, "get", "pods")
    rows = [line.split() for line in r.stdout.splitlines()]
    assert rows[0] == ["NAME", "NODE", "PHASE", "RESTARTS", "REASON"]
    assert ["web-a", "edge-1", "Running", "2", "-"] in rows
    assert ["web-b", "<unscheduled>", "Pending", "0", "Unschedulable"] in rows

    r = run(stub.url, "get", "pods", "--node", "edge-2", "-o", "name")
    assert r.stdout.strip() == "pod/api-a"

    r = run(stub.url, "get", "pod", "web-a", "-o", "yaml")
    assert yaml.safe_load(r.stdout)["status"]["nodeName"] == "edge-1"

    r = run(stub.url, "get", "pods", "-A")
    assert r.stdout.splitlines()[0].split()[0] == "NAMESPACE"
    assert "namespace=" not in stub.requests[-1][1]


def test_get_workloads_lists_both_kinds(stub: Any, tmp_path: Path) -> None:
    (tmp_path / "app.yaml").write_text(MANIFEST)
    assert run(stub.url, "apply", "-f", str(tmp_path / "app.yaml")).exit_code == 0
    r = run(stub.url, "get", "workloads")
    rows = [line.split() for line in r.stdout.splitlines()]
    assert rows[0][:3] == ["KIND", "NAME", "READY"]
    assert [row[:2] for row in rows[1:]] == [["DaemonSet", "web"], ["Deployment", "api"]]
    r = run(stub.url, "get", "cm", "-n", "shop")
    assert r.stdout.splitlines()[1].split()[:2] == ["cfg", "1"]


def test_not_found_exits_3(stub: Any) -> None:
    r = run(stub.url, "get", "pod", "ghost")
    assert r.exit_code == 3
    assert r.stderr.strip() == 'error: pod "ghost" in namespace "default" not found'
    r = run(stub.url, "describe", "node", "ghost")
    assert r.exit_code == 3
    r = run(stub.url, "get", "workloads", "ghost")
    assert r.exit_code == 3


def test_empty_list_says_so_on_stderr(stub: Any) -> None:
    r = run(stub.url, "get", "pods")
    assert r.exit_code == 0 and r.stdout == ""
    assert "No pods found in namespace 'default'" in r.stderr


# --- describe, delete --------------------------------------------------------------------


def test_describe_pod_shows_scheduling_reason(stub: Any) -> None:
    stub.put(
        pod(
            "web-b",
            None,
            phase="Pending",
            reason="Unschedulable",
            message="0/3 nodes match: 3 lack cpu (want 100m)",
        )
    )
    r = run(stub.url, "describe", "pod", "web-b")
    assert r.exit_code == 0, r.output
    out = r.stdout
    assert "Reason:        Unschedulable" in out
    assert "Message:       0/3 nodes match: 3 lack cpu (want 100m)" in out
    assert "image: busybox" in out  # every field, not just the summary


def test_describe_node_lists_its_pods(stub: Any) -> None:
    stub.put(node("edge-1", acked=2, desired=3))
    stub.put(pod("web-a", "edge-1"))
    r = run(stub.url, "describe", "node", "edge-1")
    assert r.exit_code == 0, r.output
    assert "acked 2 / desired 3 (behind by 1)" in r.stdout
    assert "capacity:" in r.stdout and "agentVersion: 0.1.0" in r.stdout
    assert "Pods:" in r.stdout and "web-a" in r.stdout


def test_delete_by_name_and_by_file(stub: Any, tmp_path: Path) -> None:
    f = tmp_path / "app.yaml"
    f.write_text(MANIFEST)
    run(stub.url, "apply", "-f", str(f))
    r = run(stub.url, "delete", "ds", "web")
    assert (r.exit_code, r.stdout.strip()) == (0, "daemonset/web deleted")
    r = run(stub.url, "delete", "daemonset", "web")
    assert r.exit_code == 3 and "not found" in r.stderr
    assert run(stub.url, "delete", "daemonset", "web", "--ignore-not-found").exit_code == 0

    r = run(stub.url, "delete", "-f", str(f))
    assert r.exit_code == 3  # web was already gone; the rest is deleted anyway
    assert r.stdout.splitlines() == ["deployment/api deleted", "configmap/cfg deleted"]
    assert ("DELETE", "/api/v1/configmaps/shop/cfg", None) in stub.requests


# --- wait ------------------------------------------------------------------------------


def test_wait_until_running(stub: Any) -> None:
    stub.put(pod("web-a", "edge-1", phase="Pending"))
    stub.put(pod("web-b", "edge-2", phase="Running"))
    stub.put(pod("api-a", "edge-2", phase="Pending", app_label="api"))

    def later() -> None:
        time.sleep(0.5)
        stub.put(pod("web-a", "edge-1", phase="Running"))

    t = threading.Thread(target=later)
    t.start()
    started = time.monotonic()
    r = run(
        stub.url,
        "wait",
        "--for=Running",
        "pods",
        "-l",
        "app=web",
        "--timeout",
        "60",
        "--interval",
        "0.1",
    )
    t.join()
    assert r.exit_code == 0, r.output
    assert time.monotonic() - started < 30  # returned once met, not at its timeout
    assert r.stdout.splitlines() == ["pod/web-a condition met", "pod/web-b condition met"]


def test_wait_times_out_with_the_stragglers(stub: Any) -> None:
    stub.put(pod("web-a", None, phase="Pending", reason="Unschedulable"))
    stub.put(pod("web-b", "edge-2", phase="Running"))
    r = run(
        stub.url,
        "wait",
        "--for=Running",
        "pods",
        "-l",
        "app=web",
        "--timeout",
        "0.3",
        "--interval",
        "0.1",
    )
    assert r.exit_code == 1
    assert "timed out after 0.3 s waiting for pods -l app=web to be Running" in r.stderr
    assert "1/2 are; not yet: web-a (Pending: Unschedulable)" in r.stderr

    r = run(stub.url, "wait", "--for=Running", "pods", "-l", "app=none", "--timeout", "0.2")
    assert r.exit_code == 1 and "after 0.2 s" in r.stderr and "nothing matched" in r.stderr


def test_durations_are_printed_with_their_unit() -> None:
    from fedctl.app import format_duration, parse_duration

    assert [format_duration(parse_duration(t)) for t in ("0.3", "60s", "90", "2m", "1h")] == [
        "0.3 s", "60 s", "90 s", "120 s", "3600 s"]


def test_wait_for_node_ready_and_bad_condition(stub: Any) -> None:
    stub.put(node("edge-1"))
    r = run(stub.url, "wait", "nodes", "edge-1", "--for", "ready", "--timeout", "2")
    assert r.exit_code == 0 and r.stdout.strip() == "node/edge-1 condition met"
    r = run(stub.url, "wait", "pods", "--for", "Sleeping")
    assert r.exit_code == 2 and "Running" in r.stderr


# --- server resolution, errors, exit codes ---------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_server_is_one_clear_line() -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    r = run(url, "get", "nodes")
    assert r.exit_code == 1
    assert r.stderr.startswith(f"error: cannot reach cloudcore at {url}: ")
    assert len(r.stderr.splitlines()) == 1 and "Traceback" not in r.stderr


def test_server_resolution_order(tmp_path: Path) -> None:
    cfg = tmp_path / "edgefed" / "fedctl.yaml"
    env = {"XDG_CONFIG_HOME": str(tmp_path)}
    assert resolve(flag=None, env=env).server == DEFAULT_SERVER
    cfg.parent.mkdir()
    cfg.write_text("server: http://from-file:1/\n")
    assert resolve(flag=None, env=env).server == "http://from-file:1"
    env["FEDCTL_SERVER"] = "http://from-env:2"
    assert resolve(flag=None, env=env).server == "http://from-env:2"
    assert resolve(flag="http://flag:3", env=env).server == "http://flag:3"
    with pytest.raises(UsageError, match="not an http"):
        resolve(flag="ftp://x", env=env)


def test_usage_errors_exit_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["get", "gizmos"]) == 2
    assert capsys.readouterr().err.startswith("error: unknown resource type 'gizmos'")
    assert main(["get", "--bogus", "pods"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "error: No such option: --bogus (see 'fedctl get --help')"
    assert main(["delete", "pod"]) == 2
    assert main(["get", "pods", "-n", "x", "-A"]) == 2


def test_subprocess_piped_output_has_no_ansi(stub: Any, tmp_path: Path) -> None:
    """The real entry point, with a pipe for stdout and a terminal-ish environment."""
    stub.put(node("edge-1", ready="NotReady", acked=1, desired=2))
    stub.put(pod("web-a", "edge-1", phase="Failed", reason="CrashLoopBackOff", restarts=5))
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("FORCE_COLOR", "CLICOLOR_FORCE", "TTY_COMPATIBLE")
    }
    env.update(
        TERM="xterm-256color",
        COLORTERM="truecolor",
        FEDCTL_SERVER=stub.url,
        XDG_CONFIG_HOME=str(tmp_path),
    )

    def fedctl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "fedctl", *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=REPO,
            timeout=30,
            check=False,
        )

    out = fedctl("get", "nodes")
    assert out.returncode == 0, out.stderr
    assert "edge-1" in out.stdout and "NotReady" in out.stdout and "1/2" in out.stdout
    out2 = fedctl("describe", "pod", "web-a")
    assert "CrashLoopBackOff" in out2.stdout
    bad = fedctl("get", "pod", "ghost")
    assert bad.returncode == 3
    for o in (out, out2, bad):
        assert ANSI not in o.stdout + o.stderr
        assert "Traceback" not in o.stderr


def test_a_reader_that_leaves_early_ends_fedctl_quietly_with_141(stub: Any) -> None:
    """`fedctl describe ... | head`: when the reader has gone, fedctl stops as a
    SIGPIPE-killed cat would in a shell (status 141), with nothing on stderr."""
    stub.put(pod("web-a", "edge-1", phase="Running"))
    env = {**os.environ, "FEDCTL_SERVER": stub.url}
    for args in (["describe", "pod", "web-a"], ["get", "pods"], ["--help"]):
        r, w = os.pipe()
        os.close(r)  # the reader is gone before fedctl writes a byte
        try:
            out = subprocess.run([sys.executable, "-m", "fedctl", *args], stdout=w,
                                 stderr=subprocess.PIPE, text=True, env=env, cwd=REPO,
                                 timeout=30, check=False)
        finally:
            os.close(w)
        assert (out.returncode, out.stderr) == (141, ""), args


def test_get_yaml_reads_as_kubernetes(stub: Any) -> None:
    """`get nodes -o yaml` shows what cloudcore sends in a person's terms: no namespace on
    a cluster-scoped Node, RFC 3339 times, quantities with units, floats without float32
    noise; `-o json` stays the API's exact form, for scripts."""
    n = node("edge-1")
    n["metadata"].update(namespace="default", creationTimestamp=1796545262.4020996)
    n["status"].update(lastSeen=1796545262.4020996, capacity={
        "cpu": 2000, "memory": 8 * 2**30, "pods": 110}, allocatable={
        "cpu": 1500, "memory": 1536 * 2**20, "pods": 110},
        usage={"cpu_p50": 0.1550000011920929, "trusted": 1.0})
    stub.put(n)
    got = yaml.safe_load(run(stub.url, "get", "nodes", "-o", "yaml").stdout)["items"][0]
    assert "namespace" not in got["metadata"]
    assert got["metadata"]["creationTimestamp"] == "2026-12-06T08:21:02Z"
    assert got["status"]["lastSeen"] == "2026-12-06T08:21:02Z"
    assert got["status"]["capacity"] == {"cpu": "2", "memory": "8Gi", "pods": 110}
    assert got["status"]["allocatable"] == {"cpu": "1500m", "memory": "1536Mi", "pods": 110}
    assert got["status"]["usage"] == {"cpu_p50": 0.155, "trusted": 1.0}
    one = yaml.safe_load(run(stub.url, "get", "node", "edge-1", "-o", "yaml").stdout)
    assert "namespace" not in one["metadata"] and one["status"]["capacity"]["cpu"] == "2"
    raw = json.loads(run(stub.url, "get", "node", "edge-1", "-o", "json").stdout)
    assert raw["status"]["lastSeen"] == 1796545262.4020996


def test_an_apply_that_times_out_names_what_may_have_been_created(stub: Any) -> None:
    """`replicas: 100000` kept cloudcore busy past the request timeout while it created
    the object: 'cannot reach cloudcore' was wrong, the object was there."""
    doc = ("apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: big\n"
           "  annotations: {stub/delay: '1.5'}\nspec:\n  replicas: 100000\n  template:\n"
           "    spec:\n      containers: [{name: c, image: busybox}]\n")
    r = run(stub.url, "--request-timeout", "0.5", "apply", "-f", "-", input=doc)
    assert r.exit_code == 1
    assert r.stderr.strip() == (
        "error: cloudcore did not answer the apply of deployment/big within 0.5 s "
        "(--request-timeout): it may have applied it all the same; see `fedctl get "
        "deployment big` before retrying")


def test_a_refusal_of_several_lines_is_one_problem_a_line(stub: Any) -> None:
    """cloudcore's pod security policy lists every violation of an object, one a line,
    each starting with the object: fedctl indents them under the document's line."""
    why = ("refused by pod security policy (2 violations):\n"
           "ConfigMap default/cfg: a=1: not allowed (policy baseline)\n"
           "ConfigMap default/cfg: b=2: not allowed (policy baseline)")
    doc = yaml.safe_dump({"apiVersion": "v1", "kind": "ConfigMap",
                          "metadata": {"name": "cfg", "annotations": {"stub/reject": why}}})
    r = run(stub.url, "apply", "-f", "-", input=doc)
    assert r.exit_code == 1
    assert r.stderr.splitlines() == [
        "error: <stdin>#1 (ConfigMap/cfg): refused by cloudcore: metadata.annotations: "
        "refused by pod security policy (2 violations):",
        "  a=1: not allowed (policy baseline)",
        "  b=2: not allowed (policy baseline)"]


def test_delete_by_file_skips_what_apply_skips(stub: Any, tmp_path: Path) -> None:
    """What `apply -f` took, `delete -f` removes: a Service beside the Deployment is
    skipped (not an error for the whole file), a document is deleted by its kind and
    name even with a field apply would refuse, and an unknown kind is named."""
    f = tmp_path / "app.yaml"
    f.write_text(MANIFEST)
    assert run(stub.url, "apply", "-f", str(f)).exit_code == 0
    f.write_text(MANIFEST.replace("replicas: 2", "replicas: 2\n  revisionHistoryLimit: 3")
                 + "---\n" + APP_AND_FRIENDS.split("---")[3]
                 + "---\napiVersion: example.io/v1\nkind: Gadget\nmetadata: {name: g}\n")
    r = run(stub.url, "delete", "-f", str(f))
    assert r.exit_code == 1
    out = r.stdout.splitlines()
    assert out[0].startswith("service/api skipped: Services are not served at the edge")
    assert out[1:] == ["daemonset/web deleted", "deployment/api deleted", "configmap/cfg deleted"]
    assert "(Gadget/g): kind: Gadget (example.io/v1) is a custom resource" in r.stderr


def test_a_dry_run_goes_one_by_one_too(stub: Any, tmp_path: Path) -> None:
    f = tmp_path / "app.yaml"
    f.write_text(MANIFEST.replace("metadata: {name: api}",
                                  "metadata: {name: api, annotations: {stub/reject: 'no room'}}"))
    r = run(stub.url, "apply", "-f", str(f), "--dry-run")
    assert r.exit_code == 1
    assert r.stdout.splitlines() == ["daemonset/web created (dry run)",
                                     "configmap/cfg created (dry run)"]
    assert r.stderr.splitlines()[-1] == "error: 1 of 3 documents refused (2 would be applied, " \
        "0 skipped)"
    posts = [req[2]["dryRun"] for req in stub.requests if req[0] == "POST"]
    assert posts == [True] * 4 and stub.objects == {}
