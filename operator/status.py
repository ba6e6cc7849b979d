"""The FederatedJob's status: its model, its conditions and ``status_from``. Pure module.

No Kubernetes client and no kopf here (pydantic and the standard library):

- ``JobStatus`` (with ``Condition`` and ``CombinersStatus``) is the status
  block as a pydantic model; ``crd.py`` generates the CRD's status schema from
  it, so the schema and what the operator writes cannot drift apart;
- ``status_from`` computes the block from what the operator observes (the job
  record in the state store, the combiner StatefulSet and the reducer
  Deployment); the kopf handlers patch it in. One small helper decides each
  condition (``_ready``, ``_progressing``, ``_suspended``, ``_complete``,
  ``_failed``);
- the headline metric (the Metric printer column) has ONE rule,
  ``headline_metric``: the first of ``HEADLINE_METRICS`` the job reports, else
  the first metric by name, formatted ``HEADLINE_FORMAT``. The CRD's
  descriptions of the field and of the column are built from the same
  constants (``HEADLINE_RULE``, ``HEADLINE_EXAMPLE``);
- ``EventReason``: the reasons of the Kubernetes Events the operator posts.

Phase names are ``fedkube.vocabulary.Phase``, the words the state store's job
record uses too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final, Literal

from pydantic import AliasGenerator, AwareDatetime, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from fedkube.operator import names
from fedkube.operator.builders import combiner_replicas
from fedkube.spec import FederatedJob
from fedkube.vocabulary import (
    HEADLINE_RULE,
    TERMINAL_PHASES,
    Phase,
    headline_metric,
    reducer_silence,
)

# --------------------------------------------------------------------------
# The headline metric: one rule (fedkube.vocabulary) for the status, the CRD's
# documentation and the dashboard.

#: The example the CRD's descriptions show, written by the rule itself.
HEADLINE_EXAMPLE: Final = headline_metric({"accuracy": 0.968})


# --------------------------------------------------------------------------
# The status model (generated into the CRD's status schema by crd.py).


class ConditionType(StrEnum):
    """The conditions of a FederatedJob, in the order the status lists them."""

    READY = "Ready"
    PROGRESSING = "Progressing"
    SUSPENDED = "Suspended"
    COMPLETE = "Complete"
    FAILED = "Failed"


CONDITION_TYPES: Final = tuple(t.value for t in ConditionType)


def _phase_list() -> str:
    phases = [p.value for p in Phase]
    return f"{', '.join(phases[:-1])} or {phases[-1]}"


class _StatusModel(BaseModel):
    model_config = ConfigDict(
        alias_generator=AliasGenerator(validation_alias=to_camel, serialization_alias=to_camel),
        populate_by_name=True,
        extra="forbid",
    )


class Condition(_StatusModel):
    """A condition of the job (Kubernetes convention: one entry per type)."""

    type: str = Field(description="Condition type, for example Ready, Progressing or Complete.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str | None = Field(
        default=None, description="CamelCase reason for the last transition."
    )
    message: str | None = Field(default=None, description="Human-readable details.")
    last_transition_time: AwareDatetime | None = Field(
        default=None, description="When the status last changed (RFC 3339)."
    )
    observed_generation: int | None = Field(
        default=None, ge=0, description="metadata.generation the condition was set for."
    )


class CombinersStatus(_StatusModel):
    """The combiners as seen by the operator (the scale subresource reads these)."""

    replicas: int | None = Field(default=None, ge=0, description="Combiner pods that exist.")
    ready: int | None = Field(default=None, ge=0, description="Combiner pods that are ready.")
    selector: str | None = Field(
        default=None, description="Label selector of the combiner pods (for kubectl scale / HPA)."
    )


class JobStatus(_StatusModel):
    """Observed state of a FederatedJob, written by the operator."""

    observed_generation: int | None = Field(
        default=None, ge=0, description="metadata.generation the operator last acted on."
    )
    phase: Phase | None = Field(default=None, description=f"{_phase_list()}.")
    conditions: list[Condition] | None = Field(
        default=None,
        max_length=32,
        description="Latest observations of the job's state, one per condition type.",
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
    )
    job_key: str | None = Field(
        default=None,
        description="What the state store, the object keys and client credentials know the "
        "job by: <namespace>/<name>-<uid prefix> (e.g. for `fedkube clients issue`).",
    )
    current_round: int | None = Field(
        default=None, ge=0, description="The round in progress (or the last one, once finished)."
    )
    completed_rounds: int | None = Field(
        default=None, ge=0, description="Rounds that produced a new global model."
    )
    latest_model: str | None = Field(
        default=None, description="Object key of the latest global model."
    )
    metrics: dict[str, float] | None = Field(
        default=None, description="Latest validation metrics of the global model, by name."
    )
    headline_metric: str | None = Field(
        default=None,
        description=f"The Metric column: {HEADLINE_RULE}, e.g. {HEADLINE_EXAMPLE}.",
    )
    combiners: CombinersStatus | None = Field(
        default=None, description="Combiner replicas (the scale subresource's status)."
    )
    start_time: AwareDatetime | None = Field(
        default=None, description="When the first round started (RFC 3339)."
    )
    completion_time: AwareDatetime | None = Field(
        default=None, description="When the job Succeeded or Failed (RFC 3339)."
    )
    message: str | None = Field(default=None, description="Human-readable state, e.g. an error.")


# --------------------------------------------------------------------------
# Events the operator posts on a FederatedJob.


class EventReason(StrEnum):
    """Reasons of the operator's Kubernetes Events (and ``phase_event_reason``)."""

    INVALID_SPEC = "InvalidSpec"  # also the Ready condition's reason (status_from's error)
    STATE_STORE_UNAVAILABLE = "StateStoreUnavailable"
    RECONCILED = "Reconciled"
    ROUND_COMPLETED = "RoundCompleted"
    EXPIRED = "Expired"


def phase_event_reason(phase: str) -> str:
    """The reason of the Event posted when the job enters ``phase``: ``Job<Phase>``."""
    return f"Job{phase}"


# --------------------------------------------------------------------------
# status_from: what the operator observes -> the status block.

#: Times as Kubernetes writes them: seconds precision, UTC.
RFC3339_FORMAT: Final = "%Y-%m-%dT%H:%M:%SZ"


def rfc3339(t: float | datetime) -> str:
    """2024-05-01T12:00:00Z (seconds precision, UTC), as Kubernetes writes times."""
    dt = t if isinstance(t, datetime) else datetime.fromtimestamp(t, UTC)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC).strftime(RFC3339_FORMAT)


def parse_rfc3339(text: str) -> datetime:
    """The inverse of ``rfc3339`` (an aware UTC datetime)."""
    return datetime.strptime(text, RFC3339_FORMAT).replace(tzinfo=UTC)


def _field(record: Any, key: str, default: Any = None) -> Any:
    """A field of a JobRecord (dataclass) or of its dict form."""
    if record is None:
        return default
    if isinstance(record, Mapping):
        value = record.get(key, default)
    else:
        value = getattr(record, key, default)
    return default if value is None else value


def _record_phase(record: Any) -> str | None:
    """The record's phase as plain text (a JobRecord may hold a `Phase` member)."""
    phase = _field(record, "phase")
    return None if phase is None else str(phase)


def _phase(job: FederatedJob, record_phase: str | None) -> str:
    if record_phase in TERMINAL_PHASES:
        return record_phase
    if job.spec.suspend:
        return Phase.SUSPENDED.value
    return record_phase or Phase.PENDING.value


def _metrics(record: Any) -> dict[str, Any]:
    """The record's metrics that JSON can carry (finite numbers, not booleans)."""
    return {
        str(k): v
        for k, v in dict(_field(record, "metrics", {})).items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }


@dataclass(frozen=True)
class Observed:
    """What the conditions are decided from, read once from the record and the children."""

    phase: str
    record_phase: str | None  # the reducer's word, before suspend and terminal phases
    message: str
    suspend: bool
    rounds: int
    current_round: int
    completed_rounds: int
    desired_combiners: int
    ready_combiners: int
    reducer_ready: bool
    error: str | None = None
    # seconds since a Running job's reducer renewed reducer_seen_at, when longer than
    # REDUCER_STALE_SECONDS (no reducer runs the job); None otherwise
    reducer_silent: float | None = None


def observe(
    job: FederatedJob,
    record: Any,
    statefulset: Mapping[str, Any] | None,
    deployment: Mapping[str, Any] | None,
    error: str | None = None,
    now: float | None = None,
) -> Observed:
    """Read the job record (or None) and the workloads' ``status`` blocks (or None);
    `now` (Unix seconds) tells how long ago the reducer was last seen."""
    record_phase = _record_phase(record)
    phase = _phase(job, record_phase)
    seen = _field(record, "reducer_seen_at")
    silent = None
    if now is not None and isinstance(seen, int | float):
        silent = reducer_silence(phase, float(seen), now)
    return Observed(
        phase=phase,
        record_phase=record_phase,
        message=str(_field(record, "message", "")),
        suspend=job.spec.suspend,
        rounds=job.spec.rounds,
        current_round=int(_field(record, "current_round", 0)),
        completed_rounds=int(_field(record, "completed_rounds", 0)),
        desired_combiners=combiner_replicas(job),
        ready_combiners=int((statefulset or {}).get("readyReplicas") or 0),
        reducer_ready=int((deployment or {}).get("readyReplicas") or 0) >= 1,
        error=error,
        reducer_silent=silent,
    )


# (status is True, reason, message) of one condition.
Verdict = tuple[bool, str, str]


def _ready(o: Observed) -> Verdict:
    combiners = f"{o.ready_combiners}/{o.desired_combiners} combiners ready"
    if o.error:
        return False, EventReason.INVALID_SPEC.value, o.error
    if not o.reducer_ready:
        return False, "ReducerNotReady", f"reducer not ready; {combiners}"
    if o.ready_combiners < o.desired_combiners:
        return False, "CombinersNotReady", f"reducer ready; {combiners}"
    return True, "Ready", f"reducer ready; {combiners}"


def _progressing(o: Observed) -> Verdict:
    if o.phase == Phase.RUNNING and o.reducer_silent is not None:
        return (
            False,
            "ReducerNotSeen",
            f"no reducer seen for {int(o.reducer_silent)}s (killed?); "
            "the job resumes when a reducer starts",
        )
    if o.phase == Phase.RUNNING:
        progress = f"round {o.current_round} of {o.rounds} ({o.completed_rounds} completed)"
        return True, "RoundsRunning", progress
    wait = "waiting for the reducer" if o.phase == Phase.PENDING else ""
    return False, o.phase, o.message or wait


def _suspended(o: Observed) -> Verdict:
    if o.phase in TERMINAL_PHASES:
        return False, o.phase, "the job has finished"
    if o.suspend and o.record_phase == Phase.SUSPENDED:
        return True, "Suspended", "round loop paused; combiners scaled to zero"
    if o.suspend:
        return (
            True,
            "Suspending",
            "spec.suspend is true: combiners scaled to zero, the round loop pauses "
            "before its next round",
        )
    if o.record_phase == Phase.SUSPENDED:
        return True, "Resuming", "spec.suspend is false: the round loop resumes"
    return False, "NotSuspended", ""


def _complete(o: Observed) -> Verdict:
    if o.phase == Phase.SUCCEEDED:
        return True, "RoundsCompleted", o.message or f"completed {o.completed_rounds} rounds"
    return False, o.phase, ""


def _failed(o: Observed) -> Verdict:
    if o.phase == Phase.FAILED:
        return True, "RoundFailed", o.message or "the job failed"
    return False, o.phase, ""


#: Each condition type and the helper that decides it, in status order.
CONDITIONS: Final[tuple[tuple[ConditionType, Callable[[Observed], Verdict]], ...]] = (
    (ConditionType.READY, _ready),
    (ConditionType.PROGRESSING, _progressing),
    (ConditionType.SUSPENDED, _suspended),
    (ConditionType.COMPLETE, _complete),
    (ConditionType.FAILED, _failed),
)


def _previous_conditions(previous: Mapping[str, Any] | None) -> dict[str, Mapping[str, Any]]:
    """The current status's conditions by type."""
    return {
        c["type"]: c
        for c in (previous or {}).get("conditions") or []
        if isinstance(c, Mapping) and "type" in c
    }


def _condition(
    type_: str,
    verdict: Verdict,
    *,
    previous: Mapping[str, Mapping[str, Any]],
    now: str,
    generation: int | None,
) -> dict[str, Any]:
    """One condition; it keeps its lastTransitionTime while its status does not change."""
    true, reason, message = verdict
    status = "True" if true else "False"
    since = now
    prev = previous.get(type_)
    if prev is not None and prev.get("status") == status and prev.get("lastTransitionTime"):
        since = str(prev["lastTransitionTime"])
    cond: dict[str, Any] = {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since,
    }
    if generation is not None:
        cond["observedGeneration"] = generation
    return cond


def conditions(
    observed: Observed,
    *,
    previous: Mapping[str, Any] | None,
    now: str,
    generation: int | None,
) -> list[dict[str, Any]]:
    """Every condition, in ``CONDITION_TYPES`` order; ``now`` is an RFC 3339 time."""
    prev = _previous_conditions(previous)
    return [
        _condition(t.value, decide(observed), previous=prev, now=now, generation=generation)
        for t, decide in CONDITIONS
    ]


def status_from(
    job: FederatedJob,
    *,
    record: Any,
    statefulset: Mapping[str, Any] | None,
    deployment: Mapping[str, Any] | None,
    generation: int | None,
    previous: Mapping[str, Any] | None,
    now: float | datetime,
    error: str | None = None,
) -> dict[str, Any]:
    """The FederatedJob's status block, from what the operator observes.

    record: the job record of the state store (a ``fedkube.state.JobRecord`` or
        its dict form: phase, message, current_round, completed_rounds,
        latest_model, metrics, started_at, completed_at), or None before it exists.
    statefulset / deployment: the ``status`` (not the whole object) of the
        combiner StatefulSet and of the reducer Deployment; None before they exist.
    generation: the FederatedJob's metadata.generation (observedGeneration).
    previous: the current status, to keep the lastTransitionTime of conditions
        whose status did not change.
    error: why the children cannot be built (a BuildError message), if so.

    Optional fields without a value (latestModel, startTime, completionTime,
    headlineMetric) are None, which deletes them under a merge patch.
    """
    at = (
        float(now)
        if not isinstance(now, datetime)
        else (now if now.tzinfo is not None else now.replace(tzinfo=UTC)).timestamp()
    )
    observed = observe(job, record, statefulset, deployment, error, now=at)
    metrics = _metrics(record)
    started = _field(record, "started_at")
    finished = _field(record, "completed_at") if observed.phase in TERMINAL_PHASES else None
    status: dict[str, Any] = {
        "phase": observed.phase,
        "message": observed.message,
        "jobKey": job.key,
        "currentRound": observed.current_round,
        "completedRounds": observed.completed_rounds,
        "latestModel": _field(record, "latest_model"),
        "metrics": metrics,
        "headlineMetric": headline_metric(metrics),
        "combiners": {
            "replicas": int((statefulset or {}).get("replicas") or 0),
            "ready": observed.ready_combiners,
            "selector": names.selector_string(job.name, names.COMPONENT_COMBINER),
        },
        "startTime": rfc3339(started) if started is not None else None,
        "completionTime": rfc3339(finished) if finished is not None else None,
        "conditions": conditions(
            observed, previous=previous, now=rfc3339(now), generation=generation
        ),
    }
    if generation is not None:
        status["observedGeneration"] = generation
    return status
