"""Validation of a committed global model by the clients (``spec.validation``).

When validation is due after round r, the connected clients (``perRound`` of
them, default all) run the job's validate function or command on model r with
their local held-out data; the example-weighted mean of their metrics is stored
with the round and becomes the job's headline metrics. The round is committed
before: a validation that fails or gets too few reports is recorded as an
event, never undoes the round.
"""

from __future__ import annotations

from fedkube.errors import StoreError
from fedkube.logs import Logger
from fedkube.proto.v1 import fedkube_pb2 as pb
from fedkube.reducer.events import EventLog
from fedkube.reducer.plan import round_plan
from fedkube.reducer.pool import CombinerPool, useful_partials
from fedkube.reducer.telemetry import ReducerTelemetry, ValidationOutcome
from fedkube.selection import distribute_quota, weighted_metrics
from fedkube.spec import FederatedJob
from fedkube.state import StateStore
from fedkube.store import model_key
from fedkube.vocabulary import EventKind


class Validator:
    def __init__(
        self,
        job: FederatedJob,
        state: StateStore,
        pool: CombinerPool,
        events: EventLog,
        log: Logger,
        *,
        telemetry: ReducerTelemetry | None = None,
    ) -> None:
        self.job, self.state, self.pool, self.events, self.log = job, state, pool, events, log
        self.telemetry = telemetry

    def due(self, r: int) -> bool:
        spec = self.job.spec
        v = spec.validation
        has_code = bool(spec.train.validate_fn or spec.train.validate_command)
        return v.enabled and has_code and (r % v.every == 0 or r == spec.rounds)

    def maybe_validate(self, r: int, *, resume: bool = False) -> None:
        """Validate model r when due (on `resume`, only if it has no validation yet)."""
        if not self.due(r) or (resume and self._validated(r)):
            return
        try:
            outcome = self._validate(r)
        except StoreError as exc:  # the round is committed; its validation is best effort
            outcome = ValidationOutcome.FAILED
            self.events(EventKind.VALIDATION_FAILED, f"round {r}: {exc}", "warning", round=r)
            self.log.warning("validation failed", round=r, error=str(exc))
        if self.telemetry is not None:
            self.telemetry.validated(outcome)

    def _validated(self, r: int) -> bool:
        done = [x for x in self.state.committed_rounds(self.job.key) if x.round == r]
        return bool(done and done[0].validation)

    def _validate(self, r: int) -> ValidationOutcome:
        spec = self.job.spec
        v = spec.validation
        connected = self.pool.wait_for_clients(
            v.per_round or spec.clients.per_round,
            v.min_reports,
            timeout=spec.clients.wait_timeout_seconds,
        )
        quotas = distribute_quota(v.per_round or sum(connected.values()), connected)
        plan = round_plan(
            self.job,
            round=r,
            attempt=1,
            kind=pb.TASK_KIND_VALIDATE,
            model_key=model_key(self.job.key, r),
            timeout_seconds=v.timeout_seconds,
        )
        partials = useful_partials(self.pool.run(plan, quotas))
        reports = sum(p.n_updates for p in partials)
        if reports < v.min_reports:
            self.events(
                EventKind.VALIDATION_INCOMPLETE,
                f"round {r}: {reports} validation reports, "
                f"validation.minReports is {v.min_reports}",
                "warning",
                round=r,
            )
            return ValidationOutcome.INCOMPLETE
        self._record(r, partials, reports)
        return ValidationOutcome.COMPLETED

    def _record(self, r: int, partials: list[pb.Partial], reports: int) -> None:
        name = self.job.key
        examples = sum(int(p.num_examples) for p in partials)
        metrics = weighted_metrics([(dict(p.metrics), float(p.num_examples)) for p in partials])
        self.state.set_validation(name, r, metrics, examples)
        rec = [x for x in self.state.committed_rounds(name) if x.round == r]
        train_metrics = rec[0].metrics if rec else {}
        self.state.update_job(name, metrics={**train_metrics, **metrics})
        self.events(
            EventKind.ROUND_VALIDATED,
            f"round {r} validated by {reports} clients: "
            + ", ".join(f"{k}={val:.4g}" for k, val in metrics.items()),
            round=r,
        )
        self.log.info("round validated", round=r, reports=reports, metrics=metrics)
