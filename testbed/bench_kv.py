"""What the shards' shared state costs on NATS JetStream KV (issue 14 part 2).

    python -m testbed.bench_kv [--servers 1,3] [--ops 2000] [--concurrency 64] [--workdir DIR]

For each shape (one nats-server with a bucket of 1 replica; a 3-server cluster with a
bucket of 3 replicas), started by `testbed.natskv.NatsKV` on loopback with TLS from a
fleet CA and a password, exactly as a shard connects (`cloudcore.cluster.kv`):

- put, get and CAS (update at the revision) latency, one call at a time: p50/p90/p99/max;
- watch delivery: a write on one connection until a watcher on another sees it
  (sequential, so each sample is one end-to-end delivery);
- throughput: puts/s and CAS updates/s with `--concurrency` calls in flight over
  `--keys` keys (the CAS writers each own their key, as lease renewals do).

With `--takeover SECONDS` (a lease period), also three real member processes
(`python -m cloudcore.cluster member`) on each shape: time until they split the 256
partitions, then kill -9 of the member holding the global lease and the seconds until
every one of its partitions and the global lease are held by the others, then a fourth
member joining and the seconds until it holds its share.

Prints a table and one JSON document, and writes `result.json` in the workdir, with the
load average before and after each shape (this machine is shared: say it with the
figures).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from cloudcore.cluster.kv import KV, Bucket, KVSettings
from testbed.natskv import MemberProc, NatsKV


def _dist(samples: list[float]) -> dict[str, float]:
    """Milliseconds: p50, p90, p99, max, mean."""
    s = sorted(samples)
    if not s:
        return {}

    def q(f: float) -> float:
        return s[min(len(s) - 1, int(f * len(s)))] * 1000

    return {"n": len(s), "p50_ms": round(q(0.50), 3), "p90_ms": round(q(0.90), 3),
            "p99_ms": round(q(0.99), 3), "max_ms": round(s[-1] * 1000, 3),
            "mean_ms": round(statistics.fmean(s) * 1000, 3)}


async def _timed(n: int, call: Callable[[int], Awaitable[object]]) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        await call(i)
        out.append(time.perf_counter() - t0)
    return out


async def _throughput(total: int, concurrency: int,
                      call: Callable[[int, int], Awaitable[object]]) -> float:
    """Calls per second with `concurrency` workers sharing `total` calls."""
    per = max(1, total // concurrency)

    async def worker(w: int) -> None:
        for i in range(per):
            await call(w, i)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return per * concurrency / (time.perf_counter() - t0)


async def _shape(srv: NatsKV, *, replicas: int, ops: int, concurrency: int,
                 value_bytes: int) -> dict[str, object]:
    settings = KVSettings(urls=tuple(srv.urls), user=srv.user, password=srv.password,
                          ca_file=srv.ca_file, request_timeout=10.0)
    value = b"x" * value_bytes
    async with KV(settings) as kv, KV(settings) as kv2:
        b: Bucket = await kv.bucket("bench", create=True, replicas=replicas)
        w_bucket = await kv2.bucket("bench")
        for i in range(20):  # warm-up: the stream leader, TLS, code paths
            await b.put(f"warm.{i}", value)

        puts = await _timed(ops, lambda i: b.put(f"k.{i % 256:02x}", value))
        gets = await _timed(ops, lambda i: b.get(f"k.{i % 256:02x}"))
        rev = await b.put("cas", value)
        revs = [rev]

        async def cas(_: int) -> None:
            revs[0] = await b.update("cas", value, revision=revs[0])

        cass = await _timed(ops, cas)

        # watch delivery: write, wait until the watcher (another connection) sees it
        watch = await w_bucket.watch("w.>", deliver="new")
        delivery: list[float] = []
        try:
            for i in range(min(ops, 1000)):
                t0 = time.perf_counter()
                r = await b.put(f"w.{i % 16}", value)
                while True:
                    e = await asyncio.wait_for(watch.__anext__(), 10)
                    if e.revision == r:
                        break
                delivery.append(time.perf_counter() - t0)
        finally:
            await watch.stop()

        puts_s = await _throughput(ops * 5, concurrency,
                                   lambda w, i: b.put(f"t.{(w * 7 + i) % 256:02x}", value))
        own = {w: await b.put(f"c.{w}", value) for w in range(concurrency)}

        async def cas_w(w: int, _: int) -> None:
            own[w] = await b.update(f"c.{w}", value, revision=own[w])

        cas_s = await _throughput(ops * 5, concurrency, cas_w)
    return {"put": _dist(puts), "get": _dist(gets), "cas": _dist(cass),
            "watch_delivery": _dist(delivery), "puts_per_s": round(puts_s),
            "cas_per_s": round(cas_s)}


def _takeover(srv: NatsKV, *, workdir: Path, lease: float, replicas: int) -> dict[str, object]:
    """Three members; kill -9 the global holder; a fourth joins. Seconds of each step."""
    def balanced(ms: list[MemberProc]) -> bool:
        sets = [m.owned() for m in ms]
        want = sorted(256 // len(ms) + (1 if i < 256 % len(ms) else 0)
                      for i in range(len(ms)))
        return sorted(len(x) for x in sets) == want and len(set().union(*sets)) == 256

    def wait(cond: Callable[[], bool], timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cond():
                return time.time()
            time.sleep(0.02)
        raise RuntimeError(f"not reached in {timeout} s (see {workdir})")

    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    ms = [MemberProc(srv, f"S{i}", workdir=workdir, lease_period=lease, replicas=replicas)
          for i in (1, 2, 3)]
    everyone = list(ms)
    try:
        split_at = wait(lambda: balanced(ms), 60 + lease * 3)
        victim = next(m for m in ms if m.holds_global())
        orphaned = victim.owned()
        rest = [m for m in ms if m is not victim]
        killed = victim.kill()
        taken = wait(lambda: orphaned <= set().union(*(m.owned() for m in rest)), lease * 5)
        glob = wait(lambda: sum(m.holds_global() for m in rest) == 1, lease * 5)
        rebalanced = wait(lambda: balanced(rest), lease * 5)
        joiner = MemberProc(srv, "S4", workdir=workdir, lease_period=lease,
                            replicas=replicas)
        everyone.append(joiner)
        joined_t = time.time()
        share = wait(lambda: balanced([*rest, joiner]), lease * 10 + 30)
    finally:
        for m in everyone:
            m.stop()
    return {"lease_period_s": lease, "three_split_s": round(split_at - t0, 2),
            "killed_partitions": len(orphaned),
            "takeover_s": round(taken - killed, 2), "global_takeover_s": round(glob - killed, 2),
            "rebalanced_s": round(rebalanced - killed, 2),
            "join_share_s": round(share - joined_t, 2),
            "renewal_writes_per_s": round(257 * 3 / lease, 1)}


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m testbed.bench_kv", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--servers", default="1,3",
                   help="comma-separated cluster sizes (replicas = min(3, size))")
    p.add_argument("--ops", type=int, default=2000, help="sequential calls per latency test")
    p.add_argument("--concurrency", type=int, default=64, help="calls in flight (throughput)")
    p.add_argument("--value-bytes", type=int, default=200,
                   help="value size (a lease value is ~60 bytes, an object ~0.2-2 KB)")
    p.add_argument("--takeover", type=float, default=None, metavar="LEASE_S",
                   help="also measure lease takeover with member processes at this lease "
                        "period (seconds)")
    p.add_argument("--workdir", type=Path, default=None)
    args = p.parse_args(argv)
    sizes = [int(x) for x in str(args.servers).split(",") if x.strip()]
    own = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="bench-kv-")) if own else Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    result: dict[str, object] = {"ops": args.ops, "concurrency": args.concurrency,
                                 "value_bytes": args.value_bytes, "shapes": {}}
    try:
        for n in sizes:
            replicas = min(3, n)
            shutil.rmtree(workdir / f"nats-{n}", ignore_errors=True)
            with NatsKV(rundir=workdir / f"nats-{n}", servers=n) as srv:
                before = _load()
                t0 = time.monotonic()
                figures = asyncio.run(_shape(srv, replicas=replicas, ops=args.ops,
                                             concurrency=args.concurrency,
                                             value_bytes=args.value_bytes))
                figures.update({"servers": n, "replicas": replicas,
                                "seconds": round(time.monotonic() - t0, 1),
                                "load_before": before, "load_after": _load()})
                if args.takeover:
                    figures["takeover"] = _takeover(srv, workdir=workdir / f"members-{n}",
                                                    lease=args.takeover, replicas=replicas)
                    figures["load_after_takeover"] = _load()
            result["shapes"][f"{n}-server"] = figures  # type: ignore[index]
            f = figures
            print(f"\n{n} server(s), bucket replicas {replicas} (load {before} -> "
                  f"{f['load_after']}):", file=sys.stderr)
            for k in ("put", "get", "cas", "watch_delivery"):
                d = f[k]
                print(f"  {k:15} p50 {d['p50_ms']:7.2f} ms  p90 {d['p90_ms']:7.2f}  "  # type: ignore[index]
                      f"p99 {d['p99_ms']:7.2f}  max {d['max_ms']:7.2f}", file=sys.stderr)  # type: ignore[index]
            print(f"  puts/s {f['puts_per_s']}  CAS/s {f['cas_per_s']} "
                  f"({args.concurrency} in flight)", file=sys.stderr)
            if "takeover" in f:
                print(f"  leases: {f['takeover']}", file=sys.stderr)
    finally:
        (workdir / "result.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))
    if own:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
