"""Run a one-minute trace through the cloud's forecaster, exactly as cloudcore runs it.

    python -m models.forecast_csv --input FILE.csv --output FILE.npz [--model M.onnx]

Input: a CSV with a header; columns `cpu` and `mem` (utilisation, 0..1), one row per
minute, any length; optional `node` (any number of nodes, each its own rows in time
order; without it the file is one node). Rows with an empty or non-numeric cpu/mem
are a missing minute (the forecaster carries the last value over it, as it does for
a node that did not report).

What runs: `cloudcore.forecaster.Forecaster` with the shipped online graph, one fleet
for the whole file. At every minute t: every node's point of minute t is observed,
one batched `predict(now_minute=t)` forecasts minutes t+1..t+15 with the weights
learned so far, then the learner learns from the examples whose targets end at t
(`training_sample(now_minute=t)`): the same order as `ForecastRunner.tick`, where the
learning runs in a worker thread and its weights serve from the next minute on.
Only the past is visible at each minute (tests/models/test_forecast_csv.py checks
that changing the future leaves every earlier forecast unchanged).

`--real-every K` (default 1) is for traces resampled from K-minute samples (google2019
and azure_v2 are interpolated from 5-minute ones): the learner then takes only the
examples whose context ends at a real sample (minute index a multiple of K), the
same rule `models.online` uses for the prior and the evaluation for its origins. An
example whose context ends between two samples already holds part of the next one
(the interpolation reads it), which a node reporting real minutes never shows; it
taught the learner, and the combination of experts, to trust trends that are not
there. Forecasts are still made, and written, at every minute.

Output (.npz): `nodes` [N] (names), `p50`, `p90` float32 [N, T, 2, 15] (origin t =
forecast made after minute t for minutes t+1..t+15; resource 0 cpu, 1 mem; NaN where
a node had no row at t), `method` uint8 [N, T] (`cloudcore.forecaster.Method`; 255
where no row), `actual` float32 [N, T, 2] (the input, NaN where missing).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

from cloudcore.forecaster import Forecaster
from cloudcore.forecaster.online import OnlineSettings

HERE = Path(__file__).resolve().parent
HORIZON = 15
DEFAULT_MODEL = HERE / "forecaster_online.onnx"


class InputError(ValueError):
    """The CSV cannot be used; the message names the row or column."""


def read_csv(path: Path | str) -> tuple[list[str], np.ndarray]:
    """(node names, actual [N, T, 2] with NaN for missing minutes)."""
    series: dict[str, list[tuple[float, float]]] = {}
    with open(path, newline="") as fh:
        rd = csv.DictReader(fh)
        cols = rd.fieldnames or []
        for c in ("cpu", "mem"):
            if c not in cols:
                raise InputError(f"{path}: column {c!r} missing (have {cols})")
        for row in rd:
            node = (row.get("node") or "node") if "node" in cols else "node"
            vals = []
            for c in ("cpu", "mem"):
                try:
                    v = float(row[c])
                except (TypeError, ValueError):
                    v = float("nan")
                vals.append(v)
            series.setdefault(node, []).append((vals[0], vals[1]))
    if not series:
        raise InputError(f"{path}: no rows")
    names = list(series)
    t = max(len(v) for v in series.values())
    actual = np.full((len(names), t, 2), np.nan, np.float32)
    for i, n in enumerate(names):
        actual[i, : len(series[n])] = series[n]
    return names, actual


def forecast_array(names: list[str], actual: np.ndarray, *, model: Path | str = DEFAULT_MODEL,
                   online: OnlineSettings | None = None, real_every: int = 1,
                   ) -> dict[str, np.ndarray]:
    """Runs `actual` [N, T, 2] through the forecaster (module doc); returns the .npz fields.
    `real_every` K: learn only from examples whose context ends at a minute t - 15 that
    is a multiple of K (module doc)."""
    if real_every < 1:
        raise InputError(f"real_every must be >= 1, got {real_every}")
    n, t_len, _ = actual.shape
    fc = Forecaster(model, capacity_nodes=n, online=online)
    p50 = np.full((n, t_len, 2, 15), np.nan, np.float32)
    p90 = np.full((n, t_len, 2, 15), np.nan, np.float32)
    method = np.full((n, t_len), 255, np.uint8)
    index = {name: i for i, name in enumerate(names)}
    for t in range(t_len):
        here = np.flatnonzero(np.isfinite(actual[:, t]).all(axis=1))
        if len(here):
            fc.observe_batch([names[i] for i in here], t, actual[here, t, 0],
                             actual[here, t, 1])
        if fc.now < 0:
            continue
        out = fc.predict(now_minute=t)
        rows = np.fromiter((index[x] for x in out.nodes.tolist()), np.int64, len(out))
        p50[rows, t] = out.p50
        p90[rows, t] = out.p90
        method[rows, t] = out.method
        if (t - HORIZON) % real_every == 0:
            fc.learner.learn(fc.training_sample(now_minute=t))
    return {"nodes": np.array(names), "p50": p50, "p90": p90, "method": method,
            "actual": actual}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="forecast a one-minute cpu/mem trace as "
                                             "cloudcore would")
    ap.add_argument("--input", required=True, help="CSV with columns cpu, mem [, node]")
    ap.add_argument("--output", required=True, help=".npz to write")
    ap.add_argument("--model", default=str(DEFAULT_MODEL))
    ap.add_argument("--no-online", action="store_true",
                    help="serve the shipped prior only (no online learning)")
    ap.add_argument("--real-every", type=int, default=1,
                    help="the trace was resampled from samples every K minutes: learn only "
                         "from examples whose context ends at a real sample (default 1)")
    args = ap.parse_args(argv)
    if args.real_every < 1:
        sys.exit(f"forecast_csv: --real-every must be >= 1, got {args.real_every}")
    try:
        names, actual = read_csv(args.input)
    except (OSError, InputError) as exc:
        sys.exit(f"forecast_csv: {exc}")
    res = forecast_array(names, actual, model=args.model, real_every=args.real_every,
                         online=OnlineSettings(enabled=not args.no_online))
    np.savez_compressed(args.output, **res)
    print(f"forecast_csv: {len(names)} node(s), {actual.shape[1]} minutes -> {args.output}")


if __name__ == "__main__":
    main()
