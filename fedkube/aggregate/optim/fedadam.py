"""FedAdam (Reddi et al. 2021): ``v = beta2 * v + (1 - beta2) * delta**2``. Pure module.

See `fedkube.aggregate.optim._adaptive` for the shared update and initial state.
"""

from __future__ import annotations

import numpy as np

from fedkube.aggregate.optim._adaptive import AdaptiveOptimizer


class FedAdam(AdaptiveOptimizer):
    def _update_v(self, v: np.ndarray, delta_sq: np.ndarray) -> None:
        v *= self.beta2
        delta_sq *= 1.0 - self.beta2
        v += delta_sq
