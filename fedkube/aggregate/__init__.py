"""Aggregation math: aggregators, server optimizers and their factories.

Pure package: numpy/scipy, `fedkube.model` and `fedkube.spec` only; it imports
nothing of the store, state, gRPC or network layers.
"""

from __future__ import annotations

from pathlib import Path

from fedkube.aggregate.base import Aggregator, ServerOptimizer, Tensors
from fedkube.aggregate.mean import WeightedMean
from fedkube.aggregate.median import CoordinateMedian
from fedkube.aggregate.optim import FedAdagrad, FedAdam, FedAvg, FedAvgM, FedYogi
from fedkube.aggregate.optim._adaptive import AdaptiveOptimizer
from fedkube.aggregate.partials import (
    MeanOfPartials,
    MedianOfPartials,
    Partial,
    PartialError,
    PartialMerge,
    TrimmedMeanOfPartials,
    make_partial_merge,
    partial_weight,
    weighted_median,
    weighted_trimmed_mean,
)
from fedkube.aggregate.trimmed_mean import TrimmedMean
from fedkube.model import ModelHeader
from fedkube.spec import (
    AggregatorSpec,
    FedAdagradOptimizer,
    FedAdamOptimizer,
    FedAvgAggregator,
    FedAvgMOptimizer,
    FedAvgOptimizer,
    FedYogiOptimizer,
    MedianAggregator,
    ServerOptimizerSpec,
    TrimmedMeanAggregator,
)

__all__ = [
    "Aggregator",
    "CoordinateMedian",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedYogi",
    "MeanOfPartials",
    "MedianOfPartials",
    "Partial",
    "PartialError",
    "PartialMerge",
    "ServerOptimizer",
    "Tensors",
    "TrimmedMean",
    "TrimmedMeanOfPartials",
    "WeightedMean",
    "make_aggregator",
    "make_partial_merge",
    "make_server_optimizer",
    "partial_weight",
    "weighted_median",
    "weighted_trimmed_mean",
]


def make_aggregator(
    spec: AggregatorSpec, template: ModelHeader, *, spill_dir: Path | None = None
) -> Aggregator:
    """The aggregator for `spec` (``spec.aggregator`` of a job). `spill_dir` is for median
    and trimmed mean, which spill every update to disk (see their modules), and for
    the undo log of the weighted mean (`fedkube.aggregate._undo`)."""
    if isinstance(spec, FedAvgAggregator):
        return WeightedMean(template, undo_dir=spill_dir)
    if isinstance(spec, MedianAggregator):
        return CoordinateMedian(template, spill_dir=spill_dir)
    if isinstance(spec, TrimmedMeanAggregator):
        return TrimmedMean(template, spec.trim_ratio, spill_dir=spill_dir)
    raise ValueError(f"unknown aggregator {getattr(spec, 'name', spec)!r}")


def make_server_optimizer(spec: ServerOptimizerSpec) -> ServerOptimizer:
    """The server optimizer for `spec` (``spec.server_optimizer`` of a job)."""
    if isinstance(spec, FedAvgOptimizer):
        return FedAvg()
    if isinstance(spec, FedAvgMOptimizer):
        return FedAvgM(learning_rate=spec.learning_rate, momentum=spec.momentum)
    adaptive: dict[str, type[AdaptiveOptimizer]] = {
        "fedadam": FedAdam,
        "fedyogi": FedYogi,
        "fedadagrad": FedAdagrad,
    }
    if isinstance(spec, FedAdamOptimizer | FedYogiOptimizer | FedAdagradOptimizer):
        return adaptive[spec.name](
            learning_rate=spec.learning_rate, beta1=spec.beta1, beta2=spec.beta2, tau=spec.tau
        )
    raise ValueError(f"unknown server optimizer {getattr(spec, 'name', spec)!r}")
