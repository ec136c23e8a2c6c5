"""Tests of testbed.registry against the real docker-registry, umoci and skopeo."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from testbed.registry import APPLETS, LocalRegistry, build_busybox_image, seed_busybox

# tests/ is not a package (and gmqtt installs a top-level "tests" package), so
# the shared fixtures module is imported by path.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fixtures_runtime import require_tools

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.fixture(autouse=True)
def _tools() -> None:
    require_tools()


def test_build_busybox_image(tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    build_busybox_image(layout, "v1")
    index = json.loads((layout / "index.json").read_text())
    tags = [m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"]]
    assert tags == ["v1"]
    bundle = tmp_path / "bundle"
    subprocess.run(
        ["umoci", "unpack", "--image", f"{layout}:v1", str(bundle)], check=True, capture_output=True
    )
    rootfs = bundle / "rootfs"
    assert (rootfs / "bin" / "busybox").is_file()
    for applet in ("sh", "httpd", "wget", "sleep", "cat", "echo", "ls", "env", "id", "true",
                   "false", "head", "dd", "mkdir"):  # fmt: skip
        assert applet in APPLETS
        assert (rootfs / "bin" / applet).resolve() == (rootfs / "bin" / "busybox").resolve()
    assert "hello from edgefed" in (rootfs / "www" / "index.html").read_text()
    config = json.loads((bundle / "config.json").read_text())
    assert config["process"]["args"] == ["sh"]


def test_local_registry_push_and_stop(tmp_path: Path) -> None:
    with LocalRegistry() as reg:
        host, _, port = reg.address.partition(":")
        assert host == "127.0.0.1" and port.isdigit()
        with urllib.request.urlopen(f"{reg.url}/v2/", timeout=2) as resp:
            assert resp.status == 200
        ref = seed_busybox(reg)
        assert ref == f"{reg.address}/busybox:latest"
        with urllib.request.urlopen(f"{reg.url}/v2/busybox/tags/list", timeout=2) as resp:
            assert json.loads(resp.read())["tags"] == ["latest"]
        inspect = subprocess.run(
            ["skopeo", "inspect", "--tls-verify=false", f"docker://{ref}"],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        assert json.loads(inspect.stdout)["Architecture"]
        url = reg.url
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{url}/v2/", timeout=1)


@pytest.mark.asyncio
async def test_local_registry_async_context() -> None:
    async with LocalRegistry() as reg:
        assert reg.address.startswith("127.0.0.1:")
    assert reg._proc is None
