"""FedAdagrad (Reddi et al. 2021): ``v = v + delta**2``. Pure module.

``beta2`` is accepted (the spec shares it with FedAdam/FedYogi) but unused.
See `fedkube.aggregate.optim._adaptive` for the shared update and initial state.
"""

from __future__ import annotations

import numpy as np

from fedkube.aggregate.optim._adaptive import AdaptiveOptimizer


class FedAdagrad(AdaptiveOptimizer):
    def _update_v(self, v: np.ndarray, delta_sq: np.ndarray) -> None:
        v += delta_sq
