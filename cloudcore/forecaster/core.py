"""Per-node history in ring buffers, and one batched forecast for the whole fleet.

Storage (preallocated once, no reallocation as nodes join and leave):

- `values` float32 [capacity, 2, 60]: one row per node, cpu and memory. The ring is
  indexed by TIME, not per node: minute t lives in column t % 60 for every node.
  So the window ending at minute `now` is the same rotation of columns for all
  rows, and gathering 100,000 windows is two strided copies instead of 100,000
  differently rotated ones.
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

- >= 60: the model (method MODEL);
- 10..59: the model on the window padded backwards with its earliest value (PADDED);
- < 10, or no report for `stale_after_minutes`: no model; p50 = last value and
  p90 = the peak of what it has (FALLBACK or STALE). Callers see the flag.

All MODEL and PADDED rows go to onnxruntime in ONE call.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path

import numpy as np

from cloudcore.forecaster.errors import CapacityExceeded
from cloudcore.forecaster.session import CONTEXT, HORIZON, RESOURCES, OnnxModel

MIN_POINTS_FOR_MODEL = 10


class Method(IntEnum):
    """How a node's forecast was made."""

    MODEL = 0  # the model on a full 60-minute window
    PADDED = 1  # the model on 10..59 minutes, padded with the earliest value
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
    """Keeps the last 60 minutes of every node and forecasts the next 15 for all."""

    def __init__(
        self,
        model_path: Path | str,
        *,
        capacity_nodes: int,
        stale_after_minutes: int = 15,
    ) -> None:
        if capacity_nodes < 1:
            raise ValueError(f"capacity_nodes must be >= 1, got {capacity_nodes}")
        if not 1 <= stale_after_minutes <= CONTEXT:
            raise ValueError(
                f"stale_after_minutes must be within 1..{CONTEXT}, got {stale_after_minutes}")
        self._model = OnnxModel(model_path)
        self.capacity = capacity_nodes
        self.stale_after = stale_after_minutes
        self.values = np.zeros((capacity_nodes, RESOURCES, CONTEXT), np.float32)
        self.first = np.full(capacity_nodes, -1, np.int64)
        self.last = np.full(capacity_nodes, -1, np.int64)
        self.gaps = np.zeros(capacity_nodes, np.int64)
        self._names = np.empty(capacity_nodes, dtype=object)
        self._row: dict[str, int] = {}
        # free rows, lowest on top so a fleet without churn stays packed in [0, n)
        self._free = list(range(capacity_nodes - 1, -1, -1))
        self._xbuf = np.empty((0, RESOURCES, CONTEXT), np.float32)  # reused model input
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
                   + self.gaps.nbytes + self._names.nbytes)

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
        elif t > last:
            if t - last > 1:  # carry the last value forward over the gap
                cols = np.arange(last + 1, t) % CONTEXT
                vals[:, cols] = vals[:, last % CONTEXT][:, None]
                self.gaps[row] += t - last - 1
            self.last[row] = t
        elif t < last:
            if t <= last - CONTEXT or t < self.first[row]:
                self._late_dropped += 1
                return False
            self._late_placed += 1
        c = t % CONTEXT
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
        c = t % CONTEXT
        self.values[fast, 0, c] = np.clip(cpu[ok], 0.0, 1.0)
        self.values[fast, 1, c] = np.clip(mem[ok], 0.0, 1.0)
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
        """Forecasts every known node with one batched model call (see module doc)."""
        now = self._now if now_minute is None else max(int(now_minute), self._now)
        rows = np.flatnonzero(self.last >= 0)
        n = len(rows)
        # one fresh [n, 2, 15, 2] result per call (a Forecast must not change under its
        # holder when the next one is made); onnxruntime writes into it directly, and
        # p50/p90 are views of its last axis
        y = np.empty((n, RESOURCES, HORIZON, 2), np.float32)
        lag = now - self.last[rows]
        points = np.minimum(now - self.first[rows] + 1, CONTEXT)
        method = np.where(points >= CONTEXT, Method.MODEL, Method.PADDED).astype(np.uint8)
        method[points < MIN_POINTS_FOR_MODEL] = Method.FALLBACK
        method[lag >= self.stale_after] = Method.STALE
        use_model = method <= Method.PADDED
        sel = np.flatnonzero(use_model)
        if len(sel) == n:  # the usual case: every node has history, no scatter needed
            self._model.run(self._windows(rows, now, lag, points), out=y)
        elif len(sel):
            x = self._windows(rows[sel], now, lag[sel], points[sel])
            y[sel] = self._model.run(x, out=np.empty((len(sel), RESOURCES, HORIZON, 2),
                                                     np.float32))
        p50, p90 = y[..., 0], y[..., 1]
        rest = np.flatnonzero(~use_model)
        if len(rest):
            last_v, peak = self._last_and_peak(rows[rest])
            p50[rest] = last_v[..., None]
            p90[rest] = peak[..., None]
        return Forecast(now=now, nodes=self._names[rows], p50=p50, p90=p90, method=method,
                        points=points, gaps=self.gaps[rows].copy(),
                        newest=self.last[rows].copy())

    def _last_and_peak(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Newest value and peak of each row's own stored minutes, [m, 2] each."""
        last = self.last[rows][:, None]
        cols = np.arange(CONTEXT)[None, :]
        minute = last - (last - cols) % CONTEXT  # the minute each column holds
        valid = minute >= self.first[rows][:, None]
        v = self.values[rows]
        peak = np.where(valid[:, None, :], v, -np.inf).max(axis=2).astype(np.float32)
        return v[np.arange(len(rows)), :, (last[:, 0] % CONTEXT)], peak

    def _windows(
        self, rows: np.ndarray, now: int, lag: np.ndarray, points: np.ndarray,
    ) -> np.ndarray:
        """The windows ending at `now` of `rows`, oldest first, as one contiguous
        float32 [len(rows), 2, 60]; carried forward to `now` and padded backwards.
        It is a view of a buffer reused by the next call (grown when the fleet grows),
        so no 100k-row array is allocated and page-faulted in on every forecast."""
        c0 = (now + 1) % CONTEXT  # column of minute now - 59
        k = CONTEXT - c0
        m = len(rows)
        if len(self._xbuf) < m:
            self._xbuf = np.empty((min(self.capacity, max(m, 2 * len(self._xbuf))),
                                   RESOURCES, CONTEXT), np.float32)
        x = self._xbuf[:m]
        if len(rows) and rows[-1] - rows[0] + 1 == len(rows):  # packed: plain slices
            src = self.values[rows[0] : rows[-1] + 1]
        else:  # holes left by nodes that went: whole-row copies first (fast memcpy)
            src = np.take(self.values, rows, axis=0)
        x[..., :k] = src[..., c0:]
        x[..., k:] = src[..., :c0]
        behind = np.flatnonzero(lag > 0)
        if len(behind):  # carry forward: positions after the newest point = newest value
            j = np.arange(CONTEXT)
            lb = lag[behind]
            newest = x[behind, :, CONTEXT - 1 - lb]  # [m, 2]
            xb = x[behind]
            x[behind] = np.where(j[None, None, :] > (CONTEXT - 1 - lb)[:, None, None],
                                 newest[:, :, None], xb)
        short = np.flatnonzero(points < CONTEXT)
        if len(short):  # pad backwards: positions before the earliest point = earliest
            j = np.arange(CONTEXT)
            start = CONTEXT - points[short]
            earliest = x[short, :, start]  # [m, 2]
            xs = x[short]
            x[short] = np.where(j[None, None, :] < start[:, None, None],
                                earliest[:, :, None], xs)
        return x
