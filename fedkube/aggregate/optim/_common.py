"""Helpers shared by the server optimizers. Pure module (numpy only)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fedkube.aggregate.base import Tensors


def check_pair(current: Tensors, aggregated: Tensors) -> None:
    """ValueError unless both models have the same tensor names, shapes and dtypes."""
    if current.keys() != aggregated.keys():
        missing = sorted(current.keys() - aggregated.keys())
        extra = sorted(aggregated.keys() - current.keys())
        raise ValueError(
            f"aggregated model does not match the global model: missing {missing[:5]}, "
            f"unexpected {extra[:5]}"
        )
    for name, cur in current.items():
        agg = aggregated[name]
        if cur.shape != agg.shape or cur.dtype != agg.dtype:
            raise ValueError(
                f"tensor {name!r}: aggregated is {agg.dtype}{list(agg.shape)}, "
                f"global is {cur.dtype}{list(cur.shape)}"
            )


def is_float(arr: np.ndarray) -> bool:
    return arr.dtype.kind == "f"


def state_dtype(arr: np.ndarray) -> np.dtype[Any]:
    """Optimizer state is float64 for float64 tensors, float32 otherwise (incl. float16)."""
    return np.dtype(np.float64) if arr.dtype == np.float64 else np.dtype(np.float32)


def load_state(
    state: Tensors, key: str, like: np.ndarray, dtype: np.dtype[Any], init: float
) -> np.ndarray:
    """A fresh (writable, owned) copy of ``state[key]``, or a new array filled with `init`."""
    if key not in state:
        return np.full(like.shape, init, dtype=dtype)
    value = np.asarray(state[key])
    if value.shape != like.shape:
        raise ValueError(
            f"optimizer state {key!r} has shape {list(value.shape)}, tensor has {list(like.shape)}"
        )
    return np.array(value, dtype=dtype, copy=True)


def delta(current: np.ndarray, aggregated: np.ndarray, dtype: np.dtype[Any]) -> np.ndarray:
    """The pseudo-gradient ``aggregated - current`` as a new array of `dtype`."""
    return np.subtract(aggregated, current, dtype=dtype)


def check_rate(name: str, value: float, *, low: float, high: float | None = None) -> float:
    """`value` as float; ValueError unless finite and ``low < value`` (``value < high``)."""
    v = float(value)
    if not math.isfinite(v) or v <= low or (high is not None and v >= high):
        bound = f"> {low}" if high is None else f"in ({low}, {high})"
        raise ValueError(f"{name} must be {bound}, got {value!r}")
    return v


def check_unit(name: str, value: float) -> float:
    """`value` as float; ValueError unless ``0 <= value < 1``."""
    v = float(value)
    if not (math.isfinite(v) and 0.0 <= v < 1.0):
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    return v
