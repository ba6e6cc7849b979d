"""What an in-process train/validate function receives and returns. Pure module.

A train function has the signature ``train(model, ctx) -> TrainResult`` where
``model`` is an ordered mapping ``name -> numpy array`` (the global model) and a
validate function ``validate(model, ctx) -> ValidationResult``. They are named
in the job spec (``spec.train.fn``) or on the command line
(``fedkube client --train-fn package.module:function``) and imported once, so
imports and data stay warm between rounds.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

Tensors = dict[str, np.ndarray]


@dataclass(frozen=True)
class TaskContext:
    """What a task tells the user's code: which job, round and attempt, which client,
    and the train config (``spec.train.config``). Simulated clients of ``fedkube
    run`` also learn their position among their peers (``client_index`` of
    ``num_clients``), e.g. to pick their data shard. A command gets the same as
    FEDKUBE_* environment variables (`env`, `from_env`)."""

    job: str
    round: int
    attempt: int
    client_id: str
    config: Mapping[str, Any] = field(default_factory=dict)
    client_index: int | None = None
    num_clients: int | None = None

    def env(self) -> dict[str, str]:
        """The environment of the train entrypoint contract for this task."""
        env = {
            "FEDKUBE_JOB": self.job,
            "FEDKUBE_ROUND": str(self.round),
            "FEDKUBE_ATTEMPT": str(self.attempt),
            "FEDKUBE_CLIENT": self.client_id,
            "FEDKUBE_CONFIG": json.dumps(dict(self.config)),
        }
        if self.client_index is not None:
            env["FEDKUBE_CLIENT_INDEX"] = str(self.client_index)
        if self.num_clients is not None:
            env["FEDKUBE_NUM_CLIENTS"] = str(self.num_clients)
        return env

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> TaskContext:
        """Rebuild the context inside a train command from its environment."""
        e = os.environ if environ is None else environ
        idx = e.get("FEDKUBE_CLIENT_INDEX")
        num = e.get("FEDKUBE_NUM_CLIENTS")
        return cls(
            job=e.get("FEDKUBE_JOB", ""),
            round=int(e.get("FEDKUBE_ROUND", "0")),
            attempt=int(e.get("FEDKUBE_ATTEMPT", "0")),
            client_id=e.get("FEDKUBE_CLIENT", ""),
            config=json.loads(e.get("FEDKUBE_CONFIG", "{}")),
            client_index=int(idx) if idx else None,
            num_clients=int(num) if num else None,
        )


@dataclass
class TrainResult:
    """What a train function returns: the trained model (the same tensor names,
    shapes and dtypes as the model it was given; float tensors of another float
    dtype are cast back), the number of examples it trained on (> 0: its weight in
    the FedAvg), and its metrics (finite numbers, averaged by examples)."""

    model: Tensors
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class ValidationResult:
    """What a validate function returns: the number of held-out examples it scored
    the model on (> 0) and its metrics (finite numbers, averaged by examples)."""

    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)


class TrainFn(Protocol):
    def __call__(self, model: Tensors, ctx: TaskContext) -> TrainResult: ...


class ValidateFn(Protocol):
    def __call__(self, model: Tensors, ctx: TaskContext) -> ValidationResult: ...


class InitFn(Protocol):
    def __call__(self) -> Tensors: ...


def load_callable(ref: str) -> Any:
    """Import ``package.module:function`` (the form used by --train-fn and spec.train.fn)."""
    import importlib

    from fedkube.errors import TaskError

    mod_name, sep, attr = ref.partition(":")
    if not sep or not mod_name or not attr:
        raise TaskError(f"{ref!r} is not of the form package.module:function")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as exc:
        raise TaskError(f"cannot import {mod_name!r} for {ref!r}: {exc}") from exc
    obj: Any = mod
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise TaskError(f"module {mod_name!r} has no attribute {attr!r}") from None
    if not callable(obj):
        raise TaskError(f"{ref!r} is not callable")
    return obj
