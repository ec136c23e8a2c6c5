"""imagePullSecrets end to end on the agent: a pod whose image is in a password-protected
docker-registry (htpasswd) runs on real crun once its kubernetes.io/dockerconfigjson
Secret is on the node, and is ImagePullBackOff (unauthorized) without it."""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from edgecore.runtime import CrunRuntime
from shared.entries import secret_entry, secret_key
from testbed.registry import LocalRegistry, seed_busybox

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fixtures_runtime import cleanup_root, require_tools

from test_edge_workloads_crun import Node, add_pod  # isort: skip

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


@pytest.fixture(scope="module")
def private_registry() -> Iterator[tuple[LocalRegistry, str]]:
    require_tools()
    with LocalRegistry(auth=("edge", "s3cret")) as reg:
        yield reg, seed_busybox(reg, name="private/busybox")


@pytest_asyncio.fixture
async def private_runtime(tmp_path: Path, private_registry: tuple[LocalRegistry, str],
                          ) -> AsyncIterator[CrunRuntime]:
    root, cgroup_parent = tmp_path / "rt", f"/edgefed-test-{uuid.uuid4().hex[:8]}"
    rt = CrunRuntime(root, insecure_registries=(private_registry[0].address,),
                     cgroup_parent=cgroup_parent)
    try:
        yield rt
    finally:
        await cleanup_root(root, cgroup_parent)


async def test_a_pod_pulls_from_a_password_protected_registry(
    private_runtime: CrunRuntime, private_registry: tuple[LocalRegistry, str],
    tmp_path: Path,
) -> None:
    reg, image = private_registry
    node = Node(private_runtime, tmp_path)
    key, _ = add_pod(node, "private", {
        "imagePullSecrets": [{"name": "regcred"}],
        "containers": [{"name": "main", "image": image, "command": ["sleep", "300"]}]})
    task = asyncio.create_task(node.rec.run())
    try:
        # no pull secret on the node (yet): the registry refuses the pull
        await node.until("unauthorized", lambda: (st := node.latest.get(key)) is not None
                         and st.reason == "ImagePullBackOff")
        st = node.latest[key]
        assert st is not None and "unauthorized" in (st.message or "").lower()
        auth = base64.b64encode(b"edge:s3cret").decode()
        node.put(secret_key("default", "regcred"), secret_entry({
            ".dockerconfigjson": json.dumps({"auths": {reg.address: {"auth": auth}}})}))
        node.rec.crashloop = type(node.rec.crashloop)(initial_s=0.2, max_s=0.5)
        await node.until("running", lambda: (st := node.latest.get(key)) is not None
                         and st.phase == "Running", timeout=60)
        assert not list((tmp_path / "rt").glob(".auth-*"))  # the authfile is gone
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        node.cache.close()
