"""`fedctl get ... -o yaml|json | fedctl apply -f -` against the real cloudcore API:
apply accepts what get prints (status and server-managed metadata are ignored,
`kind: List` is expanded) and reports `unchanged`; `apply --dry-run` shows a diff."""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from test_fedctl_real import Cloud, cloud, fed  # noqa: F401  (cloud is a fixture)
from typer.testing import CliRunner

from fedctl.app import app

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cloudcore"))
from cloudcore_fakes import add_node, daemonset, deployment


def _apply(c: Cloud, text: str, *extra: str) -> Any:
    return CliRunner().invoke(app, ["--server", c.url, "apply", *extra, "-f", "-"], input=text)


def _objects() -> list[dict[str, Any]]:
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"},
              "data": {"user": base64.b64encode(b"admin").decode()},
              "stringData": {"pass": "hunter2"}}
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop",
                                                              "labels": {"tier": "edge"}}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"},
         "data": {"a": "1"}},
        secret,
        daemonset("web"),
        deployment("api", replicas=1),
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "solo"},
         "spec": {"containers": [{"name": "c", "image": "busybox"}]}},
    ]


@pytest.fixture
def applied(cloud: Cloud) -> Cloud:  # noqa: F811
    for n in ("a", "b"):
        cloud.call(add_node, cloud.fleet, n, labels={"zone": "z1"})
    r = _apply(cloud, yaml.safe_dump_all(_objects()))
    assert r.exit_code == 0, r.output
    assert fed(cloud, "label", "node", "a", "role=gw").exit_code == 0
    return cloud


@pytest.mark.parametrize("fmt", ["yaml", "json"])
@pytest.mark.parametrize(("kind", "name"), [
    ("daemonset", "web"), ("deployment", "api"), ("pod", "solo"), ("configmap", "cfg"),
    ("secret", "creds"), ("namespace", "shop"), ("node", "a"), ("node", "b")])
def test_get_one_then_apply_is_unchanged(applied: Cloud, kind: str, name: str,
                                         fmt: str) -> None:
    got = fed(applied, "get", kind, name, "-o", fmt)
    assert got.exit_code == 0, got.output
    r = _apply(applied, got.stdout)
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == f"{kind}/{name} unchanged"


@pytest.mark.parametrize("fmt", ["yaml", "json"])
@pytest.mark.parametrize("kind", ["daemonsets", "deployments", "configmaps", "namespaces",
                                  "nodes"])
def test_get_list_then_apply_expands_the_list(applied: Cloud, kind: str, fmt: str) -> None:
    got = fed(applied, "get", kind, "-o", fmt)
    assert got.exit_code == 0, got.output
    r = _apply(applied, got.stdout)
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    if kind == "namespaces":  # the namespace in use without an object of its own gets one
        assert "namespace/default created" in lines, r.stdout
        lines = _apply(applied, fed(applied, "get", kind, "-o", fmt).stdout).stdout.splitlines()
    assert lines and all(line.endswith(" unchanged") for line in lines), r.stdout


def test_listed_secrets_are_redacted_and_refused_by_name(applied: Cloud) -> None:
    got = fed(applied, "get", "secrets", "-o", "yaml")
    r = _apply(applied, got.stdout)
    assert r.exit_code == 1
    assert "redacted" in r.stderr and "data" in r.stderr


def test_server_fields_are_ignored_but_unknown_fields_are_named(applied: Cloud) -> None:
    doc = json.loads(fed(applied, "get", "configmap", "cfg", "-o", "json").stdout)
    doc["metadata"]["resourceVersion"] = "42"
    doc["metadata"]["managedFields"] = []
    r = _apply(applied, json.dumps(doc))
    assert r.exit_code == 1 and "metadata.managedFields" in r.stderr
    del doc["metadata"]["managedFields"]
    assert _apply(applied, json.dumps(doc)).stdout.strip() == "configmap/cfg unchanged"
    doc["spec"] = {}
    r = _apply(applied, json.dumps(doc))
    assert r.exit_code == 1 and "(ConfigMap/cfg): spec: not supported by edgefed" in r.stderr


def test_server_accepts_get_output_too(applied: Cloud) -> None:
    doc = httpx.get(f"{applied.url}/api/v1/daemonsets/default/web").json()
    doc["metadata"]["resourceVersion"] = "7"
    r = httpx.post(f"{applied.url}/api/v1/apply", json={"documents": [doc]})
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["action"] == "unchanged"


def test_dry_run_shows_a_diff(applied: Cloud) -> None:
    doc = yaml.safe_load(fed(applied, "get", "deployment", "api", "-o", "yaml").stdout)
    doc["spec"]["replicas"] = 3
    new_cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "fresh"},
              "data": {"x": "y"}}
    same = yaml.safe_load(fed(applied, "get", "configmap", "cfg", "-o", "yaml").stdout)
    r = _apply(applied, yaml.safe_dump_all([doc, new_cm, same]), "--dry-run")
    assert r.exit_code == 0, r.output
    out = r.stdout
    assert "deployment/api configured (dry run)" in out
    assert "--- deployment/api (live)" in out and "+++ deployment/api (applied)" in out
    assert "-  replicas: 1" in out and "+  replicas: 3" in out
    assert "configmap/fresh created (dry run)" in out
    assert "configmap/cfg unchanged (dry run)" in out
    assert applied.fleet.deployments[("default", "api")].spec.replicas == 1
    assert ("default", "fresh") not in applied.fleet.configmaps
    doc["spec"]["replicas"] = -1  # the server still validates on a dry run
    r = _apply(applied, yaml.safe_dump(doc), "--dry-run")
    assert r.exit_code == 1 and "replicas" in r.stderr


def test_dry_run_diff_of_a_node_shows_only_owned_labels(applied: Cloud) -> None:
    doc = yaml.safe_load(fed(applied, "get", "node", "a", "-o", "yaml").stdout)
    doc["metadata"]["labels"]["role"] = "edge"
    doc["spec"]["unschedulable"] = True
    r = _apply(applied, yaml.safe_dump(doc), "--dry-run")
    assert r.exit_code == 0, r.output
    assert "node/a configured (dry run)" in r.stdout
    assert "-    role: gw" in r.stdout and "+    role: edge" in r.stdout
    assert "+  unschedulable: true" in r.stdout and "zone" not in r.stdout
    assert "status" not in r.stdout and "uid" not in r.stdout
    assert applied.fleet.nodes["a"].metadata.labels["role"] == "gw"
