"""FedYogi (Reddi et al. 2021): ``v = v - (1 - beta2) * delta**2 * sign(v - delta**2)``.

Pure module. See `fedkube.aggregate.optim._adaptive` for the shared update and
initial state.
"""

from __future__ import annotations

import numpy as np

from fedkube.aggregate.optim._adaptive import AdaptiveOptimizer


class FedYogi(AdaptiveOptimizer):
    def _update_v(self, v: np.ndarray, delta_sq: np.ndarray) -> None:
        s = np.sign(v - delta_sq)
        s *= delta_sq
        s *= 1.0 - self.beta2
        v -= s
