"""Pull progress in pod status with the real runtime: a real agent (offline: its status
reports pile up in its outbox, exactly as they would be sent), a real CrunRuntime
(skopeo copy, umoci unpack, crun), a real docker-registry serving a generated image
with an 8 MiB layer of random bytes, reached through a proxy that forwards at most
2 MiB/s so the pull takes about 5 s on any machine.

Asserts that a report carries the pod Pending/ContainerCreating with a message
"pulling REF: D of T MiB, L of N layers (S s)" where 0 < D < T and T is the size
of the image's layers, that the bytes done never go down, and that the pod then
reports Running.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from edgecore.agent import Agent
from edgecore.cache import Cache
from edgecore.config import AgentSettings
from edgecore.join import remove_pod_network
from edgecore.runtime import CrunRuntime
from shared.codec import Report, decode
from shared.delta import EdgeDesired
from shared.entries import pod_entry, pod_key
from shared.models import Pod
from testbed.registry import LocalRegistry, build_busybox_image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fixtures_runtime import cleanup_root, require_tools

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

LAYER_MIB = 8
RATE = 2 * 2**20  # bytes/s from the registry to skopeo
PROGRESS = re.compile(r"^pulling (\S+): ([\d.]+) of ([\d.]+) MiB, (\d+) of (\d+) layers \(\d+ s\)$")


def _run(argv: list[str]) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def big_image() -> Iterator[tuple[LocalRegistry, str, int]]:
    """A registry with busybox plus a layer of LAYER_MIB random MiB: (registry, ref,
    total compressed layer bytes)."""
    require_tools()
    with LocalRegistry() as reg, tempfile.TemporaryDirectory(prefix="edgefed-big-") as tmp:
        layout = Path(tmp) / "layout"
        build_busybox_image(layout, "big")
        bundle = Path(tmp) / "bundle"
        _run(["umoci", "unpack", "--image", f"{layout}:big", str(bundle)])
        (bundle / "rootfs" / "blob.bin").write_bytes(os.urandom(LAYER_MIB * 2**20))
        _run(["umoci", "repack", "--image", f"{layout}:big", str(bundle)])
        ref = reg.push_oci(layout, "big", "big")
        raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false",
                              f"docker://{ref}"], check=True, capture_output=True).stdout
        total = sum(int(layer["size"]) for layer in json.loads(raw)["layers"])
        yield reg, ref, total


class SlowProxy:
    """TCP proxy to the registry that forwards registry -> client at `rate` bytes/s."""

    def __init__(self, target: str, rate: float) -> None:
        self.host, port = target.rsplit(":", 1)
        self.port = int(port)
        self.rate = rate
        self.address = ""
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> SlowProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.address = f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            ur, uw = await asyncio.open_connection(self.host, self.port)
            await asyncio.gather(self._pipe(cr, uw, None), self._pipe(ur, cw, self.rate))
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            cw.close()
            self._tasks.discard(task)

    @staticmethod
    async def _pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter, rate: float | None) -> None:
        try:
            while data := await r.read(16384):
                w.write(data)
                await w.drain()
                if rate:
                    await asyncio.sleep(len(data) / rate)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                w.close()


@pytest.fixture
async def proxy(big_image: tuple[LocalRegistry, str, int]) -> AsyncIterator[SlowProxy]:
    async with SlowProxy(big_image[0].address, RATE) as p:
        yield p


def _statuses(cache: Cache, key: str) -> list[dict[str, Any]]:
    """The pod's status in every report in the outbox, in seq order."""
    out = []
    for _, payload in cache.outbox():
        msg = decode(payload)
        assert isinstance(msg, Report)
        if (st := msg.pods.get(key)) is not None:
            out.append(st)
    return out


async def test_pull_progress_then_running(big_image: tuple[LocalRegistry, str, int],
                                          proxy: SlowProxy, tmp_path: Path) -> None:
    _, ref, total = big_image
    image = ref.replace(big_image[0].address, proxy.address)
    s = AgentSettings(node="edge-pull", state_dir=tmp_path / "state", mqtt_port=9,
                      reconnect_initial_s=0.05, reconnect_max_s=0.5,
                      insecure_registries=(proxy.address,), pull_report_s=0.3,
                      report_batch_s=0.1, discover_accelerators=False)
    root, cgroup = s.state_dir / "runtime", f"/edgefed-test-{uuid.uuid4().hex[:8]}"
    rt = CrunRuntime(root, insecure_registries=(proxy.address,), cgroup_parent=cgroup)
    pod = Pod.model_validate({"metadata": {"name": "big"}, "spec": {
        "terminationGracePeriodSeconds": 1,
        "containers": [{"name": "main", "image": image, "command": ["sleep", "3600"]}]}})
    key = pod_key("default", "big")
    seed = Cache(s.cache_dir)  # offline from the start: the agent runs what it has cached
    seed.put_desired(EdgeDesired(epoch="E", gen=1, items={key: pod_entry(pod)}))
    seed.close()

    agent = Agent(s, runtime=rt)
    task = asyncio.create_task(agent.run())
    t0 = time.monotonic()
    try:
        await asyncio.wait_for(agent.started.wait(), 10)
        assert agent.cache is not None
        while not any(st.get("phase") == "Running" for st in _statuses(agent.cache, key)):
            assert time.monotonic() - t0 < 40, _statuses(agent.cache, key)
            assert not task.done(), task
            await asyncio.sleep(0.1)
        elapsed = time.monotonic() - t0
        statuses = _statuses(agent.cache, key)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await cleanup_root(root, cgroup)
        await remove_pod_network(s.state_dir)  # the pod's netns outlives its container
        shutil.rmtree(tmp_path / "state", ignore_errors=True)

    seen: list[tuple[float, float, int, int]] = []
    for st in statuses:
        c = st["containerStatuses"][0]
        m = PROGRESS.match(c.get("message") or "")
        if m is None:
            continue
        assert (st["phase"], st["reason"], c["reason"]) == \
            ("Pending", "ContainerCreating", "ContainerCreating")
        assert m.group(1) == image
        done, tot = float(m.group(2)), float(m.group(3))
        assert tot == pytest.approx(total / 2**20, abs=0.06)  # the manifest's layer sizes
        seen.append((done, tot, int(m.group(4)), int(m.group(5))))
    partial = [p for p in seen if 0 < p[0] < p[1]]
    assert partial, f"no report with 0 < done < total in {len(statuses)} reports: " \
                    f"{[s['containerStatuses'][0].get('message') for s in statuses]}"
    assert all(n == 2 for *_, n in seen)  # busybox + the random layer
    assert [p[0] for p in seen] == sorted(p[0] for p in seen)  # done never goes down
    assert statuses[-1]["phase"] == "Running"
    # The throttle made it a real slow pull (about LAYER_MIB / 2 s), and it stayed fast.
    assert total / RATE * 0.8 < elapsed < 30
