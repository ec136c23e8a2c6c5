"""Per-node history in ring buffers, and one batched forecast for the whole fleet.

Storage (preallocated once, no reallocation as nodes join and leave):

- `values` float32 [capacity, 2, 75]: one row per node, cpu and memory. The ring is
  indexed by TIME, not per node: minute t lives in column t % 75 for every node, so
  the window ending at minute `now` is the same rotation of columns for all rows, and
  gathering 100,000 windows is a few strided copies. 75 = the 60 minutes a forecast
  reads + the 15 it predicts: the ring also holds, at every minute, the newest
  training examples of the online learner (context now-74..now-15, targets
  now-14..now; `training_sample`).
- `level` float64 [capacity, 2]: the node's level m, an exponentially weighted mean
  of its history up to `last` (half-life `online.LEVEL_HALF_LIFE`), a feature of the
  online heads; updated with every new minute (carried-forward ones included).
- `mean` float64 [capacity, 2]: the node's long-run level mu, the second level
  feature: an EWMA of its history started at 0 (half-life `online.MEAN_HALF_LIFE`,
  7 days), served bias-corrected for the minutes the node has (`_mean`: a node younger
  than that gets about the plain mean of its history).
- `spread` float64 [capacity, 2]: the node's spread d, an exponentially weighted mean
  of its absolute one-minute changes (half-life `online.SPREAD_HALF_LIFE`; a
  carried-forward minute is a change of 0), the unit of the online heads' p90 offset;
  served bias-corrected for the minutes the node has (`_spread`).
- `first`/`last` int64 [capacity]: first and newest minute of the node's current
  history (-1 = free row); `gaps` int64: minutes filled by carrying the last value
  forward; a name -> row dict and a free-list of rows.

Arrival rules of `observe(node, minute, cpu, mem)`:

- the next minute, or a later one: the minutes in between (a gap) are filled with the
  last value carried forward and counted in `gaps`; a gap of 60 minutes or more
  restarts the history (nothing in the old window is still within the last hour).
- the same minute again: the newer report replaces it.
- a late point for a minute already passed: written in place if that minute is still
  inside the node's 60-minute window and not before its history started (it
  replaces a carried-forward value); dropped and counted otherwise.
- cpu/mem outside [0, 1] are clipped; NaN or infinite points are dropped and counted.

`predict(now_minute=None)` forecasts every node at once. `now` is the newest minute
seen (or the given one, if later). A node that has not reported up to `now` has its
last value carried forward to `now`, in the gathered copy only. Then, by the number
of minutes of history it has up to `now`:

- >= 60: the long head on the 60-minute window (method MODEL);
- 10..59: the short head on the last 10 minutes (SHORT), a path fitted and
  calibrated for short windows (no padding);
- < 10, or no report for `stale_after_minutes`: no model; p50 = last value and
  p90 = the peak of what it has (FALLBACK or STALE). Callers see the flag.

A resource whose newest point is at 100 % is censored (the node's demand is at least
its capacity): its p90 is 100 % whatever the head forecasts.

Both heads are served by the online graph (`session.OnlineModel`) with the weights
the `OnlineLearner` has published (the shipped prior until it has learned): one
onnxruntime call for the MODEL rows, one for the SHORT rows. `training_sample` cuts
the learner's examples at `now`; it never reads a minute after `now`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path

import numpy as np

from cloudcore.forecaster.errors import CapacityExceeded
from cloudcore.forecaster.online import (
    LEVEL_HALF_LIFE,
    LONG,
    MEAN_HALF_LIFE,
    SHORT,
    SPREAD_FLOOR,
    SPREAD_HALF_LIFE,
    OnlineLearner,
    OnlineSettings,
    Sample,
)
from cloudcore.forecaster.session import CONTEXT, HORIZON, RESOURCES, OnlineModel

MIN_POINTS_FOR_MODEL = SHORT
RING = CONTEXT + HORIZON
ALPHA = 1.0 - 0.5 ** (1.0 / LEVEL_HALF_LIFE)  # of the per-node level (an EWMA)
BETA = 1.0 - 0.5 ** (1.0 / SPREAD_HALF_LIFE)  # of the per-node spread (an EWMA)
GAMMA = 1.0 - 0.5 ** (1.0 / MEAN_HALF_LIFE)  # of the per-node long-run level (an EWMA)


class Method(IntEnum):
    """How a node's forecast was made."""

    MODEL = 0  # the long head on a full 60-minute window
    SHORT = 1  # the short head on the last 10 minutes (10..59 minutes of history)
    PADDED = 1  # the name of SHORT before the short head existed
    FALLBACK = 2  # too little history: p50 = last value, p90 = peak seen
    STALE = 3  # no report for stale_after_minutes: same as FALLBACK


@dataclass(frozen=True)
class Stats:
    """Counters since the forecaster was created."""

    placed: int = 0
    late_placed: int = 0
    late_dropped: int = 0
    invalid_dropped: int = 0
    history_restarts: int = 0


@dataclass
class Forecast:
    """Forecasts of every known node at minute `now`.

    `p50`/`p90` are float32 [n, 2, 15]: resource 0 = cpu, 1 = memory; step k is the
    minute now + 1 + k; utilisation in 0..1. `method`, `points` (minutes of history
    the forecast saw, carried-forward ones included), `gaps` and `newest` (the newest
    minute the node really reported, <= now: the forecast's origin) are [n]; row i
    belongs to `nodes[i]`.
    """

    now: int
    nodes: np.ndarray  # object array of node names
    p50: np.ndarray
    p90: np.ndarray
    method: np.ndarray  # uint8, values of Method
    points: np.ndarray
    gaps: np.ndarray
    newest: np.ndarray  # int64 minute
    _pos: dict[str, int] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.nodes)

    def position(self, node: str) -> int:
        """Row of `node` in the arrays; KeyError if it had no forecast."""
        if self._pos is None:
            self._pos = {str(n): i for i, n in enumerate(self.nodes.tolist())}
        return self._pos[node]

    def get(self, node: str) -> dict[str, object]:
        """One node's forecast as plain data (for the API and the CLI)."""
        i = self.position(node)
        return {
            "node": node,
            "now": self.now,
            "method": Method(int(self.method[i])).name,
            "points": int(self.points[i]),
            "gaps": int(self.gaps[i]),
            "cpu": {"p50": self.p50[i, 0].tolist(), "p90": self.p90[i, 0].tolist()},
            "memory": {"p50": self.p50[i, 1].tolist(), "p90": self.p90[i, 1].tolist()},
        }


class Forecaster:
    """Keeps the last 75 minutes of every node and forecasts the next 15 for all."""

    def __init__(
        self,
        model_path: Path | str,
        *,
        capacity_nodes: int,
        stale_after_minutes: int = 15,
        online: OnlineSettings | None = None,
        seed: int = 0,
    ) -> None:
        if capacity_nodes < 1:
            raise ValueError(f"capacity_nodes must be >= 1, got {capacity_nodes}")
        if not 1 <= stale_after_minutes <= CONTEXT:
            raise ValueError(
                f"stale_after_minutes must be within 1..{CONTEXT}, got {stale_after_minutes}")
        self._model = OnlineModel(model_path)
        self.learner = OnlineLearner(self._model.prior(), online)
        self._rng = np.random.default_rng(seed)  # which nodes the learner samples
        self.capacity = capacity_nodes
        self.stale_after = stale_after_minutes
        self.values = np.zeros((capacity_nodes, RESOURCES, RING), np.float32)
        self.first = np.full(capacity_nodes, -1, np.int64)
        self.last = np.full(capacity_nodes, -1, np.int64)
        self.gaps = np.zeros(capacity_nodes, np.int64)
        self.level = np.zeros((capacity_nodes, RESOURCES), np.float64)
        self.mean = np.zeros((capacity_nodes, RESOURCES), np.float64)
        self.spread = np.zeros((capacity_nodes, RESOURCES), np.float64)
        self._names = np.empty(capacity_nodes, dtype=object)
        self._row: dict[str, int] = {}
        # free rows, lowest on top so a fleet without churn stays packed in [0, n)
        self._free = list(range(capacity_nodes - 1, -1, -1))
        self._xbuf = np.empty(0, np.float32)  # reused model input
        self._now = -1
        self._placed = self._late_placed = self._late_dropped = 0
        self._invalid = self._restarts = 0

    # ---- membership -------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._row)

    def __contains__(self, node: object) -> bool:
        return node in self._row

    @property
    def now(self) -> int:
        """Newest minute observed (-1 before the first point)."""
        return self._now

    def stats(self) -> Stats:
        return Stats(self._placed, self._late_placed, self._late_dropped, self._invalid,
                     self._restarts)

    def remove(self, node: str) -> bool:
        """Forgets a node that left; its row is reused. False if it was unknown."""
        row = self._row.pop(node, None)
        if row is None:
            return False
        self.first[row] = self.last[row] = -1
        self.gaps[row] = 0
        self._names[row] = None
        self._free.append(row)
        return True

    def nbytes(self) -> int:
        """Bytes of the preallocated arrays (not counting the name index)."""
        return int(self.values.nbytes + self.first.nbytes + self.last.nbytes
                   + self.gaps.nbytes + self.level.nbytes + self.mean.nbytes
                   + self.spread.nbytes
                   + self._names.nbytes)

    # ---- ingestion --------------------------------------------------------------
    def observe(self, node: str, ts_minute: int, cpu: float, mem: float) -> bool:
        """Records one minute of a node; True if the point was stored (see module doc)."""
        if not (math.isfinite(cpu) and math.isfinite(mem)):
            self._invalid += 1
            return False
        cpu = min(max(cpu, 0.0), 1.0)
        mem = min(max(mem, 0.0), 1.0)
        t = int(ts_minute)
        row = self._row.get(node)
        if row is None:
            if not self._free:
                raise CapacityExceeded(self.capacity)
            row = self._free.pop()
            self._row[node] = row
            self._names[row] = node
        vals = self.values[row]
        last = int(self.last[row])
        if last < 0 or t - last >= CONTEXT:
            if last >= 0:
                self._restarts += 1
            self.first[row] = t
            self.last[row] = t
            self.level[row] = (cpu, mem)
            self.mean[row] = (GAMMA * cpu, GAMMA * mem)  # its first minute
            self.spread[row] = 0.0
        elif t > last:
            if t - last > 1:  # carry the last value forward over the gap
                cols = np.arange(last + 1, t) % RING
                vals[:, cols] = vals[:, last % RING][:, None]
                self.gaps[row] += t - last - 1
                keep = (1.0 - ALPHA) ** (t - last - 1)
                self.level[row] = keep * self.level[row] + (1.0 - keep) * vals[:, last % RING]
                keep = (1.0 - GAMMA) ** (t - last - 1)
                self.mean[row] = keep * self.mean[row] + (1.0 - keep) * vals[:, last % RING]
                self.spread[row] *= (1.0 - BETA) ** (t - last - 1)  # changes of 0
            self.last[row] = t
            self.level[row] += ALPHA * (np.array((cpu, mem)) - self.level[row])
            self.mean[row] += GAMMA * (np.array((cpu, mem)) - self.mean[row])
            change = np.abs(np.array((cpu, mem)) - vals[:, last % RING])
            self.spread[row] += BETA * (change - self.spread[row])
        elif t < last:
            if t <= last - CONTEXT or t < self.first[row]:
                self._late_dropped += 1
                return False
            self._late_placed += 1
        c = t % RING
        vals[0, c] = cpu
        vals[1, c] = mem
        self._placed += 1
        self._now = max(self._now, t)
        return True

    def observe_batch(
        self, nodes: Sequence[str], ts_minute: int, cpu: np.ndarray, mem: np.ndarray
    ) -> int:
        """`observe` for many nodes at one minute (a telemetry batch); the common case
        (known node, next minute, finite values) is vectorised, the rest goes through
        `observe` one by one. Returns how many points were stored."""
        t = int(ts_minute)
        cpu = np.asarray(cpu, np.float32)
        mem = np.asarray(mem, np.float32)
        get = self._row.get
        rows = np.fromiter((get(n, -1) for n in nodes), np.int64, len(nodes))
        ok = rows >= 0
        ok[ok] = self.last[rows[ok]] == t - 1
        ok &= np.isfinite(cpu) & np.isfinite(mem)
        fast = rows[ok]
        c = t % RING
        v = np.clip(np.stack([cpu[ok], mem[ok]], axis=1), 0.0, 1.0)
        change = np.abs(v - self.values[fast, :, (t - 1) % RING])
        self.values[fast, :, c] = v
        self.level[fast] += ALPHA * (v - self.level[fast])
        self.mean[fast] += GAMMA * (v - self.mean[fast])
        self.spread[fast] += BETA * (change - self.spread[fast])
        self.last[fast] = t
        stored = len(fast)
        self._placed += stored
        if stored:
            self._now = max(self._now, t)
        for i in np.flatnonzero(~ok).tolist():
            stored += self.observe(nodes[i], t, float(cpu[i]), float(mem[i]))
        return stored

    # ---- forecasting ------------------------------------------------------------
    def predict(self, *, now_minute: int | None = None) -> Forecast:
        """Forecasts every known node with one batched call per head (see module doc)."""
        now = self._now if now_minute is None else max(int(now_minute), self._now)
        rows = np.flatnonzero(self.last >= 0)
        n = len(rows)
        # one fresh [2, n, 2, 15] result per call (a Forecast must not change under its
        # holder when the next one is made); onnxruntime writes into it directly, and
        # p50/p90 are views of it
        y = np.empty((RESOURCES, n, 2, HORIZON), np.float32)
        lag = now - self.last[rows]
        points = np.minimum(now - self.first[rows] + 1, CONTEXT)
        method = np.where(points >= CONTEXT, Method.MODEL, Method.SHORT).astype(np.uint8)
        method[points < MIN_POINTS_FOR_MODEL] = Method.FALLBACK
        method[lag >= self.stale_after] = Method.STALE
        for m, length in ((Method.MODEL, LONG), (Method.SHORT, SHORT)):
            sel = np.flatnonzero(method == m)
            if not len(sel):
                continue
            wt = self.learner.weights(length)
            x = self._windows(rows[sel], now, lag[sel], length)
            r = rows[sel]
            mu = self._mean(self.mean[r], self.last[r] - self.first[r] + 1)
            lv = np.stack([self.level[r].T, mu], axis=2).astype(np.float32)
            sp = self._spread(self.spread[r], self.last[r] - self.first[r])
            if len(sel) == n:  # the usual case: every node alike, no scatter needed
                self._model.run(x, lv, sp, wt, out=y)
            else:
                y[:, sel] = self._model.run(
                    x, lv, sp, wt, out=np.empty((RESOURCES, len(sel), 2, HORIZON), np.float32))
            # usage at 100 % is censored: the node's demand is at least its capacity, so
            # its p90 is capacity (a narrow spread-based band would put it just under)
            rr, ii = np.nonzero(x[:, :, -1] >= 1.0)
            if len(rr):
                y[rr, sel[ii], 1, :] = 1.0
        p50 = y[:, :, 0].transpose(1, 0, 2)
        p90 = y[:, :, 1].transpose(1, 0, 2)
        rest = np.flatnonzero(method >= Method.FALLBACK)
        if len(rest):
            last_v, peak = self._last_and_peak(rows[rest])
            p50[rest] = last_v[..., None]
            p90[rest] = peak[..., None]
        return Forecast(now=now, nodes=self._names[rows], p50=p50, p90=p90, method=method,
                        points=points, gaps=self.gaps[rows].copy(),
                        newest=self.last[rows].copy())

    def training_sample(self, *, now_minute: int | None = None,
                        max_nodes: int | None = None) -> Sample:
        """The online learner's examples at `now` (default: the newest minute seen):
        of nodes that reported minute `now`, up to `max_nodes` (random subset)
        75-minute windows (60 context + 15 target minutes, all <= now) and, of nodes
        with 25..74 minutes of history, 25-minute ones (10 + 15). Copies."""
        now = self._now if now_minute is None else int(now_minute)
        cap = self.learner.settings.sample_nodes if max_nodes is None else max_nodes
        rows = np.flatnonzero((self.last == now) & (self.first >= 0))
        points = now - self.first[rows] + 1
        out = []
        for length, ok in ((RING, points >= RING),
                           (SHORT + HORIZON, (points >= SHORT + HORIZON) & (points < RING))):
            r = rows[ok]
            if len(r) > cap:
                r = np.sort(self._rng.choice(r, cap, replace=False))
            x = self._windows(r, now, np.zeros(len(r), np.int64), length).copy()
            # the level at the end of the context (minute now - 15), undone from the level
            # at now: level_now = (1-A)^15 level_u + A sum_k (1-A)^k x[now - k]
            k = (1.0 - ALPHA) ** np.arange(HORIZON)[::-1]  # oldest target minute first
            recent = x[..., -HORIZON:].astype(np.float64) @ k  # [2, m]
            lv = (self.level[r].T - ALPHA * recent) / (1.0 - ALPHA) ** HORIZON
            # the long-run level the same way (its own GAMMA), bias-corrected for the
            # minutes the node had at the end of the context
            kg = (1.0 - GAMMA) ** np.arange(HORIZON)[::-1]
            mu_raw = (self.mean[r].T - GAMMA * (x[..., -HORIZON:].astype(np.float64) @ kg)
                      ) / (1.0 - GAMMA) ** HORIZON
            mu = self._mean(mu_raw.T, now - HORIZON - self.first[r] + 1)
            # the spread the same way, from the target minutes' absolute changes
            kb = (1.0 - BETA) ** np.arange(HORIZON)[::-1]
            ch = np.abs(np.diff(x[..., -HORIZON - 1 :].astype(np.float64), axis=2)) @ kb
            sp = np.maximum((self.spread[r].T - BETA * ch) / (1.0 - BETA) ** HORIZON, 0.0)
            out += [x, np.stack([lv, mu], axis=2).astype(np.float32),
                    self._spread(sp.T, now - HORIZON - self.first[r])]
        return Sample(long=out[0], short=out[3], long_level=out[1], short_level=out[4],
                      long_spread=out[2], short_spread=out[5])

    @staticmethod
    def _mean(mean: np.ndarray, minutes: np.ndarray) -> np.ndarray:
        """The long-run level mu served for rows' raw EWMA `mean` [m, 2] (started at 0)
        after `minutes` [m] minutes: divided by the weight those minutes have,
        1 - (1 - GAMMA)^n; float64 [2, m]."""
        w = (1.0 - (1.0 - GAMMA) ** np.maximum(minutes, 1))[:, None]
        return (mean / w).T

    @staticmethod
    def _spread(spread: np.ndarray, changes: np.ndarray) -> np.ndarray:
        """The spread d served for rows' raw EWMA `spread` [m, 2] after `changes` [m]
        one-minute changes: bias-corrected (an EWMA started at 0 is divided by the weight
        its changes have, 1 - (1 - BETA)^n), at least SPREAD_FLOOR; float32 [2, m, 1]."""
        w = (1.0 - (1.0 - BETA) ** np.maximum(changes, 0))[:, None]
        d = np.where(w > 0, spread / np.maximum(w, 1e-12), 0.0)
        return np.maximum(d, SPREAD_FLOOR).T[:, :, None].astype(np.float32)

    def _last_and_peak(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Newest value and peak of each row's own stored minutes of the last hour,
        [m, 2] each."""
        last = self.last[rows][:, None]
        cols = np.arange(RING)[None, :]
        minute = last - (last - cols) % RING  # the minute each column holds
        valid = (minute >= self.first[rows][:, None]) & (minute > last - CONTEXT)
        v = self.values[rows]
        peak = np.where(valid[:, None, :], v, -np.inf).max(axis=2).astype(np.float32)
        return v[np.arange(len(rows)), :, (last[:, 0] % RING)], peak

    def _windows(self, rows: np.ndarray, now: int, lag: np.ndarray, length: int) -> np.ndarray:
        """The `length`-minute windows ending at `now` of `rows`, oldest first, as one
        C-contiguous float32 [2, len(rows), length] (resource-major, as the graph reads
        them), carried forward to `now`. A view of a buffer reused by the next call
        (grown when needed), so no 100k-row array is allocated per forecast."""
        m = len(rows)
        need = RESOURCES * m * length
        if self._xbuf.size < need:
            self._xbuf = np.empty(max(need, 2 * self._xbuf.size), np.float32)
        x = self._xbuf[:need].reshape(RESOURCES, m, length)
        c0 = (now - length + 1) % RING  # column of the oldest minute
        k = min(length, RING - c0)  # columns before the ring wraps
        if m and rows[-1] - rows[0] + 1 == m:  # packed: plain slices
            src = self.values[rows[0] : rows[-1] + 1]
        else:  # holes left by nodes that went: whole-row copies first (fast memcpy)
            src = np.take(self.values, rows, axis=0)
        for r in range(RESOURCES):
            x[r, :, :k] = src[:, r, c0 : c0 + k]
            if k < length:
                x[r, :, k:] = src[:, r, : length - k]
        behind = np.flatnonzero(lag > 0)
        if len(behind):  # carry forward: positions after the newest point = newest value
            j = np.arange(length)
            lb = np.minimum(lag[behind], length - 1)
            newest = x[:, behind, length - 1 - lb]  # [2, b]
            xb = x[:, behind]
            x[:, behind] = np.where(j[None, None, :] > (length - 1 - lb)[None, :, None],
                                    newest[:, :, None], xb)
        return x
