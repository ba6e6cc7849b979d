"""Shared base of FedAdagrad, FedAdam and FedYogi (Reddi et al. 2021, Algorithm 2).

For each floating tensor, with the pseudo-gradient ``delta = aggregated - current``::

    m    = beta1 * m + (1 - beta1) * delta
    v    = <strategy update of v with delta**2>
    next = current + learning_rate * m / (sqrt(v) + tau)

Initial state: ``m = 0`` and ``v = tau**2`` (the paper's ``v_{-1} >= tau**2``).
No bias correction (as in the paper). State keys are ``"m/<tensor>"`` and
``"v/<tensor>"``; state is float32 (float64 for float64 tensors). Integer and
bool tensors (e.g. BatchNorm ``num_batches_tracked``) take the aggregated value.
`step()` never modifies its inputs.
"""

from __future__ import annotations

import abc

import numpy as np

from fedkube.aggregate.base import ServerOptimizer, Tensors
from fedkube.aggregate.optim._common import (
    check_pair,
    check_rate,
    check_unit,
    delta,
    is_float,
    load_state,
    state_dtype,
)


class AdaptiveOptimizer(ServerOptimizer):
    def __init__(
        self,
        *,
        learning_rate: float = 0.01,
        beta1: float = 0.9,
        beta2: float = 0.99,
        tau: float = 1e-3,
    ) -> None:
        self.learning_rate = check_rate("learning_rate", learning_rate, low=0.0)
        self.beta1 = check_unit("beta1", beta1)
        self.beta2 = check_unit("beta2", beta2)
        self.tau = check_rate("tau", tau, low=0.0)

    @abc.abstractmethod
    def _update_v(self, v: np.ndarray, delta_sq: np.ndarray) -> None:
        """Update the second-moment estimate `v` in place (it is a private copy)."""

    def step(
        self, current: Tensors, aggregated: Tensors, state: Tensors
    ) -> tuple[Tensors, Tensors]:
        check_pair(current, aggregated)
        nxt: Tensors = {}
        new_state: Tensors = {}
        for name, cur in current.items():
            agg = aggregated[name]
            if not is_float(cur):
                nxt[name] = agg
                continue
            dt = state_dtype(cur)
            d = delta(cur, agg, dt)
            m = load_state(state, f"m/{name}", cur, dt, 0.0)
            m *= self.beta1
            m += (1.0 - self.beta1) * d
            v = load_state(state, f"v/{name}", cur, dt, self.tau**2)
            self._update_v(v, np.square(d, out=d))
            upd = np.sqrt(v)
            upd += self.tau
            np.divide(m, upd, out=upd)
            upd *= self.learning_rate
            upd += cur
            nxt[name] = upd.astype(cur.dtype, copy=False)
            new_state[f"m/{name}"] = m
            new_state[f"v/{name}"] = v
        return nxt, new_state
