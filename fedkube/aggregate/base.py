"""Aggregator and ServerOptimizer interfaces. Pure module (numpy only)."""

from __future__ import annotations

import abc

import numpy as np

from fedkube.model import MappedModel, ModelHeader

Tensors = dict[str, np.ndarray]


class Pending(abc.ABC):
    """One update being folded in chunk by chunk (`Aggregator.begin`), as it streams in.

    The caller checks every chunk before it folds it, then either commits the
    update (it counts) or aborts it (a later chunk or the digest failed): abort
    leaves the aggregator bit for bit as it was before `begin`.
    """

    @abc.abstractmethod
    def fold(self, offset: int, values: np.ndarray) -> None:
        """Fold `values`: the update's bytes at byte `offset` of its data section, as
        a 1-D aligned array of the dtype of the tensor(s) there (a chunk never spans
        two dtypes; it may span several tensors of one). Chunks come in order."""

    @abc.abstractmethod
    def commit(self) -> None:
        """The update is whole and checked: it counts (n_updates, total_weight)."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Undo every fold of this update."""


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
    def begin(self, header: ModelHeader, weight: float) -> Pending:
        """Start folding an update with `header` (checked against the template: names,
        shapes, dtypes; its layout may differ) and `weight`, chunk by chunk."""

    @abc.abstractmethod
    def result(self, *, consume: bool = False) -> Tensors:
        """The aggregate. Raises ValueError when nothing was added. With `consume` the
        result may take over the aggregator's own buffers (no copy of the model):
        nothing may be added to it, nor asked of it, afterwards."""

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
