"""The agent's footprint. The idle loop's cost: no full reconcile pass while the
runtime's state token says nothing exited, and one batched stats read per telemetry
tick. Its memory: what the agent's modules import (a set of packages it must not load,
and a bound on the Python heap they allocate). RSS itself is measured by
`python -m testbed.bench_edge --footprint`, not asserted: it moves with the host's
libraries and page sharing."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from edgecore.cache import Cache
from edgecore.reconciler import Reconciler
from edgecore.reconciler.naming import ANN_POD
from edgecore.runtime.types import ContainerSpec, ContainerState, ContainerStats
from edgecore.telemetry import Telemetry
from shared.delta import EdgeDesired
from shared.entries import pod_entry, pod_key
from shared.models import Pod
from shared.pods import PodStatus

from edgecore_fakes import FakeRuntime  # isort: skip


class TokenFake(FakeRuntime):
    """A runtime with crun's cheap `state_token` and batched `stats_all`."""

    capabilities = replace(FakeRuntime.capabilities, state_token=True, stats_all=True)

    token = 0
    lists = 0
    batched = 0

    def state_token(self) -> int:
        return self.token

    async def list(self) -> list[ContainerState]:
        self.lists += 1
        return await super().list()

    async def stats_all(self) -> dict[str, ContainerStats]:
        self.batched += 1
        return {cid: ContainerStats(cpu_usage_ns=10**9 * self.batched, memory_bytes=100,
                                    memory_working_set_bytes=80, pids=1,
                                    timestamp=float(self.batched))
                for cid in self.running()}


class Sink:
    def update(self, key: str, status: PodStatus | None) -> None:
        pass


@pytest.fixture
def cache(tmp_path: Path):
    c = Cache(tmp_path / "cache")
    yield c
    c.close()


def desired(n: int) -> EdgeDesired:
    items = {}
    for i in range(n):
        p = Pod.model_validate({"metadata": {"name": f"p{i}"}, "spec": {"containers": [
            {"name": "main", "image": "busybox:1"}]}})
        items[pod_key("default", f"p{i}")] = pod_entry(p)
    return EdgeDesired(epoch="E", gen=1, items=items)


async def until(cond: Any, timeout: float = 5) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.01)


async def test_idle_passes_are_skipped_until_something_exits(cache: Cache) -> None:
    rt = TokenFake()
    want = desired(20)
    rec = Reconciler(node="n", runtime=rt, cache=cache, desired=lambda: want, sink=Sink(),
                     interval_s=0.05, resync_s=3600, clock=lambda: 1000.0)
    task = asyncio.create_task(rec.run())
    try:
        await until(lambda: len(rt.running()) == 20 and not rec._inflight)
        await until(lambda: rec.skipped >= 5)
        passes, lists = rec.passes, rt.lists
        await asyncio.sleep(0.3)
        assert (rec.passes, rt.lists) == (passes, lists)  # idle: no list() at all
        cid = sorted(rt.running())[0]
        rt.exit(cid, 1)
        rt.token += 1  # conmon wrote an exit file
        await until(lambda: rec.passes > passes)
        rec.wake()  # a new desired set still wakes a pass at once
        await until(lambda: rec.passes > passes + 1)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_resync_without_token_or_after_resync_s(cache: Cache) -> None:
    now = [1000.0]
    rt = TokenFake()
    rec = Reconciler(node="n", runtime=rt, cache=cache, desired=lambda: desired(1),
                     sink=Sink(), interval_s=0.05, resync_s=30, clock=lambda: now[0])
    await rec.reconcile_once()
    assert not rec._pass_needed()
    now[0] += 31
    assert rec._pass_needed()
    await rec.reconcile_once()
    now[0] -= 86_400  # the wall clock went a day back: resync now, not in a day
    assert rec._pass_needed()
    await rec.reconcile_once()
    assert not rec._pass_needed()
    now[0] += 31
    assert rec._pass_needed()
    plain = Reconciler(node="n", runtime=FakeRuntime(), cache=cache,
                       desired=lambda: desired(1), sink=Sink(), interval_s=0.05)
    await plain.reconcile_once()
    assert plain._pass_needed()  # no state token: every interval, as before


async def test_telemetry_reads_stats_in_one_batch(tmp_path: Path) -> None:
    rt = TokenFake()
    for i in range(20):
        await rt.run(f"c{i}", ContainerSpec(name="main", image="x",
                                            annotations={ANN_POD: f"pod/default/p{i}"}))
    await rt.run("foreign", ContainerSpec(name="main", image="x"))
    points: list[dict[str, Any]] = []

    async def sink(p: dict[str, Any]) -> None:
        points.append(p)

    tel = Telemetry(runtime=rt, sink=sink)
    for t in (0.0, 10.0, 20.0, 60.0):
        await tel.sample(now=t)
    assert rt.batched == 4 and rt.lists == 1  # list() only to learn the new containers
    [point] = points
    assert len(point["pods"]) == 20
    assert point["pods"]["pod/default/p0"] == {"cpu": 1000, "mem": 80}
    await rt.run("c20", ContainerSpec(name="main", image="x",
                                      annotations={ANN_POD: "pod/default/p20"}))
    await tel.sample(now=70.0)
    assert rt.lists == 2


IMPORTS = """
import json, sys, tracemalloc
tracemalloc.start()
import edgecore.__main__
edgecore.__main__.prepare_imports()  # what `edgecore run` does before the agent
edgecore.__main__.defer_unused_imports(edgecore.__main__.AGENT_DEFERRED_IMPORTS)
import edgecore.agent
edgecore.__main__.build_parser()
print(json.dumps({"traced": tracemalloc.get_traced_memory()[0],
                  "modules": sorted(n for n, m in sys.modules.items() if m is not None)}))
"""

# Loaded only where they are needed, never by starting the agent: the cloud's schema
# and web stack, numerics, cryptography (an agent release's signature check imports it
# when an upgrade comes; the client certificate's lifetime is read without it:
# tests/edgecore/test_cert_lifetime.py), the event loop's C extension (imported by
# `run` itself, not by the modules), and libraries the agent has no use for.
NOT_AT_START = ("pydantic", "pydantic_core", "shared.models", "fastapi", "uvicorn",
                "starlette", "numpy", "onnxruntime", "cryptography", "uvloop", "yaml",
                "requests", "httpx", "sqlite3", "xml", "http.server", "asyncio.windows_events",
                "difflib", "http.client", "email", "_bz2", "_lzma", "calendar",
                "typing_extensions")
# difflib left with issue 16's footprint work (shared.pods imports it only for a "did
# you mean" hint). paho-mqtt imports `urllib.request` at its top for a proxy lookup that
# returns early without PySocks, and shutil imports bz2 and lzma for archive formats:
# `edgecore run` puts placeholders for those three into sys.modules that import the real
# module only when it is used (`edgecore.__main__.defer_unused_imports`), so
# `http.client`, the `email` package, `calendar` and the compression libraries stay out
# (about 1.4 MiB of RSS). typing_extensions (msgspec imports it if installed, for what
# Python 3.11's typing has) is blocked: `edgecore.__main__.block_unused_imports`, 0.3 MiB.
# The link stays on aiomqtt and paho-mqtt, the project's MQTT
# libraries (DESIGN.md 5); an own client was measured at -1.6 MiB RSS and declined
# (docs/edgecore.md, Memory).

# The Python heap the agent's imports allocate (tracemalloc): about 12.5 MiB on CPython
# 3.11 with msgspec 0.23 and aiomqtt on paho 2.2 (10.4 with an own MQTT client);
# shared.models with pydantic would add 5.5 MiB (and about 11 of RSS), cryptography's
# x509 2.3. A bound with room for ordinary growth, not a measure of RSS.
HEAP_BOUND_MIB = 16


def test_the_agents_imports_stay_small() -> None:
    out = subprocess.run([sys.executable, "-c", IMPORTS], capture_output=True, text=True,
                         check=True, timeout=120).stdout
    got = json.loads(out)
    mods = set(got["modules"])
    loaded = sorted(m for m in mods if any(m == x or m.startswith(x + ".")
                                            for x in NOT_AT_START))
    assert not loaded, f"the agent's modules load {loaded}"
    assert got["traced"] < HEAP_BOUND_MIB * 2**20, (
        f"the agent's imports allocate {got['traced'] / 2**20:.1f} MiB of Python heap "
        f"(bound {HEAP_BOUND_MIB} MiB): see docs/edgecore.md, Memory")


# A started agent, through the command line a user runs (`edgecore run`, the launcher
# included): connected to a real mosquitto, the crun runtime, every task running for
# a few telemetry samples, reconcile passes and metrics writes; then it writes the
# modules it holds and stops itself.
STARTED = """
import importlib.machinery, json, os, signal, sys
from edgecore.__main__ import main

out, argv = sys.argv[1], sys.argv[2:]

def watch(agent_module):
    import asyncio
    run = agent_module.Agent.run

    async def watched(self):
        async def dump():
            await self.started.wait()
            await self.link.wait_connected()
            await asyncio.sleep(4)
            held = {n: m for n, m in sys.modules.items() if m is not None}
            # placeholders (edgecore.__main__.defer_unused_imports) import the real
            # module on first use: a name held as one is not loaded
            stubs = [n for n, m in held.items() if "defer_unused_imports" in getattr(
                vars(m).get("__getattr__"), "__qualname__", "")]
            await asyncio.to_thread(bytes, 100_000)  # a worker thread mallocs
            with open(out, "w") as f:
                json.dump({"modules": sorted(held), "placeholders": sorted(stubs),
                           "platform": type(held.get("platform")).__name__,
                           "malloc": malloc_facts()}, f)
            os.kill(os.getpid(), signal.SIGTERM)
        task = asyncio.get_running_loop().create_task(dump())
        try:
            await run(self)
        finally:
            task.cancel()

    agent_module.Agent.run = watched

def malloc_facts():
    # glibc's malloc as the agent runs with it: its arenas (malloc_info lists one <heap>
    # per arena) and whether a block under the largest one freed so far still gets its
    # own mmap (fixed M_MMAP_THRESHOLD) or comes from the heap (glibc's default raises
    # the threshold to the size of every larger mmapped block freed). The block asked
    # for is larger than all the free memory in the heap, so no free hole can serve it
    # (a hole would, whatever the threshold: seen in CI as False with the tuning on).
    import ctypes, tempfile
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "mallinfo2"):
        return None
    class Info(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks",
                    "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
    libc.mallinfo2.restype = Info
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.fdopen.restype = ctypes.c_void_p
    libc.fdopen.argtypes = [ctypes.c_int, ctypes.c_char_p]
    libc.fclose.argtypes = [ctypes.c_void_p]
    libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    with tempfile.TemporaryFile() as f:
        stream = libc.fdopen(os.dup(f.fileno()), b"w")
        libc.malloc_info(0, stream)
        libc.fclose(stream)
        f.seek(0)
        heaps = f.read().count(b"<heap nr=")
    free_bytes = libc.mallinfo2().fordblks
    libc.free(libc.malloc(free_bytes + (4 << 20)))  # mmapped: larger than any threshold
    block = libc.malloc(free_bytes + (2 << 20))  # under it, and no free hole fits it
    # The chunk's own header (the size word before the block) says whether it was
    # mmapped (bit 0x2, IS_MMAPPED): a fact of this block alone, where a before/after
    # count of mmapped blocks would also see the worker threads' allocations.
    mmapped = bool(ctypes.c_size_t.from_address(block - ctypes.sizeof(ctypes.c_size_t)).value
                   & 0x2)
    libc.free(block)
    return {"arenas": heaps, "half_mib_mmapped": mmapped}

class WhenImported:
    # Wraps edgecore.agent when `run` imports it, so that everything `run` does before
    # the agent's imports (the launcher, the deferred modules) happens as it would.
    def find_spec(self, name, path=None, target=None):
        if name != "edgecore.agent":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        exec_module = spec.loader.exec_module
        def run_and_watch(module):
            exec_module(module)
            watch(module)
        spec.loader.exec_module = run_and_watch
        return spec

sys.meta_path.insert(0, WhenImported())
sys.exit(main(argv))
"""


def started_agent(tmp_path: Path, mosquitto: Any, *python_flags: str) -> dict[str, Any]:
    """What a started agent (STARTED) held and ran with; `python_flags` for the
    interpreter (the lean agent's `-OO -X no_debug_ranges`)."""
    if os.geteuid() != 0 or shutil.which("crun") is None:
        pytest.skip("a started agent runs crun: needs root and crun")
    out = tmp_path / "modules.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFED_")}
    argv = ["run", "--insecure", "--name", "fp-1", "--state-dir", str(tmp_path / "state"),
            "--mqtt-host", "127.0.0.1", "--mqtt-port", str(mosquitto.port),
            "--telemetry-sample", "1", "--metrics-interval", "1", "--reconcile-interval", "1",
            "--no-discover-accelerators"]
    r = subprocess.run([sys.executable, *python_flags, "-c", STARTED, str(out), *argv], env=env,
                       check=False, capture_output=True, text=True, timeout=100)
    assert out.exists(), f"the agent did not start (exit {r.returncode}): {r.stderr[-2000:]}"
    got: dict[str, Any] = json.loads(out.read_text())
    got["exit"], got["stderr"] = r.returncode, r.stderr
    return got


@pytest.mark.timeout(120)
def test_a_started_agent_holds_none_of_the_removed_modules(tmp_path: Path, mosquitto) -> None:
    got = started_agent(tmp_path, mosquitto)
    mods, stubs = set(got["modules"]), set(got["placeholders"])
    assert "edgecore.link" in mods and "edgecore.reconciler" in mods  # it did run
    loaded = sorted(m for m in mods if any(m == x or m.startswith(x + ".")
                                            for x in NOT_AT_START))
    assert not loaded, f"a started, idle agent holds {loaded}"
    # The placeholders are still there: nothing the idle agent did needed them.
    assert "urllib.request" in stubs and "http.client" not in mods
    # The command line's modules were let go once the flags were parsed (issue 16).
    assert not {"argparse", "gettext"} & (mods - stubs), (
        f"a started agent holds {sorted({'argparse', 'gettext'} & (mods - stubs))}")


@pytest.mark.timeout(120)
def test_a_started_lean_agent_holds_no_inspect_and_stops_on_sigterm(tmp_path: Path,
                                                                    mosquitto) -> None:
    # Issue 16, sixth round: under -OO (the lean restart) dataclasses get no inspect
    # (edgecore.__main__.keep_dataclasses_off_inspect), SIGTERM and SIGINT are not set
    # with loop.add_signal_handler (it asks inspect), and msgspec.inspect waits for a
    # validation error: inspect, ast and dis never load (about 0.6 MiB of RSS).
    got = started_agent(tmp_path, mosquitto, "-OO", "-X", "no_debug_ranges")
    mods, stubs = set(got["modules"]), set(got["placeholders"])
    assert "edgecore.link" in mods and "edgecore.reconciler" in mods  # it did run
    assert {"inspect", "msgspec.inspect"} <= stubs, sorted(stubs)
    assert not {"ast", "_ast", "dis"} & mods, sorted({"ast", "_ast", "dis"} & mods)
    # Issue 16, eighth round: msgspec's decimal, uuid's platform and datetime's Python
    # half stood in for (edgecore.lean), tempfile not needed to write the metrics file,
    # and the launcher's module and gettext's locale let go once done with
    assert not {"_decimal", "decimal", "tempfile", "stringprep"} & mods, (
        sorted({"_decimal", "decimal", "tempfile", "stringprep"} & mods))
    assert got["platform"] == "_PlatformPlaceholder"
    assert {"edgecore.upgrade.launcher", "locale", "edgecore.join", "shared.release"} <= stubs, (
        sorted(stubs))
    # STARTED ends with os.kill(SIGTERM): the agent's own handler stops it cleanly
    assert got["exit"] == 0, got["stderr"][-2000:]
    assert "SIGTERM: stopping the agent" in got["stderr"]


@pytest.mark.timeout(120)
def test_a_started_agent_runs_on_one_malloc_arena_with_fixed_thresholds(
        tmp_path: Path, mosquitto) -> None:
    # `edgecore run` tunes glibc's malloc before the agent's imports (issue 16, fifth
    # round): the worker threads share the one arena instead of one of their own, and
    # large blocks get their own mmap (handed back when freed) whatever was freed before.
    facts = started_agent(tmp_path, mosquitto)["malloc"]
    if facts is None:
        pytest.skip("not glibc 2.33 or later (no mallinfo2)")
    assert facts == {"arenas": 1, "half_mib_mmapped": True}


# `edgecore run` up to the launcher's hand-over: during an agent release's trial that
# process stays beside the trial agent, holding what it imported by then.
LAUNCHER = """
import json, sys
import edgecore.upgrade.launcher as launcher

def launch(state_dir, args):
    # a placeholder (defer_unused_imports) holds nothing of its module until used
    print(json.dumps(sorted(n for n, m in sys.modules.items() if m is not None and
                            "defer_unused_imports" not in getattr(
                                vars(m).get("__getattr__"), "__qualname__", ""))))
    sys.exit(0)

launcher.launch = launch
from edgecore.__main__ import main
main(["run", "--state-dir", sys.argv[1], "--name", "n1"])
"""

# What the agent needs and the launcher does not: the event loop with ssl, the
# settings with shared's schema, msgspec, the MQTT client, the agent itself; and
# dataclasses with inspect and ast (1.1 MiB: edgecore.upgrade.slots has plain classes).
NOT_IN_LAUNCHER = ("asyncio", "ssl", "_ssl", "msgspec", "paho", "aiomqtt", "lmdb",
                   "edgecore.config", "edgecore.agent", "edgecore.join", "shared.pods",
                   "shared.codec", "dataclasses", "inspect", "ast")


def test_the_launchers_process_imports_nothing_heavy(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFED_")}
    out = subprocess.run([sys.executable, "-c", LAUNCHER, str(tmp_path / "state")], env=env,
                         capture_output=True, text=True, check=True, timeout=60).stdout
    mods = set(json.loads(out))
    assert "edgecore.upgrade.launcher" in mods
    loaded = sorted(m for m in mods if any(m == x or m.startswith(x + ".")
                                            for x in NOT_IN_LAUNCHER))
    assert not loaded, f"`edgecore run` imports {loaded} before the launcher hands over"


DEFERRED = """
import json, sys
from edgecore.__main__ import defer_unused_imports
defer_unused_imports()
import bz2, inspect, lzma, urllib.request
import paho.mqtt.client
inspect.getmodule(paho.mqtt.client.Client)  # walks sys.modules reading __file__
before = sorted(m for m in ("http.client", "email", "_bz2", "_lzma") if m in sys.modules)
from urllib.request import Request  # a real use loads the real module
ok = (Request("http://example.invalid/").get_method() == "GET"
      and bz2.decompress(bz2.compress(b"edge")) == b"edge"
      and lzma.decompress(lzma.compress(b"edge")) == b"edge"
      and urllib.request.getproxies is sys.modules["urllib.request"].getproxies)
print(json.dumps({"before": before, "ok": ok, "after": "http.client" in sys.modules}))
"""


def test_deferred_modules_load_on_first_use_and_behave_as_the_real_ones() -> None:
    out = subprocess.run([sys.executable, "-c", DEFERRED], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert json.loads(out) == {"before": [], "ok": True, "after": True}


RELEASED = """
import gc, json, sys, weakref
from pathlib import Path
import edgecore.__main__ as em
flags = em.build_parser().parse_args(["run", "--state-dir", "/s1", "--label", "a=b"])
import argparse  # a namespace holding the module: rebound to the placeholder too
real = weakref.ref(sys.modules["argparse"])
del flags
released = em.release_modules(["argparse", "gettext", "no_such_module"])
gc.collect()
freed = real() is None
again = em.build_parser().parse_args(["run", "--state-dir", "/s2"])  # loads it again
print(json.dumps({"released": released, "freed": freed, "again": str(again.state_dir),
                  "same": isinstance(again, argparse.Namespace)
                  and argparse.Namespace is sys.modules["argparse"].Namespace}))
"""


def test_released_modules_are_collected_and_load_again_when_used() -> None:
    # `edgecore run` lets argparse and gettext go once its flags are parsed (issue 16)
    out = subprocess.run([sys.executable, "-c", RELEASED], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert json.loads(out) == {"released": ["argparse", "gettext"], "freed": True,
                               "again": "/s2", "same": True}


NO_SIGNATURES = """
import json, sys
import edgecore.__main__ as em
em.prepare_imports()  # as `edgecore run` starts
em.defer_unused_imports(em.AGENT_DEFERRED_IMPORTS)
import dataclasses

@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    y: int = 2

p = Point(1)
ok = (p == Point(1, 2) and repr(p) == "Point(x=1, y=2)"
      and dataclasses.asdict(p) == {"x": 1, "y": 2} and dataclasses.replace(p, y=3).y == 3)
real = "signature" in vars(sys.modules["inspect"])
from shared.pods import Container
try:
    Container.parse({"name": "c", "imagee": "busybox"})
except Exception as exc:  # worded with msgspec.inspect, which loads now
    err = str(exc)
print(json.dumps({"doc": Point.__doc__, "ok": ok, "inspect_loaded": real, "err": err}))
"""


@pytest.mark.parametrize("flags", [(), ("-OO",)])
def test_dataclasses_work_without_inspect_under_OO(flags: tuple[str, ...]) -> None:
    out = subprocess.run([sys.executable, *flags, "-c", NO_SIGNATURES], capture_output=True,
                         text=True, check=True, timeout=60).stdout
    got = json.loads(out)
    assert got["ok"] and "imagee" in got["err"] and "did you mean 'image'" in got["err"]
    if flags:  # the lean agent: no docstring, and no signature written for it either
        assert got == {**got, "doc": "Point", "inspect_loaded": False}
    else:  # docstrings kept: dataclasses unchanged (it writes the signature)
        assert got["doc"] == "Point(x: int, y: int = 2)"


SIGNALS = """
import asyncio, json, os, signal
from edgecore.__main__ import _Signals

got = []
signals = _Signals()
signals.install()
os.kill(os.getpid(), signal.SIGTERM)  # before the loop: remembered

async def main():
    loop = asyncio.get_running_loop()
    signals.serve(loop, got.append)
    await asyncio.sleep(0.05)
    os.kill(os.getpid(), signal.SIGINT)  # while it runs: handed to the loop
    for _ in range(100):
        if len(got) == 2:
            break
        await asyncio.sleep(0.01)

asyncio.run(main())
signals.restore()
restored = (signal.getsignal(signal.SIGINT) is signal.default_int_handler
            and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL)
print(json.dumps({"got": got, "restored": restored}))
"""


def test_signals_before_and_while_the_loop_runs_reach_the_agent() -> None:
    out = subprocess.run([sys.executable, "-c", SIGNALS], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert json.loads(out) == {"got": ["SIGTERM", "SIGINT"], "restored": True}
