"""Issue 18's pod fields through the whole fleet: real mosquitto, cloudcore, two agents
in network namespaces, real crun. A DaemonSet whose env reads a ConfigMap key, a Secret
key (envFrom too) and `spec.nodeName`, with an init container, serves what its container
sees: the cloud delivered the ConfigMap and Secret its env references to each node (not
only those volumes mount), the agent resolved them, and the init container ran first."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
from fixtures_fleet import real_fleet

from testbed.fleet import Fleet, FleetSettings
from testbed.registry import LocalRegistry, seed_busybox

pytestmark = pytest.mark.integration



@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    with real_fleet(FleetSettings(nodes=2, workdir=tmp_path_factory.mktemp("fleet"),
                                  heartbeat_s=1.0)) as f:
        yield f


def env_ds(image: str) -> dict[str, Any]:
    script = ('mkdir -p /tmp/www && echo "$(cat /init/ran) $MODE $CONF_LEVEL $TOKEN $NODE"'
              " > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www")
    return {
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "envs"},
        "spec": {"selector": {"matchLabels": {"app": "envs"}},
                 "template": {"metadata": {"labels": {"app": "envs"}}, "spec": {
                     "volumes": [{"name": "init", "emptyDir": {}}],
                     "initContainers": [{
                         "name": "prepare", "image": image,
                         "command": ["sh", "-c", "echo init-$(NODE) > /init/ran"],
                         "env": [{"name": "NODE", "valueFrom": {"fieldRef": {
                             "fieldPath": "spec.nodeName"}}}],
                         "volumeMounts": [{"name": "init", "mountPath": "/init"}]}],
                     "containers": [{
                         "name": "httpd", "image": image, "command": ["sh", "-c", script],
                         "envFrom": [{"prefix": "CONF_", "configMapRef": {"name": "conf"}}],
                         "env": [
                             {"name": "MODE", "valueFrom": {"configMapKeyRef": {
                                 "name": "conf", "key": "MODE"}}},
                             {"name": "TOKEN", "valueFrom": {"secretKeyRef": {
                                 "name": "creds", "key": "token"}}},
                             {"name": "NODE", "valueFrom": {"fieldRef": {
                                 "fieldPath": "spec.nodeName"}}}],
                         "volumeMounts": [{"name": "init", "mountPath": "/init"}],
                         "resources": {"limits": {"memory": "32Mi"}}}]}}},
    }


def test_env_from_configmap_secret_and_node_name_with_an_init_container(
        fleet: Fleet) -> None:
    fleet.apply([
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "conf"},
         "data": {"MODE": "fast", "LEVEL": "3"}},
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"},
         "stringData": {"token": "t0k"}},
        env_ds(fleet.image)])

    def served() -> bool:
        pods = fleet.pods("app=envs")
        if len(pods) != 2 or any(p["status"].get("phase") != "Running" for p in pods):
            return False
        try:
            return all(fleet.pod_page(p["metadata"]["name"], port=8080)
                       == f"init-{p['spec']['nodeName']} fast 3 t0k {p['spec']['nodeName']}"
                       for p in pods)
        except OSError:
            return False

    try:
        fleet.wait(served, timeout=120, what="both pods serve their env")
    except TimeoutError as exc:
        pages = {}
        for p in fleet.pods("app=envs"):
            try:
                pages[p["metadata"]["name"]] = fleet.pod_page(p["metadata"]["name"], port=8080)
            except OSError as err:
                pages[p["metadata"]["name"]] = str(err)
        raise AssertionError(f"{exc}; pods {[p['status'] for p in fleet.pods('app=envs')]}; "
                             f"pages {pages}") from None
    for p in fleet.pods("app=envs"):
        (init,) = p["status"]["initContainerStatuses"]
        assert (init["state"], init["exitCode"]) == ("terminated", 0)


def test_image_pull_secrets_through_the_fleet(fleet: Fleet) -> None:
    """The fleet's registry is replaced, at the same address (the agents list it as
    insecure), by one with htpasswd: a pod with imagePullSecrets runs, one without (on
    the other node) is refused by the registry."""
    host, port = fleet.registry.address.rsplit(":", 1)
    fleet.registry.stop()
    private = LocalRegistry(host=host, port=int(port), auth=("edge", "s3cret"))
    private.start()
    try:
        image = seed_busybox(private, name="private/busybox")
        auth = base64.b64encode(b"edge:s3cret").decode()
        fleet.apply([
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "regcred"},
             "type": "kubernetes.io/dockerconfigjson",
             "stringData": {".dockerconfigjson": json.dumps(
                 {"auths": {private.address: {"auth": auth}}})}},
            *[{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
               # a volume: until the cloud delivers the references of pods without
               # one (tests/integration/test_pod_fields_refs.py, the xfail)
               "spec": {"nodeName": node, **extra,
                        "volumes": [{"name": "scratch", "emptyDir": {}}],
                        "containers": [{
                   "name": "main", "image": image, "command": ["sleep", "3600"]}]}}
              for name, node, extra in (
                  ("with-secret", "edge-1", {"imagePullSecrets": [{"name": "regcred"}]}),
                  # another node: on edge-1 the image is there once pulled, and a pod
                  # with IfNotPresent uses it without credentials (as in Kubernetes)
                  ("without", "edge-2", {}))]])

        def status(name: str) -> dict[str, Any]:
            return dict(fleet.get(f"/api/v1/pods/default/{name}").get("status") or {})

        try:
            fleet.wait(lambda: status("with-secret").get("phase") == "Running", timeout=90,
                       what="the pod with imagePullSecrets Running")
        except TimeoutError as exc:
            raise AssertionError(f"{exc}: {status('with-secret')}") from None
        fleet.wait(lambda: status("without").get("reason") == "ImagePullBackOff", timeout=60,
                   what="the pod without them refused")
        assert "unauthorized" in str(status("without").get("message", "")).lower()
    finally:
        private.stop()
