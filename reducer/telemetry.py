"""The reducer's Prometheus metrics (served at ``/metrics`` of its health port).

Every metric carries ``job``; none carries a client id. `ReducerTelemetry`
holds them in a registry of its own (``fedkube.telemetry.new_registry``) with
the latency and error metrics of the reducer's state and object stores.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from fedkube.reducer.failure import Cause
from fedkube.telemetry import LONG_BUCKETS, StoreTelemetry, new_registry


class Stage(StrEnum):
    """The ``stage`` label of ``fedkube_round_stage_seconds``: the parts of a
    committed round, the keys of its ``RoundRecord.timings`` without ``_s``."""

    WAIT = "wait"  # until the plans are sent (clients connected, quota split)
    TRAIN = "train"  # plans sent until the last partial is back
    AGGREGATE = "aggregate"  # the longest combiner's folding of updates (part of train)
    MERGE = "merge"  # merging the partials and the server optimizer
    COMMIT = "commit"  # writing the model and recording it (before the state commit)


class ValidationOutcome(StrEnum):
    """The ``status`` label of ``fedkube_validations_total``."""

    COMPLETED = "completed"  # enough reports: recorded with the round
    INCOMPLETE = "incomplete"  # fewer reports than validation.minReports
    FAILED = "failed"  # a store failed


class AttemptOutcome(StrEnum):
    """The ``status`` label of ``fedkube_attempt_duration_seconds``."""

    COMPLETED = "completed"
    FAILED = "failed"


class ReducerTelemetry:
    """The metrics of one job's reducer."""

    def __init__(self, job: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else new_registry()
        self.job = job
        reg, j = self.registry, ("job",)
        self.stores = StoreTelemetry(reg, {"job": job})
        self.rounds_committed = Counter(
            "fedkube_rounds_committed_total",
            "Rounds this reducer committed.",
            j,
            registry=reg,
        ).labels(job=job)
        self.updates_committed = Counter(
            "fedkube_round_updates_total",
            "Client updates aggregated into the rounds this reducer committed.",
            j,
            registry=reg,
        ).labels(job=job)
        self._failed = Counter(
            "fedkube_attempts_failed_total",
            "Failed train attempts, by cause (retried up to retry.maxAttempts).",
            ("job", "reason"),
            registry=reg,
        )
        self._attempt_seconds = Histogram(
            "fedkube_attempt_duration_seconds",
            "Duration of train attempts, from their start to their commit or failure.",
            ("job", "status"),
            registry=reg,
            buckets=LONG_BUCKETS,
        )
        self._stage_seconds = Histogram(
            "fedkube_round_stage_seconds",
            "Seconds each stage of a committed round took (its RoundRecord.timings).",
            ("job", "stage"),
            registry=reg,
            buckets=LONG_BUCKETS,
        )
        self._validations = Counter(
            "fedkube_validations_total",
            "Validations of committed models, by outcome.",
            ("job", "status"),
            registry=reg,
        )
        self.current_round = Gauge(
            "fedkube_round_current", "The round running or last run.", j, registry=reg
        ).labels(job=job)
        self.completed_rounds = Gauge(
            "fedkube_rounds_completed",
            "Rounds of the job committed so far (by any reducer).",
            j,
            registry=reg,
        ).labels(job=job)
        self.planned_rounds = Gauge(
            "fedkube_rounds_planned", "spec.rounds of the job.", j, registry=reg
        ).labels(job=job)
        for cause in Cause:  # every series exists from the start (0, not absent)
            self._failed.labels(job=job, reason=cause)
        for outcome in ValidationOutcome:
            self._validations.labels(job=job, status=outcome)

    def attempt_failed(self, cause: Cause, seconds: float) -> None:
        self._failed.labels(job=self.job, reason=cause).inc()
        self._attempt_seconds.labels(job=self.job, status=AttemptOutcome.FAILED).observe(seconds)

    def round_committed(self, round: int, n_updates: int, timings: Mapping[str, float]) -> None:
        """Round `round` committed with `timings` (``wait_s``, ``train_s``, ...)."""
        self.rounds_committed.inc()
        self.updates_committed.inc(n_updates)
        self.completed_rounds.set(round)
        self._attempt_seconds.labels(job=self.job, status=AttemptOutcome.COMPLETED).observe(
            timings.get("total_s", 0.0)
        )
        for stage in Stage:
            key = f"{stage}_s"
            if key in timings:
                self._stage_seconds.labels(job=self.job, stage=stage).observe(timings[key])

    def validated(self, outcome: ValidationOutcome) -> None:
        self._validations.labels(job=self.job, status=outcome).inc()
