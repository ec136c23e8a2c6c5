"""Benchmark of the forecaster: one batched forecast of a large fleet, with the online
learning's cost per tick.

    python -m cloudcore.forecaster.bench [--nodes 100000] [--repeat 15]

Fills `--nodes` nodes with 75 minutes of synthetic history (through `observe_batch`,
the ingestion path), then times, per simulated minute (a new point for every node
first, as telemetry would bring it):

- `predict()`: the gather of every node's window from the ring buffers, the one
  onnxruntime call on one intra-op thread, and the result arrays;
- the online part, as `ForecastRunner` runs it: `training_sample()` on the event loop
  (a copy of at most `sample_nodes` windows) and `learner.learn()` (in cloudcore a
  worker thread; timed here on this thread, so its CPU is counted in full).

Run it as cloudcore should run, with `OPENBLAS_NUM_THREADS=1` in the environment: the
learner's X'X products are OpenBLAS matmuls, and OpenBLAS's own threads (one per core
by default) spin against the other processes of a loaded machine (learn 205 ms
median instead of 11.5 ms here, at load average 3 on 2 cores); the value in use is
printed. It prints the median of each and of their sum per tick (the online part runs once
per tick, so its whole cost is its amortised cost), the memory of the arrays, and
the load average beside the figures (the machine is shared). A program that prints
figures, not a timed test.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import tracemalloc

import numpy as np

from cloudcore.forecaster import Forecaster, Method, default_model_path
from cloudcore.forecaster.core import RING


def _med(v: list[float]) -> float:
    return sorted(v)[len(v) // 2] * 1e3


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="time one batched forecast of a fleet")
    ap.add_argument("--nodes", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--model", default=str(default_model_path()))
    args = ap.parse_args(argv)
    if args.nodes < 1 or args.repeat < 1:
        sys.exit("--nodes and --repeat must be >= 1")
    n = args.nodes
    rng = np.random.default_rng(0)
    names = [f"node-{i}" for i in range(n)]

    tracemalloc.start()
    fc = Forecaster(args.model, capacity_nodes=n)
    level = rng.uniform(0.1, 0.8, (n, 2)).astype(np.float32)

    def minute(t: int) -> None:
        v = np.clip(level + rng.normal(0, 0.03, (n, 2)).astype(np.float32), 0, 1)
        fc.observe_batch(names, t, v[:, 0], v[:, 1])

    t0 = time.perf_counter()
    for t in range(RING):
        minute(t)
    ingest = time.perf_counter() - t0
    _, peak_traced = tracemalloc.get_traced_memory()
    index_bytes = tracemalloc.get_traced_memory()[0] - fc.values.nbytes
    tracemalloc.stop()

    fc.predict()  # warm-up: onnxruntime sizes its memory arena on the first call
    fc.learner.learn(fc.training_sample())
    pred, samp, learn, total = [], [], [], []
    t = RING
    for _ in range(args.repeat):
        minute(t)
        t0 = time.perf_counter()
        out = fc.predict()
        t1 = time.perf_counter()
        sample = fc.training_sample()
        t2 = time.perf_counter()
        fc.learner.learn(sample)
        t3 = time.perf_counter()
        pred.append(t1 - t0)
        samp.append(t2 - t1)
        learn.append(t3 - t2)
        total.append(t3 - t0)
        t += 1
    assert len(out) == n and bool((out.method == Method.MODEL).all())

    # the same, with holes in the rows (churn) so the gather takes the indexed path
    for name in names[::10]:
        fc.remove(name)
    kept = [nm for i, nm in enumerate(names) if i % 10]
    holes = []
    for _ in range(args.repeat):
        v = np.clip(rng.uniform(0.1, 0.8, (len(kept), 2)), 0, 1).astype(np.float32)
        fc.observe_batch(kept, t, v[:, 0], v[:, 1])
        t0 = time.perf_counter()
        out2 = fc.predict()
        fc.learner.learn(fc.training_sample())
        holes.append(time.perf_counter() - t0)
        t += 1

    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"nodes                         {n}")
    print(f"cpu cores visible             {os.cpu_count()} (onnxruntime intra_op threads = 1)")
    print(f"OPENBLAS_NUM_THREADS          {os.environ.get('OPENBLAS_NUM_THREADS', 'unset')} "
          "(the learner's matmuls; unset = one BLAS thread per core, which under load made "
          "learn 20x slower here: run cloudcore with 1)")
    print(f"load average (1/5/15 min)     {load}")
    print(f"ingest {RING} minutes             {ingest:.2f} s "
          f"({ingest / (RING * n) * 1e6:.2f} us per point, observe_batch)")
    print(f"predict (gather + ORT call)   median {_med(pred):.1f} ms, best "
          f"{min(pred) * 1e3:.1f} ms over {args.repeat}")
    print(f"online: training_sample       median {_med(samp):.1f} ms "
          f"({fc.learner.settings.sample_nodes} nodes per tick)")
    print(f"online: learn (fit + calibrate) median {_med(learn):.1f} ms")
    print(f"per tick, all of it           median {_med(total):.1f} ms, best "
          f"{min(total) * 1e3:.1f} ms   [load average {load}]")
    print(f"per tick, {len(out2)} nodes with holes in the rows (10 % removed) median "
          f"{_med(holes):.1f} ms")
    print(f"ring buffer values [N,2,{RING}] f32 {fc.values.nbytes / 2**20:.1f} MiB")
    print(f"all preallocated arrays       {fc.nbytes() / 2**20:.1f} MiB")
    print(f"python allocations (arrays + name index + names), traced  "
          f"{(index_bytes + fc.values.nbytes) / 2**20:.1f} MiB, peak {peak_traced / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
