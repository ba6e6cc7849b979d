"""What the reducer asks its combiners to do: the `RoundPlan` of one attempt.

Every plan the reducer sends (train, validate, init) is built here, from the
job spec, so the fields a combiner relies on (deadline, train config, seed,
size limit) come from one place. The pool sets each combiner's quota.
"""

from __future__ import annotations

import json
import time

from fedkube.proto.v1 import fedkube_pb2 as pb
from fedkube.spec import FederatedJob


def round_plan(
    job: FederatedJob,
    *,
    round: int,
    attempt: int,
    kind: pb.TaskKind,
    model_key: str,
    timeout_seconds: float,
) -> pb.RoundPlan:
    """The plan of attempt `attempt` of `round`: `model_key` is the global model the
    clients start from (train), check (validate), or the key the seed is written to
    (init); the deadline is `timeout_seconds` from now."""
    spec = job.spec
    return pb.RoundPlan(
        job=job.name,
        round=round,
        attempt=attempt,
        kind=kind,
        model_key=model_key,
        deadline_unix_ms=int((time.time() + timeout_seconds) * 1000),
        config_json=json.dumps(spec.train.config),
        seed=spec.seed,
        max_bytes=spec.model.max_bytes,
    )
