"""A fake `edgecore.runtime.types.Runtime` for reconciler unit tests.

It keeps containers in a dict, records every call, and lets a test crash a
container (`exit`) or make starts of an image fail, on an injectable clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from edgecore.runtime.errors import ContainerExists, ContainerRuntimeError
from edgecore.runtime.types import (
    Capabilities,
    ContainerSpec,
    ContainerState,
    ContainerStats,
    validate_cid,
)


@dataclass
class FakeContainer:
    spec: ContainerSpec
    state: ContainerState


@dataclass
class FakeRuntime:
    # What it implements beyond the core: a subclass that adds an operation (images,
    # state_token, stats_all...) declares it by overriding this.
    capabilities: ClassVar[Capabilities] = Capabilities(
        exec=True, stats=True, image_gc=True, log_rotation=True)

    clock: Callable[[], float] = lambda: 0.0
    containers: dict[str, FakeContainer] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)
    fail_images: dict[str, Exception] = field(default_factory=dict)
    list_error: Exception | None = None
    # ExtendedRuntime parts (probes, telemetry, logs): exec answers from `exec_result`,
    # stats from `stats_of`; `rotations` counts rotate_all_logs calls.
    exec_result: Callable[[str, list[str]], tuple[int, bytes, bytes]] = (
        lambda _cid, _argv: (0, b"", b""))
    stats_of: dict[str, ContainerStats] = field(default_factory=dict)
    rotations: list[tuple[int, int]] = field(default_factory=list)

    # Image store: `pull_gate` (if set) holds every pull until set; `pull_errors` are
    # raised by the next pulls, one each; `gc` records its arguments and removes `gc_removes`.
    pull_gate: asyncio.Event | None = None
    pull_errors: list[Exception] = field(default_factory=list)
    gc_calls: list[dict[str, Any]] = field(default_factory=list)
    gc_removes: list[str] = field(default_factory=list)

    async def pull(self, image: str, *, insecure: bool | None = None,
                   policy: str = "IfNotPresent") -> str:
        self.calls.append(("pull", image))
        if self.pull_gate is not None:
            await self.pull_gate.wait()
        if self.pull_errors:
            raise self.pull_errors.pop(0)
        if image in self.fail_images:
            raise self.fail_images[image]
        return "sha256:" + "0" * 64

    async def gc(self, *, keep_refs: set[str], max_age_s: float | None = None,
                 target_free_bytes: int | None = None) -> list[str]:
        self.calls.append(("gc", ""))
        self.gc_calls.append({"keep_refs": set(keep_refs), "max_age_s": max_age_s,
                              "target_free_bytes": target_free_bytes})
        removed, self.gc_removes = self.gc_removes, []
        return removed

    async def run(self, cid: str, spec: ContainerSpec) -> None:
        validate_cid(cid)
        self.calls.append(("run", cid))
        if cid in self.containers:
            raise ContainerExists(f"container {cid} exists")
        if spec.image in self.fail_images:
            raise self.fail_images[spec.image]
        self.containers[cid] = FakeContainer(spec, ContainerState(
            id=cid, status="running", pid=1000 + len(self.calls), exit_code=None,
            started_at=self.clock(), finished_at=None, oom_killed=False,
            annotations=dict(spec.annotations)))

    async def stop(self, cid: str, *, grace_s: float = 10) -> None:
        self.calls.append(("stop", cid))
        self.last_grace = grace_s
        c = self.containers.get(cid)
        if c is not None and c.state.status == "running":
            self.exit(cid, 143)

    async def remove(self, cid: str) -> None:
        self.calls.append(("remove", cid))
        self.containers.pop(cid, None)

    async def list(self) -> list[ContainerState]:
        if self.list_error is not None:
            raise self.list_error
        return [c.state for c in self.containers.values()]

    async def logs(self, cid: str, *, tail: int | None = None) -> bytes:
        return b""

    async def exec(self, cid: str, argv: list[str], *,
                   timeout_s: float = 30) -> tuple[int, bytes, bytes]:
        self.calls.append(("exec", cid))
        return self.exec_result(cid, argv)

    async def stats(self, cid: str) -> ContainerStats | None:
        c = self.containers.get(cid)
        if c is None or c.state.status != "running":
            return None
        return self.stats_of.get(cid)

    async def rotate_logs(self, cid: str, *, max_bytes: int = 0, keep: int = 1) -> bool:
        return False

    async def rotate_all_logs(self, *, max_bytes: int = 0, keep: int = 1) -> list[str]:
        self.rotations.append((max_bytes, keep))
        return []

    # -- test controls -------------------------------------------------------------------

    def exit(self, cid: str, code: int | None, *, oom: bool = False,
             at: float | None = None) -> None:
        """The container's process ends (as conmon would record it)."""
        c = self.containers[cid]
        c.state = replace(c.state, status="stopped", pid=None, exit_code=code, oom_killed=oom,
                          finished_at=self.clock() if at is None else at)

    def adopt(self, cid: str, spec: ContainerSpec, *, started_at: float) -> None:
        """A container that was already running before the agent started."""
        self.containers[cid] = FakeContainer(spec, ContainerState(
            id=cid, status="running", pid=42, exit_code=None, started_at=started_at,
            finished_at=None, oom_killed=False, annotations=dict(spec.annotations)))

    def ops(self, *kinds: str) -> list[tuple[str, str]]:
        return [c for c in self.calls if not kinds or c[0] in kinds]

    def running(self) -> set[str]:
        return {cid for cid, c in self.containers.items() if c.state.status == "running"}


class BrokenList(ContainerRuntimeError):
    pass
