"""imagePullSecrets on the agent: which credentials a pull gets (Kubernetes' matching),
the image store handing them to skopeo in a temporary 0600 authfile removed after the
pull (against a real docker-registry with htpasswd), never printed, and the reconciler
passing them only to a runtime that declares it can use them."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any, ClassVar

import pytest

from edgecore.cache import Cache
from edgecore.reconciler import CrashLoop, Reconciler
from edgecore.reconciler.volumes import Volumes
from edgecore.runtime.errors import ImagePullError
from edgecore.runtime.images import ImageStore
from edgecore.runtime.registry_auth import RegistryCredentials, credentials_for
from edgecore.runtime.types import Capabilities
from shared.delta import EdgeDesired
from shared.entries import pod_entry, pod_key, secret_entry, secret_key
from shared.models import Pod
from testbed.registry import LocalRegistry, seed_busybox

from edgecore_fakes import FakeRuntime  # isort: skip


def dockerconfig(auths: dict[str, Any]) -> dict[str, bytes]:
    return {".dockerconfigjson": json.dumps({"auths": auths}).encode()}


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_the_matching_entry_is_chosen_as_the_kubelet_does() -> None:
    secrets = [
        dockerconfig({"https://index.docker.io/v1/": {"auth": b64("hub:h")},
                      "reg.local:5000": {"username": "u", "password": "p:with:colons"},
                      "reg.local:5000/team": {"auth": b64("team:t")},
                      "*.corp.example": {"auth": b64("wild:w")},
                      "broken.local": {"auth": "!!not base64"}}),
        {".dockercfg": json.dumps({"old.local": {"auth": b64("old:o")}}).encode()},
    ]
    def who(image: str) -> str | None:
        c = credentials_for(image, secrets)
        return None if c is None else f"{c.registry} {c.username}:{c.password}"
    assert who("busybox") == "docker.io hub:h"
    assert who("docker.io/library/busybox:1") == "docker.io hub:h"
    assert who("reg.local:5000/app:1") == "reg.local:5000 u:p:with:colons"
    assert who("reg.local:5000/team/app@sha256:" + "0" * 64) == "reg.local:5000 team:t"
    assert who("reg.local:5000/teamx/app") == "reg.local:5000 u:p:with:colons"
    assert who("eu.corp.example/app") == "eu.corp.example wild:w"
    assert who("old.local/app") == "old.local old:o"
    assert who("broken.local/app") is None
    assert who("other.local/app") is None
    assert credentials_for("x", [{"not-a-pull-secret": b"{}"},
                                 {".dockerconfigjson": b"not json"}]) is None


def test_credentials_never_print_the_password() -> None:
    c = RegistryCredentials("reg:5000", "edge", "s3cret")
    assert "s3cret" not in repr(c) and "s3cret" not in str(c)
    doc = json.loads(c.authfile())
    assert doc == {"auths": {"reg:5000": {"auth": b64("edge:s3cret")}}}


@pytest.fixture(scope="module")
def private_registry():
    with LocalRegistry(auth=("edge", "s3cret")) as reg:
        yield reg, seed_busybox(reg, name="private/busybox")


async def test_a_pull_from_a_password_protected_registry(private_registry,
                                                         tmp_path: Path) -> None:
    reg, ref = private_registry
    store = ImageStore(tmp_path / "rt", insecure_registries=(reg.address,), min_free_bytes=0)
    with pytest.raises(ImagePullError, match=r"unauthorized|authentication required"):
        await store.pull(ref)
    with pytest.raises(ImagePullError):
        await store.pull(ref, credentials=RegistryCredentials(reg.address, "edge", "wrong"))
    digest = await store.pull(ref, credentials=RegistryCredentials(reg.address, "edge",
                                                                   "s3cret"))
    assert digest.startswith("sha256:") and store.digest_of(ref) == digest
    # the authfile was for that pull only
    assert not list((tmp_path / "rt").glob(".auth-*"))


async def test_the_authfile_is_private_and_gone_after_a_failed_pull(tmp_path: Path) -> None:
    seen = tmp_path / "seen"
    skopeo = tmp_path / "skopeo"
    skopeo.write_text(
        "#!/bin/sh\n"
        "while [ $# -gt 0 ]; do\n"
        f'  if [ "$1" = --src-authfile ]; then stat -c %a "$2" > {seen}.mode;'
        f' cat "$2" > {seen}; fi\n'
        "  shift\ndone\necho 'level=fatal msg=\"unauthorized\"' >&2\nexit 1\n")
    skopeo.chmod(0o755)
    store = ImageStore(tmp_path / "rt", skopeo=str(skopeo), min_free_bytes=0)
    with pytest.raises(ImagePullError):
        await store.pull("reg.local:5000/app:1",
                         credentials=RegistryCredentials("reg.local:5000", "edge", "pw"))
    assert Path(f"{seen}.mode").read_text().strip() == "600"
    assert json.loads(seen.read_text())["auths"]["reg.local:5000"]["auth"] == b64("edge:pw")
    assert not list((tmp_path / "rt").glob(".auth-*"))


class CredRuntime(FakeRuntime):
    capabilities: ClassVar[Capabilities] = Capabilities(images=True, pull_credentials=True)

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.pulled: list[tuple[str, RegistryCredentials | None]] = []

    async def images(self) -> list[Any]:
        return []

    async def pull(self, image: str, *, insecure: bool | None = None,
                   policy: str = "IfNotPresent",
                   credentials: RegistryCredentials | None = None) -> str:
        self.pulled.append((image, credentials))
        return "sha256:" + "0" * 64


class Sink:
    def __init__(self) -> None:
        self.latest: dict[str, Any] = {}

    def update(self, key: str, status: Any) -> None:
        self.latest[key] = status


@pytest.mark.parametrize("capable", [True, False])
async def test_the_reconciler_hands_the_pods_credentials_to_the_pull(
        tmp_path: Path, capable: bool) -> None:
    rt = CredRuntime(clock=lambda: 1.0)
    if not capable:
        rt.capabilities = Capabilities(images=True)  # type: ignore[misc]
    pod = Pod.model_validate({"metadata": {"name": "web", "namespace": "shop"}, "spec": {
        "imagePullSecrets": [{"name": "missing"}, {"name": "regcred"}],
        "containers": [{"name": "main", "image": "reg.local:5000/app:1"}]}})
    items = {pod_key("shop", "web"): pod_entry(pod),
             secret_key("shop", "regcred"): secret_entry(dockerconfig(
                 {"reg.local:5000": {"auth": b64("edge:pw")}}))}
    sink = Sink()
    rec = Reconciler(node="n", runtime=rt, cache=Cache(tmp_path / "cache"), sink=sink,
                     desired=lambda: EdgeDesired(epoch="E", gen=1, items=dict(items)),
                     clock=lambda: 1.0, crashloop=CrashLoop(),
                     volumes=Volumes(tmp_path / "pods"))
    await rec.reconcile_once()
    assert sink.latest[pod_key("shop", "web")].phase == "Running"
    ((image, creds),) = rt.pulled
    assert image == "reg.local:5000/app:1"
    if capable:
        assert creds == RegistryCredentials("reg.local:5000", "edge", "pw")
    else:
        assert creds is None
