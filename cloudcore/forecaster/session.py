"""The one place in cloudcore that imports onnxruntime.

`OnnxModel` loads the forecaster graph once (one session, one intra-op thread, so a
forecast never competes with the event loop's core for more than one thread) and
checks it honours the contract written in `models/model.py`:
input "x" float32 [batch, 2, 60], output "y" float32 [batch, 2, 15, 2].

`run(x, out=y)` binds both numpy buffers to the session (io_binding), so onnxruntime
reads the caller's input and writes straight into the caller's output array: no copy
of the input, no output allocation inside onnxruntime, no copy back.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from cloudcore.forecaster.errors import InferenceError, ModelLoadError
from cloudcore.forecaster.online import LEVELS, Weights

CONTEXT = 60
HORIZON = 15
RESOURCES = 2
QUANTILES = 2


def open_session(path: Path | str) -> ort.InferenceSession:
    """An onnxruntime session on one intra-op thread (a forecast never competes with
    the event loop's core for more than one thread), or ModelLoadError saying why not."""
    if not Path(path).is_file():
        raise ModelLoadError("model file not found", path=str(path))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own unexported types
        raise ModelLoadError(f"onnxruntime cannot load it: {exc}", path=str(path)) from exc


class OnnxModel:
    """A loaded forecaster graph: `run(x [B, 2, 60]) -> y [B, 2, 15, 2]`."""

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        self._sess = open_session(path)
        ins, outs = self._sess.get_inputs(), self._sess.get_outputs()
        if len(ins) != 1 or list(ins[0].shape[1:]) != [RESOURCES, CONTEXT]:
            raise ModelLoadError(
                f"input must be one tensor [batch, {RESOURCES}, {CONTEXT}], got "
                f"{[(i.name, i.shape) for i in ins]}", path=self.path)
        if len(outs) != 1 or list(outs[0].shape[1:]) != [RESOURCES, HORIZON, QUANTILES]:
            raise ModelLoadError(
                f"output must be one tensor [batch, {RESOURCES}, {HORIZON}, {QUANTILES}], "
                f"got {[(o.name, o.shape) for o in outs]}", path=self.path)
        self._in, self._out = ins[0].name, outs[0].name
        self._binding = self._sess.io_binding()

    def run(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """One batched call; x must be C-contiguous float32 [B, 2, 60]. With `out`
        (C-contiguous float32 [B, 2, 15, 2]) the result is written into it."""
        try:
            if out is None:
                (y,) = self._sess.run([self._out], {self._in: x})
                return np.asarray(y)
            if not (x.flags.c_contiguous and out.flags.c_contiguous and x.dtype == np.float32
                    and out.dtype == np.float32 and out.shape == (len(x), RESOURCES, HORIZON,
                                                                  QUANTILES)):
                raise ValueError("x and out must be C-contiguous float32 [B, 2, 60] and "
                                 "[B, 2, 15, 2]")
            b = self._binding
            b.bind_cpu_input(self._in, x)
            b.bind_output(self._out, "cpu", 0, np.float32, list(out.shape), out.ctypes.data)
            self._sess.run_with_iobinding(b)
            return out
        except Exception as exc:
            raise InferenceError(f"forecast batch of {len(x)} failed: {exc}") from exc


class OnlineModel:
    """The online forecaster graph (`models/forecaster_online.onnx`, built by
    `models/online.py`): weights are inputs, so the heads learned in cloudcore are served
    by onnxruntime; the shipped prior weights are outputs of the same file.

        inputs   x [2, batch, L] (resource-major windows, oldest first), m [2, batch, 2]
                 (each node's levels: 6 h and long-run), d [2, batch, 1] (each node's
                 spread), w1 [2, L, 30], w2 [2, 5, 30] (`online.Weights`;
                 L = 60 or 10: one head each)
        outputs  y [2, batch, 2, 15] (axis 2: p50, p90; in 0..1);
                 prior_w60 [2, 62, 15], prior_q60 [2, 15], prior_w10 [2, 12, 15],
                 prior_q10 [2, 15] (the prior in the normalised form of
                 `cloudcore.forecaster.online.Head`)
    """

    INPUTS = ("x", "m", "d", "w1", "w2")
    PRIORS = ("prior_w60", "prior_q60", "prior_w10", "prior_q10")

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        self._sess = open_session(path)
        ins = [i.name for i in self._sess.get_inputs()]
        outs = [o.name for o in self._sess.get_outputs()]
        if ins != list(self.INPUTS) or outs[:1] != ["y"] or not set(self.PRIORS) <= set(outs):
            raise ModelLoadError(
                f"not an online forecaster graph: inputs {ins} (want {list(self.INPUTS)}), "
                f"outputs {outs} (want y and {list(self.PRIORS)})", path=self.path)
        self._binding = self._sess.io_binding()

    def prior(self) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """The shipped prior per window length: (normalised weights [2, L, 15], q [2, 15])."""
        z = np.zeros((RESOURCES, 1, 10), np.float32)
        feeds = {"x": z, "m": np.zeros((RESOURCES, 1, LEVELS), np.float32),
                 "d": np.zeros((RESOURCES, 1, 1), np.float32),
                 "w1": np.zeros((RESOURCES, 10, 2 * HORIZON), np.float32),
                 "w2": np.zeros((RESOURCES, 3 + LEVELS, 2 * HORIZON), np.float32)}
        try:
            w60, q60, w10, q10 = self._sess.run(list(self.PRIORS), feeds)
        except Exception as exc:
            raise ModelLoadError(f"cannot read the prior: {exc}", path=self.path) from exc
        return {60: (np.asarray(w60), np.asarray(q60)), 10: (np.asarray(w10), np.asarray(q10))}

    def run(self, x: np.ndarray, m: np.ndarray, d: np.ndarray, wt: Weights,
            out: np.ndarray) -> np.ndarray:
        """One batched call; x C-contiguous float32 [2, B, L], m [2, B, 2], d [2, B, 1], the head's
        weights; the result is written into `out` (C-contiguous float32 [2, B, 2, 15])."""
        try:
            if not (x.flags.c_contiguous and out.flags.c_contiguous and x.dtype == np.float32
                    and out.dtype == np.float32
                    and out.shape == (RESOURCES, x.shape[1], QUANTILES, HORIZON)):
                raise ValueError("x and out must be C-contiguous float32 [2, B, L] and "
                                 "[2, B, 2, 15]")
            bd = self._binding
            bd.bind_cpu_input("x", x)
            bd.bind_cpu_input("m", np.ascontiguousarray(m, np.float32))
            bd.bind_cpu_input("d", np.ascontiguousarray(d, np.float32))
            bd.bind_cpu_input("w1", wt.w1)
            bd.bind_cpu_input("w2", wt.w2)
            bd.bind_output("y", "cpu", 0, np.float32, list(out.shape), out.ctypes.data)
            self._sess.run_with_iobinding(bd)
            return out
        except Exception as exc:
            raise InferenceError(f"forecast batch of {x.shape[1]} failed: {exc}") from exc
