"""Coordinate-wise trimmed mean (Yin et al. 2018). Pure module apart from its spill files.

For each coordinate the ``k = floor(trim_ratio * n)`` largest and ``k``
smallest of the ``n`` update values are dropped and the remaining ``n - 2k``
are averaged (in float64). Unweighted: every update counts once (weights must
still be finite and > 0; their sum is kept in `total_weight`). ``trim_ratio``
is in [0, 0.5); 0 gives the plain unweighted mean.

Memory cost: the trimmed mean needs every update, so each added model is
spilled to a float32 file (disk ``O(n_updates x model)``, 4 bytes per
coordinate per update) and the result is computed coordinate-chunk by chunk
through ``np.memmap``: RAM ``O(n_updates x chunk)`` (bounded by
``chunk_bytes``, 64 MiB by default) plus the output model. See
`fedkube.aggregate._spill`.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from fedkube.aggregate._spill import DEFAULT_CHUNK_BYTES, SpillAggregator
from fedkube.model import ModelHeader


def trim_count(trim_ratio: float, n: int) -> int:
    """Values dropped at each end: ``floor(trim_ratio * n)``, robust to float noise."""
    # 0.29 * 100 == 28.999999999999996 in floating point: nudge before flooring.
    return min(math.floor(trim_ratio * n + 1e-9), (n - 1) // 2)


class TrimmedMean(SpillAggregator):
    """The per-coordinate mean after trimming ``floor(trim_ratio * n)`` values at each end."""

    def __init__(
        self,
        template: ModelHeader,
        trim_ratio: float = 0.1,
        *,
        spill_dir: Path | None = None,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    ) -> None:
        if not (math.isfinite(trim_ratio) and 0.0 <= trim_ratio < 0.5):
            raise ValueError(f"trim_ratio must be in [0, 0.5), got {trim_ratio!r}")
        super().__init__(template, spill_dir=spill_dir, chunk_bytes=chunk_bytes)
        self.trim_ratio = float(trim_ratio)

    def _reduce(self, block: np.ndarray) -> np.ndarray:
        n = block.shape[0]
        k = trim_count(self.trim_ratio, n)
        if k:
            # After partitioning on both cut points, rows k..n-k-1 hold exactly
            # the middle order statistics of every column.
            block.partition([k, n - k - 1], axis=0)
            block = block[k : n - k]
        return block.mean(axis=0, dtype=np.float64)
