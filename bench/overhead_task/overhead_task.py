"""The task of bench/round_overhead.py's fedkube federations: training is a sleep.

The seed model (the bench writes it; spec.model.seedUri) sets the model's size.
`train` sleeps ``seconds`` of the job's train.config, then returns the model
it was given plus a small perturbation (so every update is a real, new model
that the combiners read, check and fold) with num_examples 10. Validation is
off in the bench's jobs; `validate` is here for completeness.

In-process it is ``overhead_task:train`` (spec.train.fn); as a command
(``python overhead_task.py train IN OUT``) it runs the same function through
the train entrypoint contract.
"""

from __future__ import annotations

import time

import numpy as np

from fedkube.task import TaskContext, TrainResult, ValidationResult

#: what a "trained" update adds to every parameter
STEP = np.float32(1e-3)


def train(model: dict[str, np.ndarray], ctx: TaskContext) -> TrainResult:
    time.sleep(float(ctx.config.get("seconds", 0.0)))
    return TrainResult({k: v + STEP for k, v in model.items()}, num_examples=10)


def validate(model: dict[str, np.ndarray], ctx: TaskContext) -> ValidationResult:
    return ValidationResult(num_examples=10, metrics={})


if __name__ == "__main__":
    from fedkube.client.entrypoint import run

    run(train=train, validate=validate)
    raise SystemExit(0)
