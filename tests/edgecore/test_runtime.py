"""Integration tests of edgecore.runtime on the real host: crun, conmon, skopeo, umoci.

No mocks: every test pulls from a local docker-registry and runs real
containers; the ``runtime`` fixture removes them all and checks that no conmon
is left behind.
"""

# ruff: noqa: F811  (pytest fixtures imported from fixtures_runtime are parameters here)
from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from edgecore.runtime import (
    ContainerExists,
    ContainerNotFound,
    ContainerSpec,
    ContainerStartError,
    CrunRuntime,
    ImagePullError,
    InvalidSpec,
    Runtime,
    RuntimePermanentError,
    RuntimeTemporaryError,
    detect_hybrid_cgroups,
)
from edgecore.runtime.crun import parse_k8s_log

# tests/ is not a package (and gmqtt installs a top-level "tests" package into
# site-packages), so the shared fixtures module is imported by path.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fixtures_runtime import (  # noqa: F401  (fixtures are used by name)
    SeededRegistry,
    cleanup_root,
    conmon_pids,
    require_tools,
    runtime,
    seeded_registry,
    spec,
    state_of,
    stopped,
    wait_state,
)

from testbed.ports import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

REPO = Path(__file__).resolve().parents[2]




# -- pure helpers ---------------------------------------------------------------


def test_detect_hybrid_from_mountinfo() -> None:
    hybrid = (
        "30 24 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n"
        "31 30 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n"
        "32 30 0:28 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
    )
    unified = "30 24 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
    legacy = "30 24 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n"
    assert detect_hybrid_cgroups(hybrid)
    assert not detect_hybrid_cgroups(unified)
    assert not detect_hybrid_cgroups(legacy)


def test_parse_k8s_log_reassembles_partial_lines() -> None:
    raw = (
        b"2024-01-01T00:00:00.1+00:00 stdout P hel\n"
        b"2024-01-01T00:00:00.2+00:00 stdout F lo\n"
        b"2024-01-01T00:00:00.3+00:00 stderr F oops\n"
        b"2024-01-01T00:00:00.4+00:00 stdout F \n"
    )
    assert parse_k8s_log(raw) == b"hello\noops\n\n"


def test_spec_validation_is_permanent() -> None:
    with pytest.raises(InvalidSpec, match="name"):
        ContainerSpec(name="Bad_Name", image="x")
    with pytest.raises(InvalidSpec, match="memory_limit_bytes"):
        ContainerSpec(name="ok", image="x", memory_limit_bytes=10)
    with pytest.raises(InvalidSpec, match="command"):
        ContainerSpec(name="ok", image="x", command="sh -c true")  # type: ignore[arg-type]
    s = ContainerSpec(name="ok", image="x", command=["a"], env={"A": "1"})
    assert s.command == ("a",)
    assert hash(s) == hash(ContainerSpec(name="ok", image="x", command=("a",), env={"A": "1"}))
    assert issubclass(InvalidSpec, RuntimePermanentError)
    assert issubclass(ImagePullError, RuntimeTemporaryError)


# -- real containers --------------------------------------------------------------


@pytest.mark.asyncio
async def test_runtime_satisfies_protocol(runtime: CrunRuntime) -> None:
    assert isinstance(runtime, Runtime)
    assert runtime.hybrid_cgroups == detect_hybrid_cgroups()


@pytest.mark.asyncio
async def test_pull_once_shared_by_two_containers(
    runtime: CrunRuntime, seeded_registry: SeededRegistry
) -> None:
    ref = seeded_registry.busybox
    digest = await runtime.pull(ref)
    assert digest.startswith("sha256:")
    blobs = runtime.image_store.blob_count()
    index = runtime.root / "images" / "index.json"
    mtime = index.stat().st_mtime_ns
    assert await runtime.pull(ref) == digest  # IfNotPresent: no second copy

    await runtime.run("a", spec(ref, "a", "sleep", "30"))
    await runtime.run("b", spec(ref, "b", "sleep", "30"))
    assert runtime.image_store.blob_count() == blobs
    assert index.stat().st_mtime_ns == mtime
    assert len(json.loads(index.read_text())["manifests"]) == 1
    assert len(list((runtime.root / "rootfs-cache").iterdir())) == 1
    states = {s.id: s for s in await runtime.list()}
    assert states["a"].status == states["b"].status == "running"
    assert states["a"].pid != states["b"].pid
    with pytest.raises(ContainerExists):
        await runtime.run("a", spec(ref, "a", "true"))


@pytest.mark.asyncio
async def test_run_list_annotations_and_exit_codes(
    runtime: CrunRuntime, seeded_registry: SeededRegistry
) -> None:
    ref = seeded_registry.busybox
    ann = {"edgefed.io/pod": "default/web", "edgefed.io/spec-hash": "abc123"}
    before = time.time()
    await runtime.run("ok", spec(ref, "ok", "sh", "-c", "sleep 0.2; exit 0", annotations=ann))
    await runtime.run("bad", spec(ref, "bad", "sh", "-c", "sleep 0.2; exit 3", annotations=ann))
    running = await state_of(runtime, "ok")
    assert running is not None and running.status == "running" and running.pid
    assert running.exit_code is None
    ok = await wait_state(runtime, "ok", stopped)
    bad = await wait_state(runtime, "bad", stopped)
    assert (ok.exit_code, bad.exit_code) == (0, 3)
    assert not ok.oom_killed and not bad.oom_killed
    assert ok.pid is None
    for st in (ok, bad):
        assert st.annotations["edgefed.io/pod"] == "default/web"
        assert st.annotations["edgefed.io/spec-hash"] == "abc123"
        assert st.started_at is not None and st.finished_at is not None
        assert before <= st.started_at <= st.finished_at <= time.time() + 1


@pytest.mark.asyncio
async def test_oom_kill_is_reported(runtime: CrunRuntime, seeded_registry: SeededRegistry) -> None:
    # tail buffers its whole input when it sees no newline: a memory hog in one line.
    hog = "head -c 200000000 /dev/zero | tail > /dev/null"
    await runtime.run(
        "hog", spec(seeded_registry.busybox, "hog", "sh", "-c", hog, memory_limit_bytes=16 << 20)
    )
    st = await wait_state(runtime, "hog", stopped, timeout=20)
    assert st.oom_killed
    assert st.exit_code == 137


@pytest.mark.asyncio
async def test_limits_reach_the_cgroup(
    runtime: CrunRuntime, seeded_registry: SeededRegistry
) -> None:
    if not runtime.hybrid_cgroups and Path("/sys/fs/cgroup/cgroup.controllers").exists():
        files = "memory.max pids.max cpu.max"
    else:
        files = (
            "memory/memory.limit_in_bytes pids/pids.max cpu/cpu.cfs_quota_us cpu/cpu.cfs_period_us"
        )
    script = "cd /sys/fs/cgroup && for f in " + files + "; do cat $f; done"
    await runtime.run(
        "lim",
        spec(
            seeded_registry.busybox, "lim", "sh", "-c", script,
            memory_limit_bytes=64 << 20, cpu_limit_millis=250, pids_limit=32,
        ),
    )  # fmt: skip
    st = await wait_state(runtime, "lim", stopped)
    out = (await runtime.logs("lim")).decode().split()
    assert st.exit_code == 0, out
    if "cpu.max" in files:
        assert out == [str(64 << 20), "32", "25000", "100000"]
    else:
        assert out == [str(64 << 20), "32", "25000", "100000"]


@pytest.mark.asyncio
async def test_pids_limit_is_enforced(
    runtime: CrunRuntime, seeded_registry: SeededRegistry
) -> None:
    script = "for i in 1 2 3 4 5 6 7 8 9 10; do sleep 5 & done; wait; echo survived"
    await runtime.run(
        "pids", spec(seeded_registry.busybox, "pids", "sh", "-c", script, pids_limit=4)
    )
    await wait_state(runtime, "pids", stopped, timeout=15)
    logs = await runtime.logs("pids")
    assert b"can't fork" in logs or b"Resource temporarily unavailable" in logs, logs


@pytest.mark.asyncio
async def test_logs_stdout_stderr_survive_new_runtime(
    runtime: CrunRuntime, seeded_registry: SeededRegistry
) -> None:
    script = "echo line1; echo err1 >&2; printf partial; echo; echo line3"
    await runtime.run("log", spec(seeded_registry.busybox, "log", "sh", "-c", script))
    await wait_state(runtime, "log", stopped)
    logs = await runtime.logs("log")
    # stdout and stderr are two pipes: their relative order is not guaranteed.
    assert sorted(logs.splitlines()) == [b"err1", b"line1", b"line3", b"partial"]
    assert [ln for ln in logs.splitlines() if ln != b"err1"] == [b"line1", b"partial", b"line3"]
    again = CrunRuntime(runtime.root, cgroup_parent=runtime._cgroup_parent)
    assert await again.logs("log") == logs
    assert await again.logs("log", tail=2) == b"".join(logs.splitlines(keepends=True)[-2:])
    assert await again.logs("log", tail=0) == b""
    st = await state_of(again, "log")
    assert st is not None and st.exit_code == 0
    with pytest.raises(ContainerNotFound):
        await again.logs("never-was")


CHILD_AGENT = """
import asyncio, json, sys
from pathlib import Path
from edgecore.runtime import CrunRuntime, ContainerSpec

async def main() -> None:
    root, image, registry, cgroup_parent = sys.argv[1:5]
    rt = CrunRuntime(Path(root), insecure_registries=(registry,), cgroup_parent=cgroup_parent)
    await rt.run("long", ContainerSpec(name="long", image=image, command=["sleep", "60"],
                                       annotations={"edgefed.io/pod": "default/long"}))
    await rt.run("short", ContainerSpec(name="short", image=image,
                                        command=["sh", "-c", "sleep 1; echo bye; exit 7"]))
    pids = {s.id: s.pid for s in await rt.list()}
    print(json.dumps(pids), flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


@pytest.mark.asyncio
async def test_containers_outlive_a_killed_agent(
    runtime: CrunRuntime, seeded_registry: SeededRegistry
) -> None:
    agent = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD_AGENT, str(runtime.root), seeded_registry.busybox,
        seeded_registry.registry.address, runtime._cgroup_parent,
        stdout=asyncio.subprocess.PIPE, cwd=REPO, start_new_session=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert agent.stdout is not None
    line = await asyncio.wait_for(agent.stdout.readline(), 30)
    pids = json.loads(line)
    # kill -9 the agent's whole process group, as a crash or OOM of the agent would.
    os.killpg(agent.pid, signal.SIGKILL)
    await agent.wait()

    adopted = CrunRuntime(runtime.root, cgroup_parent=runtime._cgroup_parent)
    long = await state_of(adopted, "long")
    assert long is not None and long.status == "running"
    assert long.pid == pids["long"]
    assert long.annotations["edgefed.io/pod"] == "default/long"
    assert conmon_pids(runtime.root), "conmon died with the agent"
    # "short" exits while no agent is running; its monitor records the status.
    short = await wait_state(adopted, "short", stopped)
    assert short.exit_code == 7
    assert await adopted.logs("short") == b"bye\n"
    await adopted.stop("long", grace_s=0)
    assert (await wait_state(adopted, "long", stopped)).exit_code == 137


@pytest.mark.asyncio
async def test_stop_escalates_to_sigkill(
    runtime: CrunRuntime, seeded_registry: SeededRegistry
) -> None:
    ref = seeded_registry.busybox
    stubborn = 'trap "" TERM; while true; do sleep 0.1; done'
    polite = 'trap "exit 42" TERM; while true; do sleep 0.1; done'
    await runtime.run("stubborn", spec(ref, "stubborn", "sh", "-c", stubborn))
    await runtime.run("polite", spec(ref, "polite", "sh", "-c", polite))
    await asyncio.sleep(0.3)  # let the shells install their traps

    t0 = time.monotonic()
    await runtime.stop("polite", grace_s=30)
    assert time.monotonic() - t0 < 15  # returned when it exited, not at the grace's end
    assert (await state_of(runtime, "polite")).exit_code == 42  # type: ignore[union-attr]

    t0 = time.monotonic()
    await runtime.stop("stubborn", grace_s=1)
    took = time.monotonic() - t0
    assert 0.9 < took < 15  # waited its grace, then SIGKILL
    st = await state_of(runtime, "stubborn")
    assert st is not None and st.status == "stopped" and st.exit_code == 137
    await runtime.stop("stubborn")  # already stopped: no-op
    with pytest.raises(ContainerNotFound):
        await runtime.stop("nope")


@pytest.mark.asyncio
async def test_remove_is_idempotent(runtime: CrunRuntime, seeded_registry: SeededRegistry) -> None:
    await runtime.run("gone", spec(seeded_registry.busybox, "gone", "sleep", "30"))
    assert conmon_pids(runtime.root)
    await runtime.remove("gone")
    assert await state_of(runtime, "gone") is None
    assert not (runtime.root / "bundles" / "gone").exists()
    assert not (runtime.root / "exits" / "gone").exists()
    assert not (runtime.root / "logs" / "gone.log").exists()
    assert not conmon_pids(runtime.root)
    await runtime.remove("gone")
    await runtime.remove("never-existed")
    # the id can be reused
    await runtime.run("gone", spec(seeded_registry.busybox, "gone", "true"))
    assert (await wait_state(runtime, "gone", stopped)).exit_code == 0


@pytest.mark.asyncio
async def test_httpd_reachable_on_host_network(
    runtime: CrunRuntime, seeded_registry: SeededRegistry
) -> None:
    port = free_port()
    await runtime.run(
        "web",
        spec(
            seeded_registry.busybox, "web", "httpd", "-f", "-p", f"127.0.0.1:{port}", "-h", "/www"
        ),
    )

    def fetch() -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=2) as resp:
            body: bytes = resp.read()
            return body

    deadline = time.monotonic() + 10
    while True:
        try:
            body = await asyncio.to_thread(fetch)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)
    assert b"hello from edgefed" in body
    st = await state_of(runtime, "web")
    assert st is not None and st.status == "running"


@pytest.mark.asyncio
async def test_errors_are_classified(runtime: CrunRuntime, seeded_registry: SeededRegistry) -> None:
    with pytest.raises(InvalidSpec, match="container id"):
        await runtime.run("../evil", spec(seeded_registry.busybox, "x", "true"))
    missing = f"{seeded_registry.registry.address}/does-not-exist:latest"
    with pytest.raises(ImagePullError, match="does-not-exist"):
        await runtime.pull(missing)
    with pytest.raises(ContainerStartError, match="no-such-binary"):
        await runtime.run("nobin", spec(seeded_registry.busybox, "nobin", "/no-such-binary"))
    assert await state_of(runtime, "nobin") is None  # a failed run leaves nothing behind
    assert not (runtime.root / "bundles" / "nobin").exists()


@pytest.mark.asyncio
async def test_run_reuses_the_pulled_image_and_its_rootfs(
    runtime: CrunRuntime, seeded_registry: SeededRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once pulled and unpacked, run() neither pulls nor unpacks again (no skopeo or
    umoci). How fast a start is belongs to a benchmark, not a test (issue 16):
    `python -m testbed.bench_edge` prints it beside a bare `crun run`."""
    await runtime.pull(seeded_registry.busybox)
    await runtime.run("warm", spec(seeded_registry.busybox, "warm", "true"))
    cache = sorted((runtime.root / "rootfs-cache").iterdir())

    async def no_tool(*args: object, **kw: object) -> None:
        raise AssertionError(f"run() called an image tool again: {args}")

    monkeypatch.setattr(runtime.image_store, "_run_tool", no_tool)
    await runtime.run("fast", spec(seeded_registry.busybox, "fast", "sleep", "10"))
    st = await state_of(runtime, "fast")
    assert st is not None and st.status == "running"
    assert sorted((runtime.root / "rootfs-cache").iterdir()) == cache
