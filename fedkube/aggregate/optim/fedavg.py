"""FedAvg server optimizer: the next global model is the aggregate. Pure module."""

from __future__ import annotations

from fedkube.aggregate.base import ServerOptimizer, Tensors
from fedkube.aggregate.optim._common import check_pair


class FedAvg(ServerOptimizer):
    """Identity: ``next = aggregated`` (server learning rate 1, no state).

    The returned model shares its arrays with `aggregated` (no copy); nothing
    is modified.
    """

    def step(
        self, current: Tensors, aggregated: Tensors, state: Tensors
    ) -> tuple[Tensors, Tensors]:
        check_pair(current, aggregated)
        return {name: aggregated[name] for name in current}, {}
