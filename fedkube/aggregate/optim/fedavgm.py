"""FedAvgM: server momentum (Hsu et al. 2019; Reddi et al. 2021). Pure module.

``delta = aggregated - current; m = momentum * m + delta;
next = current + learning_rate * m``, with ``m`` starting at 0. State keys are
``"m/<tensor>"``. Only floating tensors are optimized; integer/bool tensors
take the aggregated value. With ``momentum=0, learning_rate=1`` it is FedAvg.
"""

from __future__ import annotations

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


class FedAvgM(ServerOptimizer):
    def __init__(self, *, learning_rate: float = 1.0, momentum: float = 0.9) -> None:
        self.learning_rate = check_rate("learning_rate", learning_rate, low=0.0)
        self.momentum = check_unit("momentum", momentum)

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
            m = load_state(state, f"m/{name}", cur, dt, 0.0)
            m *= self.momentum
            m += delta(cur, agg, dt)
            out = m * self.learning_rate
            out += cur
            nxt[name] = out.astype(cur.dtype, copy=False)
            new_state[f"m/{name}"] = m
        return nxt, new_state
