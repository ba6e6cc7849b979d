"""What the reducer asks its combiners to do: the `RoundPlan` of one attempt.

Every plan the reducer sends (train, validate, init) is built here, from the
job spec, so the fields a combiner relies on (deadline, train config, seed,
size limit) come from one place. The pool sets each combiner's quota.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Sequence

from fedkube.proto.v1 import fedkube_pb2 as pb
from fedkube.spec import FederatedJob, WeightsSpec


def weight_cap(weights: WeightsSpec, previous_claims: Sequence[int]) -> float:
    """The most one update may count for this round under spec.weights (0: no cap):
    maxExamples, and maxMedianMultiple x the median of the claims the previous
    committed round accepted (none before round 2)."""
    caps = []
    if weights.max_examples is not None:
        caps.append(float(weights.max_examples))
    if weights.max_median_multiple is not None and previous_claims:
        caps.append(weights.max_median_multiple * statistics.median(previous_claims))
    return min(caps) if caps else 0.0


def round_plan(
    job: FederatedJob,
    *,
    round: int,
    attempt: int,
    kind: pb.TaskKind,
    model_key: str,
    timeout_seconds: float,
    weight_cap: float = 0.0,
) -> pb.RoundPlan:
    """The plan of attempt `attempt` of `round`: `model_key` is the global model the
    clients start from (train), check (validate), or the key the seed is written to
    (init); the deadline is `timeout_seconds` from now; `weight_cap` is the most an
    update may count for (see `weight_cap`)."""
    spec = job.spec
    return pb.RoundPlan(
        job=job.key,
        round=round,
        attempt=attempt,
        kind=kind,
        model_key=model_key,
        deadline_unix_ms=int((time.time() + timeout_seconds) * 1000),
        config_json=json.dumps(spec.train.config),
        seed=spec.seed,
        max_bytes=spec.model.max_bytes,
        weight_cap=weight_cap,
    )
