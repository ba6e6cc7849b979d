"""Merging the combiners' partial aggregates into a round's aggregate. Pure module (numpy only).

Every combiner aggregates its own clients with the job's aggregator and returns
one partial model with two numbers: `weight` (for ``fedavg`` the examples
behind it, as capped by the weight policy) and `n_updates` (the updates it
accepted, counted by the combiner, never claimed by a client). The reducer
merges the partials with the merge of the job's aggregator:

``fedavg`` -> `MeanOfPartials`
    ``sum(weight_i * x_i) / sum(weight_i)``: the partials are example-weighted
    means, so this is exactly the flat FedAvg of every update (hierarchical
    FedAvg equals flat FedAvg). Streamed, memory O(model).

``median`` -> `MedianOfPartials`
    Per coordinate, the weighted median of the combiners' medians with
    weights ``n_i = n_updates``: sort the values ``v_(1) <= ... <= v_(k)``,
    take the first ``j`` whose cumulative weight ``C_j = n_(1) + ... + n_(j)``
    reaches half the total ``N``: ``2 C_j >= N``. The result is ``v_(j)``, or
    ``(v_(j) + v_(j+1)) / 2`` when ``2 C_j == N`` exactly. Two partials of
    equal weight give their mean; with unequal weights the heavier one's value.
    A set of partials backed by fewer than half of the round's updates can
    never pull the result outside the range of the other partials' values.

``trimmedmean`` -> `TrimmedMeanOfPartials`
    Per coordinate, the weighted trimmed mean with the job's ``trim_ratio``
    ``r`` and weights ``n_i = n_updates``: sort the values; value ``v_(i)``
    covers the interval ``[C_(i-1), C_i]`` of the weight axis ``[0, N]``;
    keep the part of every interval inside ``[r N, (1 - r) N]`` (a value
    whose interval straddles a cut keeps only its inner part) and average by
    kept weight: ``sum(kept_i * v_(i)) / ((1 - 2r) N)``. ``r = 0`` is the
    ``n_updates``-weighted mean. Partials whose weight lies entirely in the
    outer ``r N`` at either end do not move the result at all.

The robust merges never use `weight` (the clients' claims). They stream over
coordinate chunks: for each chunk of each tensor they copy that slice of every
partial into an ``(n_partials, chunk)`` float64 block and reduce it along the
partial axis, so RAM is ``O(n_partials x chunk)`` (about ``chunk_bytes`` for
the block and the reduction's temporaries, 64 MiB by default) plus the output
model; the partials themselves stay memory-mapped (`MappedModel`). Values are
merged in float64 and cast back to the template's dtypes (integer and bool
tensors rounded half to even). With a single partial every merge returns it
unchanged.

Partials of weight 0 carry nothing and are left out. Callers check that the
values are finite (`fedkube.model.check_finite`): NaN has no place in an order.
"""

from __future__ import annotations

import abc
import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedkube.aggregate._common import FLOAT_CODES, numpy_dtype, to_template_dtype
from fedkube.aggregate.base import Tensors
from fedkube.aggregate.mean import WeightedMean
from fedkube.model import MappedModel, ModelHeader, check_compatible
from fedkube.spec import (
    AggregatorSpec,
    FedAvgAggregator,
    MedianAggregator,
    TrimmedMeanAggregator,
)

DEFAULT_CHUNK_BYTES = 64 * 1024 * 1024
# The reduction of an (n, m) float64 block allocates a few more arrays of that
# size (sort order, sorted values, cumulative weights, ...): the block is sized
# to chunk_bytes / _WORK_FACTOR so that the whole working set stays near chunk_bytes.
_WORK_FACTOR = 8
_F64 = np.dtype(np.float64)

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "MeanOfPartials",
    "MedianOfPartials",
    "Partial",
    "PartialError",
    "PartialMerge",
    "TrimmedMeanOfPartials",
    "make_partial_merge",
    "partial_weight",
    "weighted_median",
    "weighted_trimmed_mean",
]


@dataclass(frozen=True, kw_only=True)
class Partial:
    """One combiner's partial aggregate, open for reading.

    `name` identifies it in errors (the combiner); `weight` is the examples
    behind it (used by `MeanOfPartials` only); `n_updates` the updates the
    combiner accepted (used by the robust merges).
    """

    name: str
    model: MappedModel
    weight: float
    n_updates: int


def partial_weight(name: str, weight: object) -> float:
    """A partial's `weight` as a float; PartialError unless it is finite and >= 0."""
    try:
        w = float(weight)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        w = math.nan
    if not (math.isfinite(w) and w >= 0.0):
        raise PartialError(name, f"weight must be a finite number >= 0, got {weight!r}")
    return w


class PartialError(ValueError):
    """One partial cannot be merged: `name` is the partial, `problem` what is wrong with it."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"partial {name!r}: {problem}")
        self.name = name
        self.problem = problem


# ------------------------------------------------------------------ the math on one block


def _sorted_columns(values: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(values sorted along axis 0, cumulative weights in that order), both ``(n, m)``."""
    v = np.asarray(values, dtype=_F64)
    w = np.asarray(weights, dtype=_F64)
    if v.ndim != 2 or w.shape != (v.shape[0],) or v.shape[0] == 0:
        raise ValueError(
            f"values must be (n, m) and weights (n,) with n >= 1, got {v.shape} and {w.shape}"
        )
    if not (np.isfinite(w).all() and (w > 0).all()):
        raise ValueError(f"weights must be finite and > 0, got {w.tolist()}")
    order = np.argsort(v, axis=0, kind="stable")
    sv = np.take_along_axis(v, order, axis=0)
    cw = np.cumsum(w[order], axis=0)
    return sv, cw


def weighted_median(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Per column of `values` ``(n, m)``, the median weighted by `weights` ``(n,)`` (> 0).

    The first sorted value whose cumulative weight ``C_j`` reaches half the total
    ``N`` (``2 C_j >= N``); the mean of it and the next value when ``2 C_j == N``
    exactly. Returns ``(m,)`` float64. Integer weights keep the tie test exact.
    """
    sv, cw = _sorted_columns(values, weights)
    n, m = sv.shape
    total = cw[-1]
    j = np.argmax(2.0 * cw >= total, axis=0)
    cols = np.arange(m)
    lo = sv[j, cols]
    tie = 2.0 * cw[j, cols] == total
    if not tie.any():
        return lo
    # A tie needs weight after j, so j + 1 < n there; the clip only guards the others.
    hi = sv[np.minimum(j + 1, n - 1), cols]
    return np.where(tie, lo / 2 + hi / 2, lo)  # halves first: no overflow near the max


def weighted_trimmed_mean(
    values: np.ndarray, weights: np.ndarray, *, trim_ratio: float
) -> np.ndarray:
    """Per column of `values` ``(n, m)``, the mean after trimming `trim_ratio` of the weight.

    Value ``v_(i)`` (sorted) covers ``[C_(i-1), C_i]`` of the weight axis
    ``[0, N]``; only its part inside ``[r N, (1 - r) N]`` is kept (fractionally
    when it straddles a cut) and the kept parts are averaged by weight.
    ``trim_ratio`` in [0, 0.5); 0 is the weighted mean. Returns ``(m,)`` float64.
    """
    r = _check_trim_ratio(trim_ratio)
    sv, cw = _sorted_columns(values, weights)
    total = cw[-1].copy()  # cw is overwritten below
    cut = r * total
    prev = np.empty_like(cw)
    prev[0] = 0.0
    prev[1:] = cw[:-1]
    np.minimum(cw, total - cut, out=cw)
    np.maximum(prev, cut, out=prev)
    kept = np.subtract(cw, prev, out=cw)
    np.clip(kept, 0.0, None, out=kept)
    den = kept.sum(axis=0)
    np.multiply(kept, sv, out=kept)
    return kept.sum(axis=0) / den


def _check_trim_ratio(trim_ratio: float) -> float:
    r = float(trim_ratio)
    if not (math.isfinite(r) and 0.0 <= r < 0.5):
        raise ValueError(f"trim_ratio must be in [0, 0.5), got {trim_ratio!r}")
    return r


# ------------------------------------------------------------------ merges of partial models


class PartialMerge(abc.ABC):
    """Merges the partials of one round (see the module docstring for each merge).

    `template` is the global model's header: every partial must have exactly its
    tensor names, shapes and dtypes, and the result has them too.
    """

    #: The Partial field each partial is weighted by.
    weight_field: str = "n_updates"

    def __init__(self, *, template: ModelHeader) -> None:
        self.template = template

    def merge(self, partials: Sequence[Partial]) -> Tensors:
        """The round's aggregate. Raises PartialError naming a partial with a wrong
        header or weight, ValueError when there is no partial or no weight at all."""
        kept = self._weighted(partials)
        return self._merge([p for p, _ in kept], np.array([w for _, w in kept], dtype=_F64))

    @abc.abstractmethod
    def _merge(self, partials: list[Partial], weights: np.ndarray) -> Tensors:
        """Merge partials of weights `weights` (all > 0, at least one partial)."""

    def _weight(self, p: Partial) -> float:
        if self.weight_field == "weight":
            return partial_weight(p.name, p.weight)
        try:
            n = operator.index(p.n_updates)
        except TypeError:
            n = -1
        if isinstance(p.n_updates, bool) or n < 0:
            raise PartialError(p.name, f"n_updates must be an integer >= 0, got {p.n_updates!r}")
        return float(n)

    def _weighted(self, partials: Sequence[Partial]) -> list[tuple[Partial, float]]:
        if not partials:
            raise ValueError("no partials to merge")
        out: list[tuple[Partial, float]] = []
        for p in partials:
            try:
                check_compatible(self.template, p.model.header)
            except ValueError as exc:  # ModelFileError
                raise PartialError(p.name, str(exc)) from None
            w = self._weight(p)
            if w > 0.0:
                out.append((p, w))
        if not out:
            names = ", ".join(p.name for p in partials)
            raise ValueError(f"the partials of {names} have a total {self.weight_field} of 0")
        return out


class MeanOfPartials(PartialMerge):
    """``fedavg``: the mean of the partials weighted by `Partial.weight`, streamed (O(model))."""

    weight_field = "weight"

    def _merge(self, partials: list[Partial], weights: np.ndarray) -> Tensors:
        agg = WeightedMean(self.template)
        try:
            for p, w in zip(partials, weights.tolist(), strict=True):
                agg.add(p.model, w)
            return agg.result()
        finally:
            agg.close()


class _ChunkedMerge(PartialMerge):
    """Robust merges: reduce ``(n_partials, chunk)`` float64 blocks, one chunk at a time."""

    def __init__(self, *, template: ModelHeader, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> None:
        super().__init__(template=template)
        if chunk_bytes <= 0:
            raise ValueError(f"chunk_bytes must be > 0, got {chunk_bytes}")
        self.chunk_bytes = chunk_bytes

    @abc.abstractmethod
    def _reduce(self, block: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Reduce an ``(n, m)`` float64 block to ``(m,)``."""

    def chunk_size(self, n_partials: int) -> int:
        """Coordinates reduced at a time for `n_partials` partials."""
        return max(1, self.chunk_bytes // (max(1, n_partials) * _F64.itemsize * _WORK_FACTOR))

    def _merge(self, partials: list[Partial], weights: np.ndarray) -> Tensors:
        n = len(partials)
        step = self.chunk_size(n)
        block = np.empty((n, step), dtype=_F64)
        infos = [{t.name: t for t in p.model.header.tensors} for p in partials]
        out: Tensors = {}
        for t in self.template.tensors:
            flats = [
                p.model.tensor(i[t.name]).reshape(-1) for p, i in zip(partials, infos, strict=True)
            ]
            dest = np.empty(t.numel, dtype=numpy_dtype(t) if t.dtype in FLOAT_CODES else _F64)
            for lo in range(0, t.numel, step):
                hi = min(t.numel, lo + step)
                view = block[:, : hi - lo]
                for r, flat in enumerate(flats):
                    view[r] = flat[lo:hi]
                dest[lo:hi] = view[0] if n == 1 else self._reduce(view, weights)
            del flats  # views into the mapped partials
            out[t.name] = to_template_dtype(dest, t).reshape(t.shape)
        return out


class MedianOfPartials(_ChunkedMerge):
    """``median``: the weighted coordinate median of the partials, weights = `n_updates`."""

    def _reduce(self, block: np.ndarray, weights: np.ndarray) -> np.ndarray:
        return weighted_median(block, weights)


class TrimmedMeanOfPartials(_ChunkedMerge):
    """``trimmedmean``: the weighted trimmed mean of the partials, weights = `n_updates`."""

    def __init__(
        self,
        *,
        template: ModelHeader,
        trim_ratio: float,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    ) -> None:
        super().__init__(template=template, chunk_bytes=chunk_bytes)
        self.trim_ratio = _check_trim_ratio(trim_ratio)

    def _reduce(self, block: np.ndarray, weights: np.ndarray) -> np.ndarray:
        return weighted_trimmed_mean(block, weights, trim_ratio=self.trim_ratio)


def make_partial_merge(
    spec: AggregatorSpec, template: ModelHeader, *, chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> PartialMerge:
    """The merge of the combiners' partials for `spec` (``spec.aggregator`` of a job)."""
    if isinstance(spec, FedAvgAggregator):
        return MeanOfPartials(template=template)
    if isinstance(spec, MedianAggregator):
        return MedianOfPartials(template=template, chunk_bytes=chunk_bytes)
    if isinstance(spec, TrimmedMeanAggregator):
        return TrimmedMeanOfPartials(
            template=template, trim_ratio=float(spec.trim_ratio), chunk_bytes=chunk_bytes
        )
    raise ValueError(f"unknown aggregator {getattr(spec, 'name', spec)!r}")
