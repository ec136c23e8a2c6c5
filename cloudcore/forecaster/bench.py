"""Benchmark of the forecaster: one batched forecast of a large fleet.

    python -m cloudcore.forecaster.bench [--nodes 100000] [--repeat 5] [--compare OLD.onnx]

Fills `--nodes` nodes with 60 minutes of synthetic history (through `observe_batch`,
the ingestion path), then times `predict()` (the gather of every node's window from
the ring buffers, the one onnxruntime call on one intra-op thread, and the scatter of
results), and prints the memory of the ring buffers. `--compare` times, in the same
run and on the same fleet, predict() with another model file (e.g. the previous
graph: `git show HEAD~1:models/forecaster.onnx > /tmp/old.onnx`), alternating the
two so machine noise hits both alike. A program that prints figures, not a timed test.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import tracemalloc

import numpy as np

from cloudcore.forecaster import Forecaster, Method, default_model_path
from cloudcore.forecaster.session import OnnxModel


def _ms(times: list[float]) -> str:
    return (f"best {min(times) * 1e3:.1f} ms, median {sorted(times)[len(times) // 2] * 1e3:.1f} ms"
            f" over {len(times)}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="time one batched forecast of a fleet")
    ap.add_argument("--nodes", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--model", default=str(default_model_path()))
    ap.add_argument("--compare", default=None, help="another .onnx to time alongside")
    args = ap.parse_args(argv)
    if args.nodes < 1 or args.repeat < 1:
        sys.exit("--nodes and --repeat must be >= 1")
    n = args.nodes
    rng = np.random.default_rng(0)
    names = [f"node-{i}" for i in range(n)]

    tracemalloc.start()
    fc = Forecaster(args.model, capacity_nodes=n)
    level = rng.uniform(0.1, 0.8, (n, 2)).astype(np.float32)
    t0 = time.perf_counter()
    for minute in range(60):
        v = np.clip(level + rng.normal(0, 0.03, (n, 2)).astype(np.float32), 0, 1)
        fc.observe_batch(names, minute, v[:, 0], v[:, 1])
    ingest = time.perf_counter() - t0
    _, peak_traced = tracemalloc.get_traced_memory()
    index_bytes = tracemalloc.get_traced_memory()[0] - fc.values.nbytes
    tracemalloc.stop()

    fc.predict()  # warm-up: onnxruntime sizes its memory arena on the first call
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        out = fc.predict()
        times.append(time.perf_counter() - t0)
    assert len(out) == n and bool((out.method == Method.MODEL).all())

    cmp_times: dict[str, list[float]] = {}
    if args.compare:
        models = {"this": fc._model, "compare": OnnxModel(args.compare)}
        cmp_times = {k: [] for k in models}
        for m in models.values():  # warm-up of each
            fc._model = m
            fc.predict()
        for _ in range(args.repeat):
            for k, m in models.items():
                fc._model = m
                t0 = time.perf_counter()
                fc.predict()
                cmp_times[k].append(time.perf_counter() - t0)
        fc._model = models["this"]

    # the same, with holes in the rows (churn) so the gather takes the indexed path
    for name in names[::10]:
        fc.remove(name)
    fc.predict()
    holes = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        out2 = fc.predict()
        holes.append(time.perf_counter() - t0)

    print(f"nodes                         {n}")
    print(f"cpu cores visible             {os.cpu_count()} (onnxruntime intra_op threads = 1)")
    print(f"ingest 60 minutes             {ingest:.2f} s "
          f"({ingest / (60 * n) * 1e6:.2f} us per point, observe_batch)")
    print(f"predict (gather + 1 ORT call) best {min(times) * 1e3:.1f} ms, "
          f"median {sorted(times)[len(times) // 2] * 1e3:.1f} ms over {args.repeat}")
    print(f"predict, {len(out2)} nodes with holes in the rows (10 % removed) best "
          f"{min(holes) * 1e3:.1f} ms, median {sorted(holes)[len(holes) // 2] * 1e3:.1f} ms")
    if cmp_times:
        print(f"alternating: {args.model}  {_ms(cmp_times['this'])}")
        print(f"alternating: {args.compare}  {_ms(cmp_times['compare'])}")
    print(f"ring buffer values [N,2,60] f32 {fc.values.nbytes / 2**20:.1f} MiB")
    print(f"all preallocated arrays       {fc.nbytes() / 2**20:.1f} MiB")
    print(f"python allocations (arrays + name index + names), traced  "
          f"{(index_bytes + fc.values.nbytes) / 2**20:.1f} MiB, peak {peak_traced / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
