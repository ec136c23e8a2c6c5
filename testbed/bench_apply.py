"""Benchmark: DaemonSet applies over N registered nodes, as the cloud's API runs them:
memory, apply time and the worst event-loop lag while they run (issue 13).

    python -m testbed.bench_apply [--nodes 100000] [--daemonsets 1,10] [--runs 1]
        [--tree [LABEL=]DIR ...] [--log-dir DIR]

Each measurement runs in a fresh interpreter (a subprocess, started when the machine's
1-minute load average is below `--quiet-load`, or after `--quiet-wait` seconds anyway)
over its own LMDB store in a temporary directory:

1. build a `Fleet` as the tests and the old bench do (`Fleet(store=, scheduler=,
   liveness=)`; where the tree's service builds it with `background=True` and runs
   its `run(settle=...)` task, so does the bench, with the service's settle: the
   store's flush, then `freeze_survivors` where the tree has it), set cloudcore's collector
   settings (`cloudcore.service.tune_gc`, as the binary does once started) and
   register N Ready nodes with capacity, labels and arch (`register_node`,
   `node_status`, `mark_ready`), as agents leave them;
2. start a lag monitor in the same asyncio loop (uvloop when installed, as the binary):
   a 10 ms timer that records how late it fires;
3. apply K DaemonSets one after another, each as the API's apply handler does
   (`fleet.apply([ds])` inside a coroutine, then `await flush`); an apply counts as
   done when every node's desired set (`desired_for(node).values()`) holds the
   DaemonSet's pod and the store has committed (so expansion that continues in the
   background after `apply` returns is waited for, polled in small slices that
   cost the loop little);
4. print RSS (VmRSS after a 2 s settle, its anonymous and file-mapped parts, and the
   peak VmHWM), per-apply wall and CPU
   time, how long the `apply` call itself held the loop, the lag monitor's worst
   and 99th-percentile lateness during the applies, the collector's worst pause
   per generation during them (gc.callbacks: how much of the lag is the collector's),
   and the loop thread's CPU time per expansion slice (expand, then commit) and per
   store batch built on the loop: what would hold the loop on an idle machine, which
   the wall-clock lag shows only on a quiet one; and the latest-firing timers, each
   with the steps of over 5 ms CPU that ran while it was due (slice, store batch,
   rollout tick, apply call, a collection): which step held the loop.

`--tree DIR` runs the measuring subprocess with `PYTHONPATH=DIR` (and `PYTHONSAFEPATH=1`,
so the working directory cannot shadow it): `git archive OLD | tar -x -C /tmp/before`
then `--tree before=/tmp/before --tree after=.` measures the old and the new code
alternately in one sitting. The measuring part (`_measure`) uses only names both trees
offer and imports nothing from `testbed`, which the old tree may not have.

A subprocess whose RSS passes `--max-rss-gb`, or that leaves the machine less than
2 GB available, is killed (the machine is shared) and reported as over the limit with
the figures it reached. Prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cloudcore.fleet import Fleet
    from cloudcore.store import Store

ROOT = Path(__file__).resolve().parent.parent
"""The checkout this file is in: the default tree."""

LAG_TICK = 0.010


# --- helpers shared with testbed.bench_list (current tree only) ----------------------


async def register_nodes(fleet: Fleet, store: Store, nodes: int) -> None:
    """`nodes` Ready nodes with capacity, labels and arch, as agents leave them."""
    for i in range(nodes):
        name = f"edge-{i:06d}"
        fleet.register_node(name)
        fleet.node_status(name, {
            "allocatable": {"cpu": 4000, "memory": 8 << 30, "pods": 110},
            "capacity": {"cpu": 4000, "memory": 8 << 30, "pods": 110},
            "arch": "arm64" if i % 3 else "amd64", "agentVersion": "0.1.0",
            "labels": {"zone": f"z{i % 50}", "site": f"shop-{i % 1000}"},
            "heartbeat": 30})
        fleet.mark_ready(name)
        if i % 5000 == 4999:
            await store.flush()
    await store.flush()


def _service_style(fleet_cls: type) -> bool:
    """Whether this tree's service builds its Fleet with `background=True` and runs its
    `run(settle=store.flush)` task (DaemonSet expansion in slices, issue 13); the
    trees before that have neither, and their service applies in the call."""
    import inspect

    return ("background" in inspect.signature(fleet_cls).parameters
            and callable(getattr(fleet_cls, "run", None)))


def _settle_of(store: Store) -> Any:
    """What the tree's service awaits after each expansion slice: the store's flush,
    then, where the tree has it, `freeze_survivors` (the collector freeze between
    slices, which acts only in a process tuned by `tune_gc`, as the bench's is)."""
    from cloudcore import service

    freeze = getattr(service, "freeze_survivors", None)  # trees before it have none
    if freeze is None:
        return store.flush

    async def settle() -> None:
        await store.flush()
        freeze()

    return settle


@contextlib.asynccontextmanager
async def bench_fleet(prefix: str) -> AsyncIterator[tuple[Fleet, Store, Path]]:
    """A Fleet over its own LMDB store in a temporary directory (also yielded), with the
    store's writer running until the block ends, built and run as this tree's
    `cloudcore/service.py` does (`_service_style`)."""
    from cloudcore.config import StoreSettings
    from cloudcore.fleet import Fleet, Liveness
    from cloudcore.scheduler import Scheduler
    from cloudcore.store import Store

    background = _service_style(Fleet)
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        async with Store(StoreSettings(state_dir=Path(tmp) / "s", batch_max_ops=50_000)) as store:
            tasks = [asyncio.create_task(store.run())]
            liveness = Liveness(default_heartbeat=30, missed=3, now=0)
            if background:
                fleet = Fleet(store=store, scheduler=Scheduler(), liveness=liveness,
                              background=True)
                tasks.append(asyncio.create_task(fleet.run(settle=_settle_of(store))))
            else:
                fleet = Fleet(store=store, scheduler=Scheduler(), liveness=liveness)
            try:
                yield fleet, store, Path(tmp)
            finally:
                for task in reversed(tasks):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task


# --- the measuring subprocess ---------------------------------------------------------


def _mem() -> dict[str, int]:
    """VmRSS and VmHWM of this process, and VmRSS's two parts: RssAnon (the process's
    own memory: the Python heap) and RssFile (file pages mapped in it: mostly the
    LMDB store's map, page cache the kernel may drop), bytes."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = int(rest.split()[0]) * 1024
    return out


def _loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def _emit(kind: str, data: dict[str, Any]) -> None:
    print(f"{kind} {json.dumps(data)}", flush=True)


def _ds_doc(index: int) -> dict[str, Any]:
    name = f"ds{index}"
    return {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": name},
            "spec": {"template": {"metadata": {"labels": {"app": name}}, "spec": {
                "containers": [{"name": "c", "image": "busybox",
                                "args": ["sleep", "3600"]}]}}}}


class _LagMonitor:
    """A timer every LAG_TICK seconds; records how late each one fires (seconds)."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self.late: list[tuple[float, float]] = []
        """(perf_counter when the timer was due, how late) of the timers over 25 ms."""
        self.recording = False

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t = loop.time()
            await asyncio.sleep(LAG_TICK)
            if self.recording:
                lag = max(0.0, loop.time() - t - LAG_TICK)
                self.samples.append(lag)
                if lag > 0.025:
                    self.late.append((time.perf_counter() - lag, lag))


class _GcPauses:
    """The collector's pauses while `recording`, per generation (gc.callbacks): how
    much of the loop lag is the collector's."""

    def __init__(self) -> None:
        self.recording = False
        self.worst = [0.0, 0.0, 0.0]
        self.total = [0.0, 0.0, 0.0]
        self.count = [0, 0, 0]
        self.spans: list[tuple[str, float, float, float]] = []
        """(what, start, end, CPU) of the collections over 5 ms (`_SliceCpu.spans`)."""
        self._t = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._t = time.perf_counter()
        elif self.recording:
            gen, pause = info["generation"], time.perf_counter() - self._t
            if pause > 0.005:
                self.spans.append((f"gc{gen}", self._t, self._t + pause, pause))
            self.worst[gen] = max(self.worst[gen], pause)
            self.total[gen] += pause
            self.count[gen] += 1

    def summary(self) -> dict[str, Any]:
        return {f"gen{g}": {"n": self.count[g], "worst_ms": round(self.worst[g] * 1000, 1),
                            "total_s": round(self.total[g], 2)} for g in range(3)}


class _SliceCpu:
    """CPU time (of the event loop's thread) of each expansion slice, from the start of
    `Workloads.expand_slice` to the end of the `commit` after it, and of each store
    batch built on the loop (`Store._take`): what holds the loop on an idle machine,
    whatever the load of a shared one does to the wall-clock lag. Wraps those methods of
    the tree under test where it has them."""

    def __init__(self) -> None:
        self.recording = False
        self.slices: list[float] = []
        self.takes: list[float] = []
        self.spans: list[tuple[str, float, float, float]] = []
        """(what, start, end, CPU of the loop's thread) of every step over 5 ms: an
        expansion slice (expand + commit), a store batch, a rollout tick, an apply
        call; set beside the lag monitor's late timers (`worst_stretches`)."""
        self._t0: float | None = None
        self._w0 = 0.0
        self._parts: dict[str, float] = {}

    def install(self) -> None:
        from cloudcore.fleet import Fleet
        from cloudcore.store import Store

        try:
            from cloudcore.fleet.workloads import Workloads
        except ImportError:  # a tree before the fleet's parts
            return
        me = self
        expand, commit, take = Workloads.expand_slice, Fleet.commit, Store._take

        def span(what: str, w0: float, c0: float) -> float:
            cpu = time.thread_time() - c0
            if me.recording and cpu > 0.005:
                me.spans.append((what, w0, time.perf_counter(), cpu))
            return cpu

        def part(what: str, inner: Any) -> Any:
            """`inner` timed as a part of the slice under way (`_parts`)."""
            def wrapper(self: Any, *a: Any, **k: Any) -> Any:
                c = time.thread_time()
                try:
                    return inner(self, *a, **k)
                finally:
                    if me._t0 is not None:
                        me._parts[what] = me._parts.get(what, 0.0) + time.thread_time() - c
            return wrapper

        def expand_slice(self: Any, *a: Any, **k: Any) -> Any:
            if me._t0 is None:
                me._t0, me._w0 = time.thread_time(), time.perf_counter()
                me._parts = {}
            return timed_expand(self, *a, **k)

        timed_expand = part("expand", expand)

        def fleet_commit(self: Any, *a: Any, **k: Any) -> Any:
            w, c = time.perf_counter(), time.thread_time()
            try:
                return commit(self, *a, **k)
            finally:
                if me._t0 is not None:
                    label = "slice (" + " ".join(
                        f"{k} {1000 * v:.0f}" for k, v in me._parts.items()) + ")"
                    cpu = span(label, me._w0, me._t0)
                    if me.recording:
                        me.slices.append(cpu)
                    me._t0 = None
                else:
                    span("commit", w, c)

        def store_take(self: Any) -> Any:
            w, t = time.perf_counter(), time.thread_time()
            try:
                return take(self)
            finally:
                cpu = span("store_batch", w, t)
                if me.recording:
                    me.takes.append(cpu)

        def timed(cls: Any, name: str, what: str) -> None:
            inner = getattr(cls, name)

            def wrapper(self: Any, *a: Any, **k: Any) -> Any:
                w, c = time.perf_counter(), time.thread_time()
                try:
                    return inner(self, *a, **k)
                finally:
                    span(what, w, c)

            setattr(cls, name, wrapper)

        Workloads.expand_slice = expand_slice  # type: ignore[method-assign]
        if hasattr(Fleet, "_retry"):  # the slice's parts: pending retry, desired commit
            Fleet._retry = part("retry", Fleet._retry)  # type: ignore[attr-defined]
        from cloudcore.fleet.desired import DesiredSets
        DesiredSets.commit = part("desired", DesiredSets.commit)  # type: ignore[method-assign]
        Fleet.commit = fleet_commit  # type: ignore[method-assign]
        Store._take = store_take  # type: ignore[method-assign]
        timed(Fleet, "apply", "apply_call")
        try:
            from cloudcore.fleet.rollout import Rollouts
        except ImportError:
            return
        timed(Rollouts, "tick", "rollout_tick")

    def summary(self) -> dict[str, Any]:
        def ms(xs: list[float]) -> dict[str, Any]:
            xs = sorted(xs)
            if not xs:
                return {"n": 0}
            return {"n": len(xs), "p50_ms": round(xs[len(xs) // 2] * 1000, 1),
                    "p99_ms": round(xs[min(len(xs) - 1, int(len(xs) * 0.99))] * 1000, 1),
                    "max_ms": round(xs[-1] * 1000, 1)}

        return {"slice": ms(self.slices), "store_take": ms(self.takes)}


def worst_stretches(late: list[tuple[float, float]],
                    spans: list[tuple[str, float, float, float]],
                    n: int = 8) -> list[dict[str, Any]]:
    """The `n` latest-firing timers, each with the steps that ran while it was due
    (what, wall ms, CPU ms): which step held the loop."""
    out = []
    for due, lag in sorted(late, key=lambda x: -x[1])[:n]:
        held = [f"{what} {1000 * (end - start):.0f}/{1000 * cpu:.0f}"
                for what, start, end, cpu in spans if start < due + lag and end > due]
        out.append({"lag_ms": round(lag * 1000, 1), "steps (wall/cpu ms)": held})
    return out


async def _expanded(fleet: Any, names: list[str], key_prefix: str) -> None:
    """Until every node's desired set holds a key starting with `key_prefix`: checked
    in slices of 500 nodes with a loop turn between, so the check itself holds the
    loop only a few ms; a node once done is not checked again."""
    i = 0
    while i < len(names):
        end = min(i + 500, len(names))
        while i < end:
            if not any(k.startswith(key_prefix) for k in fleet.desired_for(names[i]).items):
                break
            i += 1
        await asyncio.sleep(0 if i == end else LAG_TICK)


async def _measure(nodes: int, daemonsets: int, settle: float = 2.0) -> None:
    import gc

    from cloudcore.fleet import Fleet
    from cloudcore.service import tune_gc
    from shared.models import parse_object

    t_start = time.perf_counter()
    mem0 = _mem()
    background = _service_style(Fleet)
    loop_cpu = _SliceCpu()
    loop_cpu.install()
    async with bench_fleet("bench-apply-") as (fleet, store, _):
        tune_gc()  # as the cloudcore binary does once started, before agents connect
        t = time.perf_counter()
        await register_nodes(fleet, store, nodes)
        register_s = time.perf_counter() - t
        await asyncio.sleep(settle)
        mem_nodes = _mem()
        _emit("PROGRESS", {"stage": "nodes", "register_s": round(register_s, 2),
                           "rss": mem_nodes["VmRSS"], "background_expansion": background})
        names = [f"edge-{i:06d}" for i in range(nodes)]
        monitor = _LagMonitor()
        pauses = _GcPauses()
        gc.callbacks.append(pauses)
        lag_task = asyncio.create_task(monitor.run())
        await asyncio.sleep(0.5)
        applies: list[dict[str, Any]] = []
        lags: list[float] = []
        late: list[tuple[float, float]] = []
        for k in range(daemonsets):
            ds = parse_object(_ds_doc(k))
            await asyncio.sleep(settle / 4)  # a quiet loop before each apply
            monitor.samples = []
            monitor.recording = pauses.recording = loop_cpu.recording = True
            load = _loadavg()
            t0, c0 = time.perf_counter(), time.process_time()
            fleet.apply([ds])  # the API's apply handler, then its `await flush()`
            held = time.perf_counter() - t0
            await store.flush()
            t_call = time.perf_counter() - t0
            await _expanded(fleet, names, f"pod/default/ds{k}-")
            await store.flush()
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            await asyncio.sleep(0.05)  # the timer that was due during the last hold fires
            monitor.recording = pauses.recording = loop_cpu.recording = False
            samples = monitor.samples
            lags += samples
            late += monitor.late
            monitor.late = []
            rec = {"ds": k + 1, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
                   "apply_call_s": round(held, 3), "call_and_flush_s": round(t_call, 3),
                   "lag_max_ms": round(max(samples, default=0.0) * 1000, 1),
                   "lag_samples": len(samples), "load1": load, "rss": _mem()["VmRSS"]}
            applies.append(rec)
            _emit("PROGRESS", {"stage": "apply", **rec})
        lag_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await lag_task
        await asyncio.sleep(settle)  # what the process holds, not what an apply peaked at
        mem_end = _mem()
        lags.sort()
        p99 = lags[min(len(lags) - 1, int(len(lags) * 0.99))] if lags else 0.0
        # emitted before the teardown (closing the store, freeing GBs of objects)
        _emit("RESULT", {
            "nodes": nodes, "daemonsets": daemonsets, "pods": len(fleet.pods),
            "background_expansion": background,
            "register_s": round(register_s, 2),
            "rss_start": mem0["VmRSS"], "rss_nodes": mem_nodes["VmRSS"],
            "rss_end": mem_end["VmRSS"], "rss_peak": mem_end["VmHWM"],
            "rss_end_anon": mem_end.get("RssAnon"), "rss_end_file": mem_end.get("RssFile"),
            "applies": applies,
            "lag_max_ms": round(lags[-1] * 1000, 1) if lags else 0.0,
            "lag_p99_ms": round(p99 * 1000, 1), "lag_samples": len(lags),
            # how long the loop was held in stretches of more than 50 ms, in all
            "held_over_50ms_s": round(sum(x for x in lags if x > 0.05), 2),
            # the collector's pauses during the applies, per generation
            "gc_pauses": pauses.summary(),
            # CPU of the loop's thread per expansion slice and per store batch built
            "loop_cpu": loop_cpu.summary(),
            # the worst late timers and the steps that ran meanwhile
            "worst_stretches": worst_stretches(late, loop_cpu.spans + pauses.spans),
            "gc_count": gc.get_count(), "total_s": round(time.perf_counter() - t_start, 1)})


def _measure_main(nodes: int, daemonsets: int, settle: float) -> None:
    factory = None
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:
        pass
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(_measure(nodes, daemonsets, settle))
    sys.stdout.flush()
    os._exit(0)  # the store is closed and its directory gone; skip freeing every object


# --- the orchestrating parent -----------------------------------------------------------


MIN_AVAILABLE = 2 << 30
"""A measuring process is killed when the machine's MemAvailable falls below this (the
machine is shared: others' tests must not be the ones the kernel's OOM killer picks)."""


def _available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 1 << 62


def _wait_quiet(limit: float, wait: float) -> float:
    """Wait until the 1-minute load average is below `limit` (at most `wait` seconds);
    the load average then."""
    deadline = time.monotonic() + wait
    while _loadavg() >= limit and time.monotonic() < deadline:
        time.sleep(2)
    return _loadavg()


def _run_one(tree: Path, label: str, *, nodes: int, daemonsets: int, max_rss: int,
             log: Path | None) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONSAFEPATH": "1"}
    argv = [sys.executable, str(Path(__file__).resolve()), "--measure",
            "--nodes", str(nodes), "--daemonsets", str(daemonsets)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=env, cwd="/", text=True)
    peak = {"rss": 0, "killed": False}

    def guard() -> None:
        status = Path(f"/proc/{proc.pid}/status")
        while proc.poll() is None:
            try:
                for line in status.read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        rss = int(line.split()[1]) * 1024
                        peak["rss"] = max(peak["rss"], rss)
                        if rss > max_rss or _available() < MIN_AVAILABLE:
                            peak["killed"] = True
                            proc.kill()
            except (FileNotFoundError, ProcessLookupError):
                return
            time.sleep(0.2)

    threading.Thread(target=guard, daemon=True).start()
    result: dict[str, Any] = {}
    progress: list[dict[str, Any]] = []
    lines: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        kind, _, data = line.partition(" ")
        if kind == "RESULT":
            result = json.loads(data)
        elif kind == "PROGRESS":
            progress.append(json.loads(data))
            print(f"  [{label} {daemonsets} DS] {data.strip()}", flush=True)
        else:
            print(f"  [{label}] {line.rstrip()}", flush=True)
    rc = proc.wait()
    if log is not None:
        log.write_text("".join(lines))
    if not result:
        applies = [p for p in progress if p.get("stage") == "apply"]
        result = {"nodes": nodes, "daemonsets": daemonsets, "failed": True, "rc": rc,
                  "killed_over_rss": peak["killed"], "rss_seen": peak["rss"],
                  "applies": applies, "progress": progress}
    result["rss_seen_by_parent"] = peak["rss"]
    return result


def _fmt(result: dict[str, Any]) -> dict[str, str]:
    mb = 2**20
    applies = result.get("applies") or []
    walls = [a["wall_s"] for a in applies]
    cpus = [a["cpu_s"] for a in applies]
    row = {
        "register s": f"{result['register_s']:.1f}" if "register_s" in result else "-",
        "RSS nodes MB": f"{result['rss_nodes'] / mb:.0f}" if "rss_nodes" in result else "-",
        "RSS end MB": f"{result['rss_end'] / mb:.0f}" if "rss_end" in result else "-",
        "peak MB": f"{result['rss_peak'] / mb:.0f}" if "rss_peak" in result else "-",
        "anon/file MB": (f"{result['rss_end_anon'] / mb:.0f}/{result['rss_end_file'] / mb:.0f}"
                         if result.get("rss_end_anon") is not None else "-"),
        "apply s (med/max)": (f"{statistics.median(walls):.2f}/{max(walls):.2f}"
                              if walls else "-"),
        "apply CPU s (med)": f"{statistics.median(cpus):.2f}" if cpus else "-",
        "call held s (max)": (f"{max(a['apply_call_s'] for a in applies):.3f}"
                              if applies else "-"),
        "lag max ms": f"{result['lag_max_ms']:.0f}" if "lag_max_ms" in result else (
            f"{max(a['lag_max_ms'] for a in applies):.0f}" if applies else "-"),
        "lag p99 ms": f"{result['lag_p99_ms']:.0f}" if "lag_p99_ms" in result else "-",
        "held>50ms s": (f"{result['held_over_50ms_s']:.1f}" if "held_over_50ms_s" in result
                        else "-"),
        "slice CPU ms (p99/max)": (
            f"{result['loop_cpu']['slice']['p99_ms']:.0f}/"
            f"{result['loop_cpu']['slice']['max_ms']:.0f}"
            if result.get("loop_cpu", {}).get("slice", {}).get("n") else "-"),
        "batch CPU ms (max)": (
            f"{result['loop_cpu']['store_take']['max_ms']:.0f}"
            if result.get("loop_cpu", {}).get("store_take", {}).get("n") else "-"),
        "worst gc ms (gen 0/1/2)": ("/".join(f"{v['worst_ms']:.0f}" for v in
                                             result["gc_pauses"].values())
                                    if "gc_pauses" in result else "-"),
    }
    if result.get("failed"):
        what = ("killed over --max-rss-gb" if result.get("killed_over_rss")
                else f"exited {result.get('rc')}")
        row["RSS end MB"] = (f">{result['rss_seen'] / mb:.0f} ({what}, "
                             f"{len(applies)} DS done)")
        if applies:
            row["lag max ms"] = f"{max(a['lag_max_ms'] for a in applies):.0f}"
    return row


def _table(rows: list[tuple[str, int, int, float, dict[str, Any]]]) -> str:
    heads = ["tree", "DS", "run", "load"]
    cells = []
    for label, ds, run, load, result in rows:
        f = _fmt(result)
        if len(heads) == 4:
            heads += list(f)
        cells.append([label, str(ds), str(run), f"{load:.2f}", *f.values()])
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(heads)]
    out = ["  ".join(h.rjust(w) for h, w in zip(heads, widths, strict=True))]
    out += ["  ".join(c.rjust(w) for c, w in zip(cell, widths, strict=True)) for cell in cells]
    return "\n".join(out)


def _tree(text: str) -> tuple[str, Path]:
    label, sep, path = text.partition("=")
    if not sep:
        label, path = Path(text).resolve().name or text, text
    p = Path(path).resolve()
    if not (p / "cloudcore" / "fleet").is_dir():
        raise argparse.ArgumentTypeError(f"--tree {text}: {p} has no cloudcore/fleet")
    return label, p


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=100_000)
    p.add_argument("--daemonsets", default="1,10",
                   help="comma-separated DaemonSet counts, each a fresh process (1,10)")
    p.add_argument("--runs", type=int, default=1, help="repeats of every (tree, count)")
    p.add_argument("--tree", type=_tree, action="append", default=[],
                   help="[LABEL=]DIR: run cloudcore from DIR (repeatable; default: "
                        "this checkout); trees alternate within each run")
    p.add_argument("--max-rss-gb", type=float, default=14.0,
                   help="kill a measuring process above this RSS (default 14)")
    p.add_argument("--quiet-load", type=float, default=1.0,
                   help="start each measurement once the 1-min load is below this (1.0)")
    p.add_argument("--quiet-wait", type=float, default=90.0,
                   help="... or after this many seconds anyway (90)")
    p.add_argument("--log-dir", type=Path, help="keep each subprocess's raw output here")
    p.add_argument("--json", type=Path, help="write every result to this file")
    p.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--settle", type=float, default=2.0, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.measure:
        _measure_main(a.nodes, int(a.daemonsets), a.settle)
        return
    trees = a.tree or [("this", ROOT)]
    counts = [int(x) for x in a.daemonsets.split(",") if x.strip()]
    if a.log_dir:
        a.log_dir.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, int, int, float, dict[str, Any]]] = []
    for run in range(1, a.runs + 1):
        for ds in counts:
            # alternate which tree goes first, so a drift of the machine's load
            # does not favour one of them
            order = trees if run % 2 else list(reversed(trees))
            for label, tree in order:
                load = _wait_quiet(a.quiet_load, a.quiet_wait)
                print(f"== {label} ({tree}): {a.nodes} nodes, {ds} DaemonSet(s), run {run}, "
                      f"load {Path('/proc/loadavg').read_text().strip()}", flush=True)
                log = a.log_dir / f"apply-{label}-{ds}ds-run{run}.log" if a.log_dir else None
                result = _run_one(tree, label, nodes=a.nodes, daemonsets=ds,
                                  max_rss=int(a.max_rss_gb * 2**30), log=log)
                result["tree"], result["run"], result["load1_start"] = label, run, load
                rows.append((label, ds, run, load, result))
                print(_table([rows[-1]]), flush=True)
                for w in result.get("worst_stretches", []):
                    print(f"    late {w['lag_ms']:6.1f} ms: "
                          f"{', '.join(w['steps (wall/cpu ms)']) or '(no step over 5 ms)'}",
                          flush=True)
    print(f"\n== {a.nodes} nodes; RSS after a 2 s settle; apply = until every node's "
          "desired set holds the pod and the store committed; lag = how late a 10 ms "
          f"timer fired during the applies; load at end {_loadavg():.2f}")
    print(_table(rows), flush=True)
    if a.json:
        a.json.write_text(json.dumps([r[4] for r in rows], indent=2))


if __name__ == "__main__":
    main()
