"""Coordinate-wise median (Yin et al. 2018). Pure module apart from its spill files.

Unweighted: every update counts once, whatever its weight (weights must still
be finite and > 0; their sum is kept in `total_weight`). With an even number of
updates the median is the mean of the two middle values.

Memory cost: the median needs every update, so each added model is spilled to a
float32 file (disk ``O(n_updates x model)``, 4 bytes per coordinate per update)
and the result is computed coordinate-chunk by chunk through ``np.memmap``:
RAM ``O(n_updates x chunk)`` (bounded by ``chunk_bytes``, 64 MiB by default)
plus the output model. See `fedkube.aggregate._spill`.
"""

from __future__ import annotations

import numpy as np

from fedkube.aggregate._spill import SpillAggregator


class CoordinateMedian(SpillAggregator):
    """The per-coordinate median of all added updates."""

    def _reduce(self, block: np.ndarray) -> np.ndarray:
        return np.median(block, axis=0, overwrite_input=True)
