"""The fedkube task functions of the linear example: `init`, `train`, `validate`.

A linear regression ``y = X @ w + b + noise`` whose true weights are fixed by the
config's seed. Client *k* holds ``examples + 25 * k`` rows drawn around its own
feature shift (non-IID shards) and trains with a few full-batch gradient steps;
the federation recovers the true weights. Numpy only, so the example runs in the
plain client image (``examples/linear/Dockerfile``) and in CI.

Train config keys (``spec.train.config``; numbers may be strings, "0.1"):

=============  =======  =====================================================
key            default  meaning
=============  =======  =====================================================
features       16       number of input features (the model's ``w`` length)
examples       100      rows of client 0 (client k has 25 * k more)
local_steps    20       full-batch gradient steps per round
lr             1.0      local step, as a fraction of the largest stable step
noise          0.1      standard deviation of the label noise
num_clients    4        number of shards when the task does not say
seed           7        true weights and every client's data
sleep          0        seconds a train task waits first (stands in for real
                        training time: to watch a run live, or to let a fault
                        test act in the middle of a round)
=============  =======  =====================================================

The shard is ``ctx.client_index`` (set by ``fedkube run`` and, in the cluster, from
the client pod's index), else a stable hash of the client id. Training is
deterministic for a given (model, config, client), so a round can be recomputed.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from fedkube.task import TaskContext, Tensors, TrainResult, ValidationResult

DEFAULTS: dict[str, Any] = {
    "features": 16,
    "examples": 100,
    "local_steps": 20,
    "lr": 1.0,
    "noise": 0.1,
    "num_clients": 4,
    "seed": 7,
    "sleep": 0.0,
}


def _cfg(config: Mapping[str, Any], key: str) -> Any:
    value = config.get(key, DEFAULTS[key])
    return type(DEFAULTS[key])(float(value) if isinstance(DEFAULTS[key], float) else int(value))


def true_weights(config: Mapping[str, Any]) -> tuple[np.ndarray, float]:
    """The weights and bias the data is generated from."""
    rng = np.random.default_rng(_cfg(config, "seed"))
    w = rng.normal(size=_cfg(config, "features"))
    return w, float(rng.normal())


def shard_of(ctx: TaskContext) -> int:
    """This client's shard: its index when known, else a stable hash of its id."""
    if ctx.client_index is not None:
        return ctx.client_index
    n = ctx.num_clients or _cfg(ctx.config, "num_clients")
    return zlib.crc32(ctx.client_id.encode()) % max(1, n)


def client_data(
    config: Mapping[str, Any], shard: int, *, split: str = "train"
) -> tuple[np.ndarray, np.ndarray]:
    """(X, y) of one shard: ``examples + 25 * shard`` training rows (a quarter as many
    validation rows), features shifted by the shard so the shards differ."""
    w, b = true_weights(config)
    rows = _cfg(config, "examples") + 25 * shard
    if split == "validate":
        rows = max(10, rows // 4)
    rng = np.random.default_rng([_cfg(config, "seed"), shard, 0 if split == "train" else 1])
    x = rng.normal(loc=0.5 * shard, scale=1.0, size=(rows, w.size))
    y = x @ w + b + rng.normal(scale=_cfg(config, "noise"), size=rows)
    return x, y


def init() -> Tensors:
    """The seed model: zeros (its size follows the default `features`)."""
    return {
        "w": np.zeros(DEFAULTS["features"], np.float32),
        "b": np.zeros(1, np.float32),
    }


def _mse(model: Tensors, x: np.ndarray, y: np.ndarray) -> float:
    pred = x @ model["w"].astype(np.float64) + float(model["b"][0])
    return float(np.mean((pred - y) ** 2))


def train(model: Tensors, ctx: TaskContext) -> TrainResult:
    time.sleep(_cfg(ctx.config, "sleep"))
    x, y = client_data(ctx.config, shard_of(ctx))
    if model["w"].shape != (x.shape[1],):
        raise ValueError(
            f"the model's w has shape {model['w'].shape} but train.config.features is {x.shape[1]}"
        )
    w = model["w"].astype(np.float64)
    b = float(model["b"][0])
    # lr is a fraction of 1/L, L the loss's curvature bound on this shard, so no
    # shard's feature scale can make the steps diverge
    xb = np.hstack([x, np.ones((len(y), 1))])
    step = _cfg(ctx.config, "lr") / float(np.linalg.eigvalsh(xb.T @ xb / len(y))[-1])
    for _ in range(_cfg(ctx.config, "local_steps")):
        err = x @ w + b - y
        w -= step * (x.T @ err) / len(y)
        b -= step * float(np.mean(err))
    out = {"w": w.astype(np.float32), "b": np.array([b], np.float32)}
    return TrainResult(out, num_examples=len(y), metrics={"loss": _mse(out, x, y)})


def validate(model: Tensors, ctx: TaskContext) -> ValidationResult:
    x, y = client_data(ctx.config, shard_of(ctx), split="validate")
    w, _ = true_weights(ctx.config)
    dist = float(np.linalg.norm(model["w"].astype(np.float64) - w))
    return ValidationResult(
        num_examples=len(y), metrics={"loss": _mse(model, x, y), "weight_error": dist}
    )
