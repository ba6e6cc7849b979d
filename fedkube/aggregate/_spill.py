"""Spill-to-disk base for aggregators that need every update at once (median, trimmed mean).

Each added model is written, in template order, as one flat float32 file in a
private spill directory (disk: ``n_updates x model_numel x 4`` bytes). `result()`
walks the coordinates chunk by chunk: for each chunk it reads that slice of
every spill file through ``np.memmap`` into an ``(n_updates, chunk)`` float32
block and reduces it along the update axis. RAM is therefore
``O(n_updates x chunk)`` (``chunk_bytes``, 64 MiB by default, bounds the block)
plus the output model, never ``O(n_updates x model)``.

Spilling converts every tensor to float32: F64 tensors lose precision and
integer values above 2**24 are not exact. Integer/bool results are rounded
(half to even) back to their dtype. `close()` (or garbage collection) removes
the spill directory.
"""

from __future__ import annotations

import abc
import os
import shutil
import tempfile
import weakref
from pathlib import Path

import numpy as np

from fedkube.aggregate._common import (
    FLOAT_CODES,
    check_model,
    check_weight,
    numpy_dtype,
    segments,
    to_template_dtype,
)
from fedkube.aggregate.base import Aggregator, Pending, Tensors
from fedkube.model import MappedModel, ModelHeader, check_compatible

DEFAULT_CHUNK_BYTES = 64 * 1024 * 1024
_WRITE_CHUNK = 1 << 20  # elements converted at a time for non-F32 tensors
_F32 = np.dtype(np.float32)


class SpillAggregator(Aggregator):
    """Keeps every update as a float32 spill file; subclasses reduce one chunk at a time."""

    def __init__(
        self,
        template: ModelHeader,
        *,
        spill_dir: Path | None = None,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    ) -> None:
        super().__init__(template)
        if chunk_bytes <= 0:
            raise ValueError(f"chunk_bytes must be > 0, got {chunk_bytes}")
        if spill_dir is not None:
            Path(spill_dir).mkdir(parents=True, exist_ok=True)
        # A private directory, so several aggregators may share `spill_dir`.
        self.spill_path = Path(tempfile.mkdtemp(prefix="fedkube-spill-", dir=spill_dir))
        self._cleanup = weakref.finalize(self, shutil.rmtree, self.spill_path, True)
        self.chunk_bytes = chunk_bytes
        self._files: list[Path] = []
        self._numel = sum(t.numel for t in template.tensors)

    @abc.abstractmethod
    def _reduce(self, block: np.ndarray) -> np.ndarray:
        """Reduce an ``(n_updates, m)`` float32 block (may be overwritten) to ``(m,)``."""

    def add(self, model: MappedModel, weight: float) -> None:
        if not self._cleanup.alive:
            raise ValueError("aggregator is closed")
        w = check_weight(weight)
        check_model(self.template, model)
        path = self.spill_path / f"update-{len(self._files):06d}.f32"
        infos = {t.name: t for t in model.header.tensors}
        try:
            with open(path, "wb") as f:
                for t in self.template.tensors:
                    x = model.tensor(infos[t.name]).reshape(-1)
                    if x.dtype == _F32:
                        if x.size:
                            f.write(x.data.cast("B"))
                        continue
                    for i in range(0, x.size, _WRITE_CHUNK):
                        f.write(x[i : i + _WRITE_CHUNK].astype(_F32).tobytes())
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        self._spilled(path, w)

    def begin(self, header: ModelHeader, weight: float) -> Pending:
        if not self._cleanup.alive:
            raise ValueError("aggregator is closed")
        return _SpillPending(self, header, check_weight(weight))

    def _spilled(self, path: Path, weight: float) -> None:
        self._files.append(path)
        self.n_updates += 1
        self.total_weight += weight

    def chunk_size(self) -> int:
        """Coordinates reduced at a time for the current number of updates."""
        n = max(1, len(self._files))
        return max(1, self.chunk_bytes // (n * _F32.itemsize))

    def result(self, *, consume: bool = False) -> Tensors:
        if not self._cleanup.alive:
            raise ValueError("aggregator is closed")
        n = len(self._files)
        if n == 0:
            raise ValueError(f"{type(self).__name__} of no updates: add() was never called")
        # Floating tensors are filled in their own dtype; integer/bool ones in
        # float64 first, then rounded.
        outs = [
            np.empty(t.numel, dtype=numpy_dtype(t) if t.dtype in FLOAT_CODES else np.float64)
            for t in self.template.tensors
        ]
        # Tensor k covers flat coordinates [bounds[k], bounds[k + 1]).
        bounds = np.cumsum([0, *(t.numel for t in self.template.tensors)]).tolist()
        step = min(self.chunk_size(), max(1, self._numel))
        block = np.empty((n, step), dtype=_F32)
        k0 = 0
        for lo in range(0, self._numel, step):
            hi = min(self._numel, lo + step)
            m = hi - lo
            view = block[:, :m] if m < step else block
            for r, path in enumerate(self._files):
                mm = np.memmap(path, dtype=_F32, mode="r", offset=lo * _F32.itemsize, shape=(m,))
                view[r] = mm
                del mm
            values = self._reduce(view)
            # Scatter the chunk into the tensors it overlaps.
            while bounds[k0 + 1] <= lo:
                k0 += 1
            k = k0
            while k < len(outs) and bounds[k] < hi:
                a, b = max(lo, bounds[k]), min(hi, bounds[k + 1])
                outs[k][a - bounds[k] : b - bounds[k]] = values[a - lo : b - lo]
                k += 1
        return {
            t.name: to_template_dtype(out, t).reshape(t.shape)
            for t, out in zip(self.template.tensors, outs, strict=True)
        }

    def close(self) -> None:
        self._files.clear()
        self._cleanup()


class _SpillPending(Pending):
    """A streamed update written, as float32 in template order, to a spill file of its
    own; the file joins the aggregator on commit and is removed on abort."""

    def __init__(self, agg: SpillAggregator, header: ModelHeader, weight: float) -> None:
        check_compatible(agg.template, header)
        self.agg = agg
        self.weight = weight
        self.header = header
        self.starts = [t.start for t in header.tensors]
        # element offset of every tensor in the template-ordered spill file
        self.base: dict[str, int] = {}
        pos = 0
        for t in agg.template.tensors:
            self.base[t.name] = pos
            pos += t.numel
        self.path = agg.spill_path / f"pending-{os.urandom(6).hex()}.f32"
        self.fd: int | None = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.ftruncate(self.fd, pos * _F32.itemsize)

    def fold(self, offset: int, values: np.ndarray) -> None:
        if self.fd is None:
            raise ValueError("this update was committed or aborted")
        for t, first, part in segments(self.header, self.starts, offset, values):
            data = part if part.dtype == _F32 else part.astype(_F32)
            raw = data.data.cast("B")
            at = (self.base[t.name] + first) * _F32.itemsize
            done = 0
            while done < len(raw):
                done += os.pwrite(self.fd, raw[done:], at + done)

    def commit(self) -> None:
        if self.fd is None:
            raise ValueError("this update was committed or aborted")
        os.close(self.fd)
        self.fd = None
        final = self.agg.spill_path / f"update-{len(self.agg._files):06d}.f32"
        os.replace(self.path, final)
        self.agg._spilled(final, self.weight)

    def abort(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
            self.path.unlink(missing_ok=True)
