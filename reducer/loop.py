"""The round loop of one job: run, recover, suspend, retry, commit.

Round r, attempt a: record the attempt, wait for connected clients, split
``clients.perRound`` over the combiners by their connected clients, run the
plan on all of them (`pool.py`), check the quorum, merge the partials and take
the server-optimizer step (`merge.py`), write model r, commit round r in the
state store, then validate it (`validate.py`). The state store is the source
of truth: a reducer killed at any point and started again resumes from the
last committed round, and a round is never committed twice.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedkube.errors import FedkubeError, RoundFailed, StoreError
from fedkube.logs import Logger, get_logger
from fedkube.proto.v1 import fedkube_pb2 as pb
from fedkube.reducer.events import EventLog
from fedkube.reducer.failure import AttemptFailed, Cause, cause_of
from fedkube.reducer.merge import ModelCache, NamedPartial, StoredModel, merge_round
from fedkube.reducer.plan import round_plan, weight_cap
from fedkube.reducer.pool import CombinerPool, CombinerResult
from fedkube.reducer.seed import SeedMaker
from fedkube.reducer.telemetry import ReducerTelemetry
from fedkube.reducer.validate import Validator
from fedkube.rpc import ClientTLS
from fedkube.selection import distribute_quota, weighted_metrics
from fedkube.spec import FederatedJob
from fedkube.state import ModelRecord, StateStore
from fedkube.store import ObjectStore, model_key
from fedkube.vocabulary import (
    INTERRUPTED_MESSAGE,
    REDUCER_LIVENESS_SECONDS,
    AssignmentStatus,
    AttemptReason,
    AttemptStatus,
    EventKind,
    Phase,
    interrupted_by_restart,
)


@dataclass
class ReducerConfig:
    job: FederatedJob
    store: ObjectStore
    state: StateStore
    combiners: dict[str, str]  # name -> host:port (fixed set)
    reducer_token: str
    workdir: Path
    job_dir: Path = Path(".")
    tls: ClientTLS | None = None
    poll_seconds: float = 0.5
    # "NAME=HOST:PORT" with {i} for the combiner index (e.g. a StatefulSet's pods):
    # the number of combiners is spec.combiners.replicas of the job record, read
    # again before every round, so scaling the job adds or removes combiners.
    combiner_template: str | None = None
    # How often the reducer renews JobRecord.reducer_seen_at while it runs, so that
    # `fedkube status` and the operator can tell a job whose reducer is gone.
    liveness_seconds: float = REDUCER_LIVENESS_SECONDS
    # The reducer's Prometheus metrics (a registry of their own); None: the
    # Reducer makes them.
    telemetry: ReducerTelemetry | None = None


@dataclass
class _Attempt:
    """One train attempt in flight: what was planned and what it took so far."""

    round: int
    attempt: int
    log: Logger
    started: float  # time.monotonic()
    quotas: dict[str, int]
    wait_s: float = 0.0  # until the plans are sent
    train_s: float = 0.0  # plans sent until the last partial is back
    aggregate_s: float = 0.0  # the longest combiner's folding of updates (part of train_s)
    merge_s: float = 0.0  # merging the partials and the server optimizer
    commit_s: float = 0.0  # writing model r and recording it (up to the state commit)


class Reducer:
    """Owns the round loop of one job, as a client of its combiners' CombinerControl.

    ``Reducer(cfg).run()`` runs the job to its end (or until `stop()`) and
    returns the final phase; started again on the same state store, it resumes
    from the last committed round. It never runs user code: the seed model
    comes from ``spec.model.seedUri`` or a client's init task.
    """

    def __init__(self, cfg: ReducerConfig) -> None:
        self.cfg = cfg
        self.job = cfg.job
        self.spec = cfg.job.spec
        self.name = cfg.job.key
        self.telemetry = cfg.telemetry or ReducerTelemetry(self.name)
        self.telemetry.planned_rounds.set(self.spec.rounds)
        # Every store call is timed and its errors counted (fedkube_*_store_*).
        self.store = self.telemetry.stores.objects(cfg.store)
        self.state = self.telemetry.stores.state(cfg.state)
        self.log = get_logger("reducer", job=self.name)
        self.events = EventLog(self.state, self.name, self.log)
        self._stop = threading.Event()
        self._ran = False
        self.pool = CombinerPool(
            cfg.combiners,
            token=cfg.reducer_token,
            log=self.log,
            stop=self._stop,
            tls=cfg.tls,
            template=cfg.combiner_template,
            replicas=self._replicas,
            poll_seconds=cfg.poll_seconds,
        )
        self.validator = Validator(
            self.job, self.state, self.pool, self.events, self.log, telemetry=self.telemetry
        )
        self._retry_floor: dict[int, int] = {}
        self._closed = threading.Event()
        self._liveness: threading.Thread | None = None
        cfg.workdir.mkdir(parents=True, exist_ok=True)
        self.models = ModelCache(cfg.workdir / "models")

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self._closed.set()
        if self._liveness is not None:
            self._liveness.join(timeout=10)
        self.pool.close()

    # ------------------------------------------------------------ liveness

    def _start_liveness(self) -> None:
        """Renew ``reducer_seen_at`` now, then every cfg.liveness_seconds until close()."""
        self._renew()
        if self._liveness is None:
            self._liveness = threading.Thread(
                target=self._renew_loop, name="reducer-liveness", daemon=True
            )
            self._liveness.start()

    def _renew(self) -> bool:
        try:
            self.state.update_job(self.name, reducer_seen_at=time.time())
            return True
        except Exception as exc:
            self.log.warning("cannot renew the reducer's liveness", error=str(exc))
            return False

    def _renew_loop(self) -> None:
        ok = True
        while not self._closed.wait(self.cfg.liveness_seconds):
            now_ok = self._renew()
            if now_ok and not ok:
                self.log.info("reducer liveness renewed again")
            ok = now_ok

    def _job_spec(self) -> dict[str, Any]:
        """The spec of the job record (the operator keeps it in sync with the cluster)."""
        rec = self.state.get_job(self.name)
        spec: dict[str, Any] = (rec.manifest if rec else {}).get("spec", {})
        return spec

    def planned_rounds(self) -> int:
        """spec.rounds as the job record has it now: the operator copies a `kubectl
        patch` of spec.rounds there, so the loop follows it without a restart."""
        try:
            value = int(self._job_spec().get("rounds", self.spec.rounds))
        except (TypeError, ValueError):
            value = self.spec.rounds
        value = max(1, value)
        self.telemetry.planned_rounds.set(value)
        return value

    def more_rounds(self) -> bool:
        """True if the job finished with fewer rounds than spec.rounds now asks for."""
        rec = self.state.get_job(self.name)
        return (
            rec is not None
            and rec.phase == Phase.SUCCEEDED
            and rec.completed_rounds < self.planned_rounds()
        )

    def _replicas(self) -> int:
        spec = self._job_spec()
        return int(spec.get("combiners", {}).get("replicas", self.spec.combiners.replicas))

    # ------------------------------------------------------------ the job

    def run(self) -> str:
        """Run the job to the end; return the final phase (Succeeded or Failed)."""
        rec = self.state.get_job(self.name) if self._ran else None
        if rec is None:
            # The first run stores the job file's manifest; a run again (a lingering
            # reducer after spec.rounds was raised) keeps the record's newer spec.
            rec = self.state.create_job(self.name, self.job.to_manifest())
        self._ran = True
        self._start_liveness()
        planned = self.planned_rounds()
        if rec.phase in (Phase.SUCCEEDED, Phase.FAILED) and rec.completed_rounds >= planned:
            self.log.info("job already finished", phase=rec.phase)
            self.telemetry.completed_rounds.set(rec.completed_rounds)
            return rec.phase
        last = self._recover()
        if rec.phase == Phase.FAILED:
            # Started again after a failure (e.g. the train code was fixed): the
            # failed round gets a fresh retry budget.
            self._retry_floor[last + 1] = self._attempt_number(last + 1) - 1
            self.events(EventKind.JOB_RESTARTED, f"restarting the failed job at round {last + 1}")
        if rec.started_at is None:
            self.state.update_job(self.name, started_at=time.time())
        self.state.update_job(self.name, phase=Phase.RUNNING, message="")
        self.events(EventKind.JOB_RUNNING, f"job running from round {last + 1} of {planned}")
        try:
            if not self._rounds(last):
                return Phase.RUNNING  # stopped
        except RoundFailed as exc:
            self._finish(Phase.FAILED, str(exc))
            return Phase.FAILED
        done = self._completed()
        planned = self.planned_rounds()
        message = f"completed {done} rounds"
        if done > planned:
            message += f" (spec.rounds was lowered to {planned} while it ran)"
        self._finish(Phase.SUCCEEDED, message)
        return Phase.SUCCEEDED

    def _completed(self) -> int:
        rec = self.state.get_job(self.name)
        return rec.completed_rounds if rec is not None else 0

    def _rounds(self, last: int) -> bool:
        """Rounds last+1 .. spec.rounds (read again before each round, so a patch of
        spec.rounds takes effect at the next round); False if stopped before the end."""
        self._seed().ensure()
        if last > 0:
            self.validator.maybe_validate(last, resume=True)
        r = last + 1
        while r <= self.planned_rounds():
            if self._stop.is_set():
                return False
            self._wait_unsuspended()
            if r > self.planned_rounds():  # lowered while suspended
                break
            self._train_round(r)
            self.validator.maybe_validate(r)
            r += 1
        return True

    def _seed(self) -> SeedMaker:
        return SeedMaker(
            self.job,
            self.store,
            self.state,
            self.pool,
            self.events,
            self.log,
            job_dir=self.cfg.job_dir,
            workdir=self.cfg.workdir,
        )

    def _finish(self, phase: Phase, message: str) -> None:
        self.state.update_job(self.name, phase=phase, message=message, completed_at=time.time())
        if phase == Phase.FAILED:
            self.log.error("job failed", error=message)
            self.events(EventKind.JOB_FAILED, message, "error")
        else:
            self.events(EventKind.JOB_SUCCEEDED, message)
            self.log.info("job succeeded", rounds=self._completed())

    def fail(self, message: str) -> bool:
        """Record the job Failed with `message` (what ended the reducer); best effort:
        False when the state store cannot take it (the error is logged)."""
        try:
            self._finish(Phase.FAILED, message)
            return True
        except Exception as exc:
            self.log.error("cannot record the job as failed", error=str(exc), reason=message)
            return False

    def interrupted(self) -> None:
        """The reducer is stopping before the job's end (SIGTERM, stop()): a Running
        job goes back to Pending with INTERRUPTED_MESSAGE, so no phase says Running
        without a reducer behind it; the next reducer resumes it. Best effort."""
        try:
            rec = self.state.get_job(self.name)
            if rec is None or rec.phase != Phase.RUNNING:
                return  # finished, suspended or never started: nothing claims a reducer
            self.state.update_job(self.name, phase=Phase.PENDING, message=INTERRUPTED_MESSAGE)
            self.events(EventKind.JOB_INTERRUPTED, f"reducer stopped: {INTERRUPTED_MESSAGE}")
            self.log.info("job interrupted", phase=Phase.PENDING)
        except Exception as exc:
            self.log.warning("cannot record the interruption", error=str(exc))

    def _recover(self) -> int:
        """Reconcile the job record with the committed rounds after a restart."""
        for r in self.state.get_rounds(self.name, participants=False):
            if r.status == AttemptStatus.RUNNING:
                self.state.fail_attempt(
                    self.name, r.round, r.attempt, AttemptReason.REDUCER_RESTARTED
                )
                self.events(
                    EventKind.ATTEMPT_ABANDONED,
                    f"round {r.round} attempt {r.attempt} was interrupted by a reducer restart",
                    "warning",
                    round=r.round,
                    attempt=r.attempt,
                )
        last = self.state.last_committed_round(self.name)
        self.telemetry.completed_rounds.set(last)
        self.telemetry.current_round.set(last)
        if last > 0:
            committed = {r.round: r for r in self.state.committed_rounds(self.name)}
            rr = committed[last]
            self.state.update_job(
                self.name,
                current_round=last,
                completed_rounds=last,
                latest_model=rr.model_key,
                metrics={**rr.metrics, **rr.validation},
            )
            self.log.info("resuming", last_committed_round=last)
        return last

    def _wait_unsuspended(self) -> None:
        """Pause here while spec.suspend of the job record is true."""
        announced = False
        while True:
            if not self._job_spec().get("suspend"):
                if announced:
                    self.state.update_job(self.name, phase=Phase.RUNNING, message="")
                    self.events(EventKind.JOB_RESUMED, "round loop resumed")
                return
            if not announced:
                self.state.update_job(
                    self.name, phase=Phase.SUSPENDED, message="spec.suspend is true"
                )
                self.events(EventKind.JOB_SUSPENDED, "round loop paused (spec.suspend)")
                announced = True
            if self._stop.wait(self.cfg.poll_seconds * 4):
                return

    # ------------------------------------------------------------ retries

    def _attempt_number(self, r: int) -> int:
        return 1 + max(
            (
                x.attempt
                for x in self.state.get_rounds(self.name, participants=False)
                if x.round == r
            ),
            default=0,
        )

    def _failed_attempts(self, r: int) -> int:
        """Failed attempts of round r that count against retry.maxAttempts: not the
        ones a reducer restart interrupted, nor those before a restart of a Failed job."""
        floor = self._retry_floor.get(r, 0)
        return sum(
            1
            for x in self.state.get_rounds(self.name, participants=False)
            if x.round == r
            and x.status == AttemptStatus.FAILED
            and not interrupted_by_restart(x.reason)
            and x.attempt > floor
        )

    def _train_round(self, r: int) -> None:
        limit = self.spec.retry.max_attempts
        while self._failed_attempts(r) < limit:
            attempt = self._attempt_number(r)
            t0 = time.monotonic()
            try:
                self._train_attempt(r, attempt)
                return
            except (RoundFailed, StoreError) as exc:
                # A storage outage fails the attempt like a missing quorum does: it is
                # retried after a backoff instead of crashing the reducer.
                self.telemetry.attempt_failed(cause_of(exc), time.monotonic() - t0)
                self._attempt_failed(r, attempt, exc)
                failures = self._failed_attempts(r)
                delay = min(60.0, self.spec.retry.backoff_seconds * 2 ** max(0, failures - 1))
                self.log.warning(
                    "attempt failed", round=r, attempt=attempt, error=str(exc), retry_in=delay
                )
                if failures < limit and self._stop.wait(delay):
                    raise
                if self._stop.is_set():
                    raise
        raise RoundFailed(f"round {r} failed after {limit} attempts (retry.maxAttempts)")

    def _attempt_failed(self, r: int, attempt: int, exc: Exception) -> None:
        self.state.fail_attempt(self.name, r, attempt, str(exc))
        self.events(
            EventKind.ATTEMPT_FAILED,
            f"round {r} attempt {attempt} failed: {exc}",
            "warning",
            round=r,
            attempt=attempt,
        )

    # ------------------------------------------------------------ one attempt

    def _train_attempt(self, r: int, attempt: int) -> None:
        at = self._begin(r, attempt)
        plan = round_plan(
            self.job,
            round=r,
            attempt=attempt,
            kind=pb.TASK_KIND_TRAIN,
            model_key=model_key(self.name, r - 1),
            timeout_seconds=self.spec.clients.round_timeout_seconds,
            weight_cap=weight_cap(self.spec.weights, self._claims(r - 1)),
        )
        t1 = time.monotonic()
        results = self.pool.run(plan, at.quotas, self._progress_recorder(at))
        at.train_s = time.monotonic() - t1
        good = self._quorum(at, results)
        at.aggregate_s = max((p.timings.get("aggregate_s", 0.0) for _, p in good), default=0.0)
        t2 = time.monotonic()
        model = merge_round(
            self.job,
            self.store,
            round=r,
            attempt=attempt,
            partials=[
                NamedPartial(name, p.key, p.weight, p.n_updates, p.digest) for name, p in good
            ],
            workdir=self.cfg.workdir,
            base_sha256=base.sha256 if (base := self.state.get_model(self.name, r - 1)) else None,
            cache=self.models,
        )
        # merge_round also wrote model r: that part is the commit's.
        at.merge_s = time.monotonic() - t2 - model.write_s
        at.commit_s = model.write_s
        self._commit(at, results, [p for _, p in good], model)

    def _claims(self, r: int) -> list[int]:
        """The num_examples claimed by the accepted updates of committed round `r`."""
        if r < 1 or self.spec.weights.max_median_multiple is None:
            return []
        committed = {x.attempt for x in self.state.committed_rounds(self.name) if x.round == r}
        return [
            u.num_examples
            for u in self.state.list_updates(self.name, r)
            if u.attempt in committed and u.status == AssignmentStatus.ACCEPTED
        ]

    def _begin(self, r: int, attempt: int) -> _Attempt:
        """Record the attempt, wait for clients, split the quota; RoundFailed when
        fewer than clients.minUpdates are connected."""
        c = self.spec.clients
        at = _Attempt(r, attempt, self.log.bind(round=r, attempt=attempt), time.monotonic(), {})
        self.state.begin_attempt(self.name, r, attempt)
        self.state.update_job(self.name, current_round=r)
        self.telemetry.current_round.set(r)
        connected = self.pool.wait_for_clients(
            c.per_round, c.min_updates, timeout=c.wait_timeout_seconds
        )
        if sum(connected.values()) < c.min_updates:
            raise AttemptFailed(
                Cause.NO_CLIENTS,
                f"only {sum(connected.values())} clients connected, "
                f"clients.minUpdates is {c.min_updates}",
            )
        at.quotas = distribute_quota(c.per_round, connected)
        at.wait_s = time.monotonic() - at.started
        self.events(
            EventKind.ROUND_STARTED,
            f"round {r} attempt {attempt}: {sum(at.quotas.values())} "
            f"clients over {sum(1 for q in at.quotas.values() if q)} combiners",
            round=r,
            attempt=attempt,
        )
        at.log.info("round started", quotas=at.quotas)
        return at

    def _progress_recorder(self, at: _Attempt) -> Callable[[str, pb.Progress], None]:
        def record(combiner: str, p: pb.Progress) -> None:
            progress = {
                "selected": p.selected,
                "received": p.received,
                "rejected": p.rejected,
                "failed": p.failed,
            }
            try:
                self.state.set_progress(self.name, at.round, at.attempt, combiner, progress)
            except Exception as exc:
                at.log.warning("cannot record progress", error=str(exc))

        return record

    def _quorum(self, at: _Attempt, results: list[CombinerResult]) -> list[tuple[str, pb.Partial]]:
        """The combiners with updates; RoundFailed below clients.minUpdates."""
        for res in results:
            if res.error:
                self.events(
                    EventKind.COMBINER_FAILED,
                    f"combiner {res.name} failed round {at.round}: {res.error}",
                    "warning",
                    round=at.round,
                    attempt=at.attempt,
                    combiner=res.name,
                )
                at.log.warning("combiner failed", combiner=res.name, error=res.error)
        good = [
            (res.name, res.partial)
            for res in results
            if res.partial is not None and res.partial.n_updates > 0
        ]
        n_updates = sum(p.n_updates for _, p in good)
        need = self.spec.clients.min_updates
        if n_updates < need:
            raise AttemptFailed(
                Cause.NO_QUORUM, f"{n_updates} updates aggregated, clients.minUpdates is {need}"
            )
        return good

    def _commit(
        self,
        at: _Attempt,
        results: list[CombinerResult],
        partials: list[pb.Partial],
        model: StoredModel,
    ) -> None:
        """Commit the attempt as round r (once only), then record model r's lineage."""
        t0 = time.monotonic()
        r = at.round
        # Weighted as the partials are merged (claims capped by spec.weights, or counts).
        metrics = weighted_metrics([(dict(p.metrics), p.weight) for p in partials])
        n_updates = sum(p.n_updates for p in partials)
        now = time.monotonic()
        timings = {
            "wait_s": at.wait_s,
            "train_s": at.train_s,
            "aggregate_s": at.aggregate_s,
            "merge_s": at.merge_s,
            "commit_s": at.commit_s + (now - t0),
            "total_s": now - at.started,
        }
        committed = self.state.commit_round(
            self.name,
            r,
            at.attempt,
            model_key=model.key,
            n_updates=n_updates,
            num_examples=sum(int(p.num_examples) for p in partials),
            metrics=metrics,
            timings=timings,
            participants=sorted(x for p in partials for x in p.participants),
            combiners=combiner_summary(results, at.quotas),
        )
        if not committed:
            at.log.warning("round was already committed; nothing changed")
            return
        self.telemetry.round_committed(r, n_updates, timings)
        parent = model_key(self.name, r - 1)
        self.state.add_model(
            ModelRecord(self.name, r, model.key, parent, model.sha256, model.size, time.time())
        )
        self.state.update_job(
            self.name, completed_rounds=r, current_round=r, latest_model=model.key, metrics=metrics
        )
        self._drop_partials(at, partials)
        self.events(
            EventKind.ROUND_COMPLETED,
            f"round {r} committed: {n_updates} updates, "
            + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()),
            round=r,
            attempt=at.attempt,
        )
        at.log.info(
            "round committed",
            n_updates=n_updates,
            metrics=metrics,
            seconds=round(timings["total_s"], 3),
        )

    def _drop_partials(self, at: _Attempt, partials: list[pb.Partial]) -> None:
        """Housekeeping: the round is committed whatever happens here."""
        for p in partials:
            try:
                self.store.delete(p.key)
            except FedkubeError as exc:
                at.log.warning("cannot delete a partial", key=p.key, error=str(exc))


def combiner_summary(
    results: list[CombinerResult], quotas: dict[str, int]
) -> dict[str, dict[str, Any]]:
    """What each combiner did in a committed attempt (``RoundRecord.combiners``)."""
    out: dict[str, dict[str, Any]] = {}
    for res in results:
        p = res.partial
        out[res.name] = {
            "n_updates": p.n_updates if p else 0,
            "received": p.n_updates if p else 0,
            "selected": p.selected if p else quotas.get(res.name, 0),
            "rejected": p.rejected if p else 0,
            "failed": p.failed if p else 0,
            "num_examples": p.num_examples if p else 0,
            "aggregate_s": p.timings.get("aggregate_s", 0.0) if p else 0.0,
            "error": res.error,
        }
    return out
