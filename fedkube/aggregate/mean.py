"""Weighted mean (FedAvg): a streaming, in-place weighted sum. Pure module (numpy/scipy).

Memory is O(model) whatever the number of updates: each added model is folded
into running sums with BLAS ``axpy`` (``acc += weight * x``) straight from the
memory-mapped file, and nothing of it is kept afterwards.

Accumulators:

* every F32 tensor lives in ONE contiguous float32 buffer (a view per tensor).
  When an added file holds only F32 tensors laid out exactly like the template,
  the whole model is folded in with a single ``saxpy`` over ``model.flat()``;
* F16 tensors accumulate in float32, F64 in float64;
* integer and bool tensors accumulate in float64 and are rounded (half to even)
  back to their dtype by `result()`. Their values should stay below 2**53.

Sums are float32 for F32 models, so the mean of ``n`` updates carries a
relative error of about ``n * 6e-8``. Hierarchical FedAvg (combiner partials
merged with weight = their total weight) equals flat FedAvg up to that
rounding for floating tensors; integer tensors are rounded at each level, so a
two-level mean of an integer tensor may differ from the flat one by 1.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from scipy.linalg.blas import daxpy, saxpy

from fedkube.aggregate._common import (
    FLOAT_CODES,
    check_model,
    check_weight,
    to_template_dtype,
)
from fedkube.aggregate.base import Aggregator, Tensors
from fedkube.model import MappedModel, ModelHeader

# BLAS takes a 32-bit element count: fold longer arrays in slices.
_BLAS_MAX = 1 << 30
# Elements per slice on the non-BLAS path (scratch buffer size).
_CHUNK = 1 << 18

_F32 = np.dtype(np.float32)
_F64 = np.dtype(np.float64)
_AXPY: dict[np.dtype[Any], Callable[..., np.ndarray]] = {_F32: saxpy, _F64: daxpy}


def _acc_dtype(code: str) -> np.dtype[Any]:
    return _F64 if code == "F64" or code not in FLOAT_CODES else _F32


class WeightedMean(Aggregator):
    """``sum(w_i * x_i) / sum(w_i)`` computed one update at a time, in place.

    `use_flat=False` disables the single-call path (for benchmarks and tests).
    `n_flat` counts the updates that took it.
    """

    def __init__(self, template: ModelHeader, *, use_flat: bool = True) -> None:
        super().__init__(template)
        n32 = sum(t.numel for t in template.tensors if t.dtype == "F32")
        self._acc32 = np.zeros(n32, dtype=_F32)
        self._acc: dict[str, np.ndarray] = {}
        off = 0
        for t in template.tensors:
            if t.dtype == "F32":
                self._acc[t.name] = self._acc32[off : off + t.numel]
                off += t.numel
            else:
                self._acc[t.name] = np.zeros(t.numel, dtype=_acc_dtype(t.dtype))
        self._layout = [(t.name, t.dtype, t.start, t.end) for t in template.tensors]
        self._flat_ok = (
            use_flat and bool(template.tensors) and all(t.dtype == "F32" for t in template.tensors)
        )
        self._scratch: dict[np.dtype[Any], np.ndarray] = {}
        self.n_flat = 0

    def add(self, model: MappedModel, weight: float) -> None:
        w = check_weight(weight)
        check_model(self.template, model)  # before touching the sums
        flat = None
        if (
            self._flat_ok
            and [(t.name, t.dtype, t.start, t.end) for t in model.header.tensors] == self._layout
        ):
            flat = model.flat("F32")
        if flat is not None:
            self._axpy(self._acc32, flat, w)
            self.n_flat += 1
        else:
            for info in model.header.tensors:
                self._axpy(self._acc[info.name], model.tensor(info).reshape(-1), w)
        self.n_updates += 1
        self.total_weight += w

    def result(self) -> Tensors:
        if self.n_updates == 0:
            raise ValueError("weighted mean of no updates: add() was never called")
        out: Tensors = {}
        for t in self.template.tensors:
            mean = self._acc[t.name] / self.total_weight  # a new array, sums kept
            out[t.name] = to_template_dtype(mean, t).reshape(t.shape)
        return out

    def close(self) -> None:
        self._scratch.clear()

    # ------------------------------------------------------------------ internals

    def _axpy(self, acc: np.ndarray, x: np.ndarray, w: float) -> None:
        """``acc += w * x`` in place; `acc` is a 1-D contiguous accumulator."""
        n = acc.size
        if n == 0:
            return
        fn = _AXPY.get(acc.dtype)
        if fn is not None and x.dtype == acc.dtype and x.flags.aligned and x.flags.c_contiguous:
            # f2py passes aligned contiguous arrays of the right dtype through
            # without a copy and returns `y` itself (checked by the unit tests).
            for i in range(0, n, _BLAS_MAX):
                y = acc[i : i + _BLAS_MAX]
                r = fn(x[i : i + _BLAS_MAX], y, a=w)
                if r is not y:  # pragma: no cover - a wrapper that copied
                    y[...] = r
            return
        # Other dtypes (F16, integers, bool) or misaligned data: bounded slices
        # through a small scratch buffer, cast to the accumulator dtype first.
        scratch = self._scratch.get(acc.dtype)
        if scratch is None or scratch.size < min(n, _CHUNK):
            scratch = np.empty(min(max(n, 1), _CHUNK), dtype=acc.dtype)
            self._scratch[acc.dtype] = scratch
        for i in range(0, n, scratch.size):
            j = min(n, i + scratch.size)
            s = scratch[: j - i]
            np.multiply(x[i:j], w, out=s, dtype=acc.dtype)
            np.add(acc[i:j], s, out=acc[i:j])
