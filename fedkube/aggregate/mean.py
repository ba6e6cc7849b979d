"""Weighted mean (FedAvg): a streaming, in-place weighted sum. Pure module (numpy/scipy).

Memory is O(model) whatever the number of updates: each added model is folded
into running sums with BLAS ``axpy`` (``acc += weight * x``), either straight
from a memory-mapped file (`add`) or chunk by chunk as it streams in
(`begin`, used by `fedkube.ingest`), and nothing of it is kept afterwards. A
streamed update can be aborted after some of its chunks were folded: the old
values of every range it changed are in an undo log (`_undo.py`), and abort
restores them bit for bit.

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
from pathlib import Path
from typing import Any

import numpy as np
from scipy.linalg.blas import daxpy, saxpy

from fedkube.aggregate._common import (
    FLOAT_CODES,
    check_model,
    check_weight,
    segments,
    to_template_dtype,
)
from fedkube.aggregate._undo import UndoLog
from fedkube.aggregate.base import Aggregator, Pending, Tensors
from fedkube.model import MappedModel, ModelHeader, check_compatible

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
    `n_flat` counts the updates that took it. `undo_dir` is where the undo log of
    a streamed update (`begin`) keeps its scratch file (the system's temporary
    directory by default).
    """

    def __init__(
        self, template: ModelHeader, *, use_flat: bool = True, undo_dir: Path | None = None
    ) -> None:
        super().__init__(template)
        self._undo = UndoLog(undo_dir)
        self._pending = False
        self._consumed = False
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

    def begin(self, header: ModelHeader, weight: float) -> Pending:
        if self._pending:
            raise ValueError("an update is already being folded: commit or abort it first")
        pending = _MeanPending(self, header, check_weight(weight))
        self._pending = True
        return pending

    def result(self, *, consume: bool = False) -> Tensors:
        if self.n_updates == 0:
            raise ValueError("weighted mean of no updates: add() was never called")
        if self._consumed:
            raise ValueError("the result was taken with consume=True: the sums are gone")
        self._consumed = consume
        out: Tensors = {}
        for t in self.template.tensors:
            acc = self._acc[t.name]
            if consume:  # divide in place: F32 tensors are then views of the sums
                mean = np.divide(acc, self.total_weight, out=acc)
            else:
                mean = acc / self.total_weight  # a new array, sums kept
            out[t.name] = to_template_dtype(mean, t).reshape(t.shape)
        return out

    def close(self) -> None:
        self._scratch.clear()
        self._undo.close()

    # ------------------------------------------------------------------ internals

    def _axpy(self, acc: np.ndarray, x: np.ndarray, w: float) -> None:
        """``acc += w * x`` in place; `acc` is a 1-D contiguous accumulator.

        Always through BLAS (`saxpy`/`daxpy`), so a value is folded the same way
        whatever the file's layout or chunking (BLAS fuses the multiply and the add,
        numpy would round twice): misaligned data and other dtypes (F16, integers,
        bool) go through a small scratch buffer of the accumulator's dtype first."""
        n = acc.size
        if n == 0:
            return
        fn = _AXPY[acc.dtype]
        if x.dtype == acc.dtype and x.flags.aligned and x.flags.c_contiguous:
            # f2py passes aligned contiguous arrays of the right dtype through
            # without a copy and returns `y` itself (checked by the unit tests).
            for i in range(0, n, _BLAS_MAX):
                self._blas(fn, x[i : i + _BLAS_MAX], acc[i : i + _BLAS_MAX], w)
            return
        scratch = self._scratch.get(acc.dtype)
        if scratch is None or scratch.size < min(n, _CHUNK):
            scratch = np.empty(min(max(n, 1), _CHUNK), dtype=acc.dtype)
            self._scratch[acc.dtype] = scratch
        for i in range(0, n, scratch.size):
            j = min(n, i + scratch.size)
            s = scratch[: j - i]
            np.copyto(s, x[i:j], casting="unsafe")
            self._blas(fn, s, acc[i:j], w)

    @staticmethod
    def _blas(fn: Callable[..., np.ndarray], x: np.ndarray, y: np.ndarray, w: float) -> None:
        r = fn(x, y, a=w)
        if r is not y:  # pragma: no cover - a wrapper that copied
            y[...] = r


class _MeanPending(Pending):
    """A streamed update: each chunk's range of the sums goes to the undo log, then
    ``sums += weight * chunk``. When the update's layout is the template's and all
    F32, a chunk is one range of the flat float32 sums whatever tensors it spans."""

    def __init__(self, mean: WeightedMean, header: ModelHeader, weight: float) -> None:
        check_compatible(mean.template, header)
        self.mean = mean
        self.weight = weight
        self.header = header
        self.flat = (
            mean._flat_ok
            and [(t.name, t.dtype, t.start, t.end) for t in header.tensors] == mean._layout
        )
        self.starts = [t.start for t in header.tensors]
        self.open = True

    def fold(self, offset: int, values: np.ndarray) -> None:
        if not self.open:
            raise ValueError("this update was committed or aborted")
        if self.flat:
            lo = offset // _F32.itemsize
            self._fold(self.mean._acc32[lo : lo + values.size], values)
            return
        for t, first, part in segments(self.header, self.starts, offset, values):
            self._fold(self.mean._acc[t.name][first : first + part.size], part)

    def _fold(self, acc: np.ndarray, x: np.ndarray) -> None:
        self.mean._undo.save(acc)
        self.mean._axpy(acc, x, self.weight)

    def commit(self) -> None:
        self._close()
        self.mean._undo.clear()
        self.mean.n_updates += 1
        self.mean.total_weight += self.weight
        if self.flat:
            self.mean.n_flat += 1

    def abort(self) -> None:
        if self.open:
            self._close()
            self.mean._undo.restore()

    def _close(self) -> None:
        if not self.open:
            raise ValueError("this update was committed or aborted")
        self.open = False
        self.mean._pending = False
