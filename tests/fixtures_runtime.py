"""Shared fixtures for the runtime and registry tests: a real registry, real crun.

Kept out of conftest.py on purpose (other components own those); test modules
import what they use.  Everything here needs root, crun, conmon, skopeo, umoci
and docker-registry; the whole module is skipped if one is missing.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from edgecore.runtime import ContainerSpec, ContainerState, CrunRuntime
from testbed.registry import LocalRegistry, seed_busybox

TOOLS = ("crun", "conmon", "skopeo", "umoci", "docker-registry", "busybox", "unshare")


def require_tools() -> None:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing or os.geteuid() != 0:
        pytest.skip(f"needs root and {', '.join(missing) or 'nothing else'}")


@dataclass(frozen=True)
class SeededRegistry:
    registry: LocalRegistry
    busybox: str  # image reference, e.g. 127.0.0.1:PORT/busybox:latest


@pytest.fixture(scope="session")
def seeded_registry() -> Iterator[SeededRegistry]:
    """One docker-registry with the umoci-built busybox image, for the whole session."""
    require_tools()
    with LocalRegistry() as reg:
        yield SeededRegistry(reg, seed_busybox(reg))


async def state_of(rt: CrunRuntime, cid: str) -> ContainerState | None:
    return next((s for s in await rt.list() if s.id == cid), None)


async def wait_state(
    rt: CrunRuntime, cid: str, pred: Callable[[ContainerState], bool], timeout: float = 10.0
) -> ContainerState:
    """Poll until `pred` holds for container `cid`, or fail naming its last state."""
    deadline = time.monotonic() + timeout
    while True:
        st = await state_of(rt, cid)
        if st is not None and pred(st):
            return st
        if time.monotonic() > deadline:
            raise AssertionError(f"{cid}: condition not met within {timeout} s, last state {st}")
        await asyncio.sleep(0.05)


def stopped(st: ContainerState) -> bool:
    return st.status == "stopped" and st.exit_code is not None


def spec(image: str, name: str, *command: str, **kw: object) -> ContainerSpec:
    return ContainerSpec(name=name, image=image, command=list(command), **kw)  # type: ignore[arg-type]


def conmon_pids(root: Path) -> list[int]:
    """Live (non-zombie) conmon processes working under ``root``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[-1].split()[0]
        except OSError:
            continue
        if (
            b"conmon" in cmdline.split(b"\0", 1)[0]
            and str(root).encode() in cmdline
            and state != "Z"
        ):
            pids.append(int(entry.name))
    return pids


async def cleanup_root(root: Path, cgroup_parent: str) -> None:
    """Remove every container under ``root`` and the test's cgroup parent."""
    rt = CrunRuntime(root, cgroup_parent=cgroup_parent)
    for state in await rt.list():
        await rt.remove(state.id)
    for _ in range(100):
        if not conmon_pids(root):
            break
        await asyncio.sleep(0.05)
    leftover = conmon_pids(root)
    for controller in Path("/sys/fs/cgroup").iterdir():
        cg = controller / cgroup_parent.lstrip("/")
        if cg.is_dir():
            try:
                cg.rmdir()
            except OSError:
                pass
    assert not leftover, f"conmon processes left behind: {leftover}"


@pytest_asyncio.fixture
async def runtime(tmp_path: Path, seeded_registry: SeededRegistry) -> AsyncIterator[CrunRuntime]:
    """A CrunRuntime on a fresh root; every container is removed afterwards."""
    root = tmp_path / "rt"
    cgroup_parent = f"/edgefed-test-{uuid.uuid4().hex[:8]}"
    rt = CrunRuntime(
        root,
        insecure_registries=(seeded_registry.registry.address,),
        cgroup_parent=cgroup_parent,
    )
    try:
        yield rt
    finally:
        await cleanup_root(root, cgroup_parent)
