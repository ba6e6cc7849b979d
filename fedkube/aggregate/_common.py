"""Checks and small helpers shared by the aggregators. Pure module (numpy only)."""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from fedkube.model import _DTYPES, MappedModel, ModelHeader, TensorInfo, check_compatible

FLOAT_CODES = frozenset({"F16", "F32", "F64"})


def check_weight(weight: float) -> float:
    """`weight` as a float; ValueError unless it is finite and > 0."""
    try:
        w = float(weight)
    except (TypeError, ValueError):
        raise ValueError(f"weight must be a finite number > 0, got {weight!r}") from None
    if not math.isfinite(w) or w <= 0.0:
        raise ValueError(f"weight must be a finite number > 0, got {weight!r}")
    return w


def check_model(template: ModelHeader, model: MappedModel) -> None:
    """ModelFileError (a ValueError) unless `model` has the template's names, shapes, dtypes."""
    check_compatible(template, model.header)


def numpy_dtype(info: TensorInfo) -> np.dtype[Any]:
    return _DTYPES[info.dtype]


def to_template_dtype(values: np.ndarray, info: TensorInfo) -> np.ndarray:
    """Cast floating aggregate values to the tensor's dtype, rounding for integer/bool tensors."""
    dt = numpy_dtype(info)
    if info.dtype in FLOAT_CODES:
        return values.astype(dt, copy=False)
    return np.rint(values).astype(dt)


def segments(
    header: ModelHeader, starts: list[int], offset: int, values: np.ndarray
) -> Iterator[tuple[TensorInfo, int, np.ndarray]]:
    """Split a chunk of an update (`values`, at byte `offset` of its data section) by
    tensor: ``(tensor, first element, its part of values)``. `starts` are the tensors'
    start offsets (`header.tensors` order, which is file order)."""
    itemsize = values.dtype.itemsize
    end = offset + values.nbytes
    i = bisect.bisect_right(starts, offset) - 1
    pos = offset
    while pos < end:
        t = header.tensors[i]
        stop = min(t.end, end)
        if stop > pos:
            a = (pos - offset) // itemsize
            yield t, (pos - t.start) // itemsize, values[a : a + (stop - pos) // itemsize]
        pos = stop
        i += 1
