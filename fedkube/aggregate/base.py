"""Aggregator and ServerOptimizer interfaces. Pure module (numpy only)."""

from __future__ import annotations

import abc

import numpy as np

from fedkube.model import MappedModel, ModelHeader

Tensors = dict[str, np.ndarray]


class Aggregator(abc.ABC):
    """Combines client updates (or combiner partials) one at a time.

    `template` is the header of the global model: every added model has exactly
    its names, shapes and dtypes (the caller checked that). `result()` returns
    tensors in the template's order and dtypes.
    """

    def __init__(self, template: ModelHeader) -> None:
        self.template = template
        self.n_updates = 0
        self.total_weight = 0.0

    @abc.abstractmethod
    def add(self, model: MappedModel, weight: float) -> None:
        """Fold one model in with `weight` (> 0, e.g. its number of examples)."""

    @abc.abstractmethod
    def result(self) -> Tensors:
        """The aggregate. Raises ValueError when nothing was added."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release spill files or buffers."""


class ServerOptimizer(abc.ABC):
    """Turns (current global, aggregated client models) into the next global model.

    Works on the pseudo-gradient ``delta = aggregated - current`` (Reddi et al.
    2021). `state` holds named arrays (momentum, second moments); it is saved
    with each round so a restarted reducer continues exactly.
    """

    @abc.abstractmethod
    def step(
        self, current: Tensors, aggregated: Tensors, state: Tensors
    ) -> tuple[Tensors, Tensors]:
        """Return (next global model, next state). Inputs are not modified."""
