"""msgspec against the hand-written pod rules: `python -m testbed.bench_schema`.

Issue 13 asked whether a library that validates typed msgpack in C (msgspec) should
read the pod spec instead of hand-written validators, measured on the agent first.
`shared.pods` is now msgspec Structs; the hand-written rules it replaced (and the
cloud's pydantic pod models) are read from git at commit HAND_WRITTEN, so the
comparison can be rerun. This prints, on this machine:

1. import cost in the agent's process: VmRSS added by importing the hand-written
   rules, msgspec alone, and today's `shared.pods`, each in a fresh interpreter that
   has already loaded what the agent loads anyway (asyncio, msgpack);
2. decode + validate of one typical desired-set entry's spec (a one-container pod
   with ports, env, resources, a probe, a mount and a securityContext): from the
   dict the codec has unpacked (what the agent does) and from msgpack bytes;
3. a 1,000-entry desired set: the Desired message from bytes to parsed entries
   (`shared.codec.decode`, then each spec parsed);
4. the heap held by 1,000 parsed entries (tracemalloc);
5. the cloud's side: validating and dumping one pod spec with the old pydantic
   models against `shared.pods`;
6. the error messages a user reads from each.

A program that prints figures (CONVENTIONS: benchmarks are not timed tests).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import msgspec
from msgspec import Meta, Struct

from shared import pods

HAND_WRITTEN = "345775b"
"""The last commit whose `shared/pods.py` held the hand-written rules (read from git)."""


def load_hand_written(commit: str = HAND_WRITTEN, name: str = "pods") -> Any:
    """`shared/{name}.py` of `commit`, imported as module `hand_{name}` (from a file in a
    temporary directory, which figure 1 puts on a child's sys.path)."""
    text = subprocess.run(["git", "show", f"{commit}:shared/{name}.py"],
                          capture_output=True, text=True, check=True,
                          cwd=Path(__file__).parents[1]).stdout
    path = Path(tempfile.mkdtemp(prefix="bench-schema-")) / f"hand_{name}.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location(f"hand_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[f"hand_{name}"] = module
    spec.loader.exec_module(module)
    return module


class MPodEntry(Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """A pod entry typed end to end (not what the agent does today: for figure 3)."""

    name: Annotated[str, Meta(min_length=1)]
    namespace: Annotated[str, Meta(min_length=1)]
    revision: Annotated[str, Meta(min_length=1)]
    spec: pods.PodSpec
    labels: dict[str, str] = {}
    policy: dict[str, Any] | None = None


class MDesired(Struct, frozen=True, kw_only=True):
    v: int
    node: str
    t: str
    epoch: str
    base: int
    gen: int
    snapshot: bool = False
    put: dict[str, MPodEntry] = {}
    delete: list[str] = []


# -- the figures ---------------------------------------------------------------------------


def typical_entry() -> dict[str, Any]:
    """The desired value of a typical pod, as cloudcore writes it."""
    from shared.entries import pod_entry
    from shared.models import Pod, parse_object

    pod = parse_object({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-7f9c", "namespace": "shop", "labels": {"app": "web"}},
        "spec": {
            "containers": [{
                "name": "web", "image": "registry.local:5000/shop/web:1.4.2",
                "args": ["--port", "8080"],
                "env": [{"name": "MODE", "value": "edge"}, {"name": "LOG", "value": "info"}],
                "ports": [{"containerPort": 8080, "name": "http"}],
                "resources": {"requests": {"cpu": "100m", "memory": "64Mi"},
                              "limits": {"memory": "128Mi"}},
                "volumeMounts": [{"name": "conf", "mountPath": "/etc/web", "readOnly": True}],
                "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"},
                                   "periodSeconds": 5},
                "securityContext": {"runAsUser": 1000, "runAsNonRoot": True,
                                    "allowPrivilegeEscalation": False},
            }],
            "nodeName": "edge-1",
            "volumes": [{"name": "conf", "configMap": {"name": "web-conf"}}],
        },
    })
    assert isinstance(pod, Pod)
    return pod_entry(pod)


def _best(fn: Callable[[], Any], *, repeat: int, number: int) -> float:
    """Best per-call seconds over `repeat` rounds of `number` calls."""
    rounds = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        rounds.append((time.perf_counter() - t0) / number)
    return min(rounds)


_RSS_SCRIPT = """
import asyncio, msgpack, re, sys
# what the bench module imports besides msgspec, so that its own cost is not counted
import argparse, statistics, subprocess, time, tracemalloc, typing, collections.abc
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
base = rss()
{imports}
print(rss() - base)
"""


def import_rss_kib(imports: str) -> int:
    """VmRSS (KiB) that `imports` adds to an interpreter that has asyncio and msgpack."""
    out = subprocess.run([sys.executable, "-c", _RSS_SCRIPT.format(imports=imports)],
                         capture_output=True, text=True, check=True, timeout=120)
    return int(out.stdout.strip())


def _held_kib(make: Callable[[], list[Any]]) -> float:
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = make()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    del kept
    return (after - before) / 1024


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m testbed.bench_schema", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entries", type=int, default=1000, help="pods in the big desired set")
    ap.add_argument("--runs", type=int, default=5, help="fresh interpreters per RSS figure")
    ap.add_argument("--base", default=HAND_WRITTEN,
                    help="commit whose shared/pods.py and shared/models.py are the old ones")
    args = ap.parse_args(argv)

    import msgpack

    from shared import codec
    from shared.entries import parse_pod_entry, pod_key

    hand = load_hand_written(args.base)
    old_models = load_hand_written(args.base, "models")
    print(f"python {sys.version.split()[0]}, msgspec {msgspec.__version__}, "
          f"msgpack {'.'.join(map(str, msgpack.version))}; hand-written rules of {args.base}")

    # 1. import cost
    where = Path(hand.__file__).parent
    rss_hand = [import_rss_kib(f"sys.path.insert(0, {str(where)!r}); import hand_pods")
                for _ in range(args.runs)]
    rss_lib = [import_rss_kib("import msgspec") for _ in range(args.runs)]
    rss_new = [import_rss_kib("import shared.pods") for _ in range(args.runs)]
    print("\n1. VmRSS added to an interpreter with asyncio + msgpack (median of "
          f"{args.runs} fresh processes)")
    for label, kib in (("hand-written rules (old shared.pods)", rss_hand),
                       ("msgspec alone", rss_lib),
                       ("msgspec Structs (shared.pods, with msgspec)", rss_new)):
        print(f"   {label + ':':48} {statistics.median(kib):6.0f} KiB")

    # 2. one entry's spec
    value = typical_entry()
    spec = value["spec"]
    raw = msgpack.packb(spec, use_bin_type=True)
    assert hand.PodSpec.parse(spec).dump() == pods.PodSpec.parse(spec).dump() == spec
    n = 2000
    t_hand = _best(lambda: hand.PodSpec.parse(spec, "spec"), repeat=5, number=n)
    t_new = _best(lambda: pods.PodSpec.parse(spec, "spec"), repeat=5, number=n)
    t_hand_b = _best(lambda: hand.PodSpec.parse(msgpack.unpackb(raw), "spec"), repeat=5,
                     number=n)
    t_new_b = _best(lambda: pods.PodSpec.parse(msgpack.unpackb(raw), "spec"), repeat=5,
                    number=n)
    dec = msgspec.msgpack.Decoder(pods.PodSpec)
    t_typed = _best(lambda: dec.decode(raw), repeat=5, number=n)
    print(f"\n2. one typical entry's spec ({len(raw)} bytes of msgpack), best of 5 x {n}")
    print(f"   from the unpacked dict: hand-written {t_hand * 1e6:6.1f} us, msgspec "
          f"{t_new * 1e6:5.1f} us (x{t_hand / t_new:.1f})")
    print(f"   from bytes (msgpack):   hand-written {t_hand_b * 1e6:6.1f} us, msgspec "
          f"{t_new_b * 1e6:5.1f} us (x{t_hand_b / t_new_b:.1f}); typed msgspec decode "
          f"{t_typed * 1e6:.1f} us")

    # 3. a big desired set
    put = {pod_key("shop", f"web-{i}"): {**value, "name": f"web-{i}"}
           for i in range(args.entries)}
    msg = codec.Desired(node="edge-1", epoch="e1", base=0, gen=1, snapshot=True, put=put)
    wire = codec.encode(msg)

    def hand_set() -> list[Any]:
        d = codec.decode(wire, limits=codec.DOWN_LIMITS)
        assert isinstance(d, codec.Desired)
        return [hand.PodSpec.parse(v["spec"], "spec") for v in d.put.values()]

    def new_set() -> list[Any]:
        d = codec.decode(wire, limits=codec.DOWN_LIMITS)
        assert isinstance(d, codec.Desired)
        return [parse_pod_entry(k, v) for k, v in d.put.items()]

    set_dec = msgspec.msgpack.Decoder(MDesired)

    def typed_set() -> list[Any]:
        return list(set_dec.decode(wire).put.values())

    t_hand_set = _best(hand_set, repeat=5, number=1)
    t_new_set = _best(new_set, repeat=5, number=1)
    t_typed_set = _best(typed_set, repeat=5, number=1)
    print(f"\n3. a {args.entries}-entry desired set ({len(wire) / 1024:.0f} KiB), bytes -> "
          "parsed entries, best of 5")
    print(f"   codec.decode + hand-written spec parse:          {t_hand_set * 1e3:6.1f} ms")
    print(f"   codec.decode + parse_pod_entry (msgspec, today): {t_new_set * 1e3:6.1f} ms")
    print(f"   (msgspec typed decode of the whole message:      {t_typed_set * 1e3:6.1f} ms;"
          " not used: the codec's limits run first)")

    # 4. heap held by parsed specs
    held_hand = _held_kib(hand_set)
    held_new = _held_kib(new_set)
    print(f"\n4. heap held by {args.entries} parsed entries (tracemalloc, incl. their strings)")
    print(f"   hand-written: {held_hand:6.0f} KiB   msgspec Structs: {held_new:6.0f} KiB")

    # 5. the cloud's side
    old_spec = old_models.PodSpec.model_validate(spec)
    new_spec = pods.PodSpec.parse(spec)
    t_old_v = _best(lambda: old_models.PodSpec.model_validate(spec), repeat=5, number=n)
    t_new_v = _best(lambda: pods.PodSpec.parse(spec), repeat=5, number=n)
    t_old_d = _best(old_spec.dump, repeat=5, number=n)
    t_new_d = _best(new_spec.dump, repeat=5, number=n)
    print("\n5. the cloud: one pod spec, old pydantic models | msgspec Structs")
    print(f"   validate {t_old_v * 1e6:5.1f} us | {t_new_v * 1e6:5.1f} us;  dump "
          f"{t_old_d * 1e6:5.1f} us | {t_new_d * 1e6:5.1f} us")

    # 6. what a user reads
    c0 = spec["containers"][0]
    print("\n6. error messages (hand-written | msgspec, as shared.pods reports them)")
    for doc in ({**spec, "containers": [{**c0, "image": 5}]},
                {**spec, "containers": [{**c0, "imagePullPolicyy": "Always"}]},
                {**spec, "containers": [{**c0, "ports": [{"containerPort": 0}]}]}):
        said = []
        for mod in (hand, pods):
            try:
                mod.PodSpec.parse(doc, "spec")
            except Exception as exc:  # printing whatever each says
                said.append(str(exc))
        print("   " + "\n   ".join(said))
    return 0


if __name__ == "__main__":
    sys.exit(main())
