"""The reducer: owns the round loop of one job.

Round r, attempt a: record the attempt, ask every combiner to run it (quota by
connected clients), merge the combiners' partials as they arrive (weight =
examples), apply the server optimizer, write the new global model, commit the
round in the state store, then validate it. The state store is the source of
truth: a reducer killed at any point and started again resumes from the last
committed round, and a round is never committed twice.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from fedkube.aggregate import WeightedMean, make_server_optimizer
from fedkube.errors import FedkubeError, ModelFileError, StoreError, TaskError
from fedkube.logs import get_logger
from fedkube.model import (
    MappedModel,
    check_compatible,
    check_finite,
    load_model,
    read_header,
    save_model,
    sha256_file,
)
from fedkube.proto.v1 import fedkube_pb2 as pb
from fedkube.proto.v1 import fedkube_pb2_grpc as pb_grpc
from fedkube.rpc import ClientTLS, bearer, open_channel
from fedkube.selection import distribute_quota, weighted_metrics
from fedkube.spec import FederatedJob
from fedkube.state import EventRecord, ModelRecord, StateStore
from fedkube.store import ObjectStore, model_key, optimizer_key
from fedkube.vocabulary import AttemptStatus, Phase

RESTARTED = "reducer restarted"


class RoundFailed(FedkubeError):
    pass


@dataclass
class CombinerResult:
    name: str
    partial: pb.Partial | None = None
    error: str = ""
    progress: dict[str, int] = field(default_factory=dict)


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


class Reducer:
    def __init__(self, cfg: ReducerConfig) -> None:
        self.cfg = cfg
        self.job = cfg.job
        self.spec = cfg.job.spec
        self.name = cfg.job.name
        self.store = cfg.store
        self.state = cfg.state
        self.log = get_logger("reducer", job=self.name)
        self._stop = threading.Event()
        self._channels: dict[str, grpc.Channel] = {}
        self._control: dict[str, pb_grpc.CombinerControlStub] = {}
        self._addresses: dict[str, str] = {}
        self._set_combiners(dict(cfg.combiners))
        self._md = bearer(cfg.reducer_token)
        self._retry_floor: dict[int, int] = {}
        self._unreachable: set[str] = set()
        cfg.workdir.mkdir(parents=True, exist_ok=True)

    def stop(self) -> None:
        self._stop.set()

    def _set_combiners(self, wanted: dict[str, str]) -> None:
        for name in list(self._addresses):
            if wanted.get(name) != self._addresses[name]:
                self._channels.pop(name).close()
                del self._control[name], self._addresses[name]
        for name, addr in wanted.items():
            if name not in self._addresses:
                self._channels[name] = open_channel(addr, self.cfg.tls)
                self._control[name] = pb_grpc.CombinerControlStub(self._channels[name])
                self._addresses[name] = addr

    def refresh_combiners(self) -> None:
        """With a combiner template, follow spec.combiners.replicas of the job record."""
        tpl = self.cfg.combiner_template
        if not tpl:
            return
        rec = self.state.get_job(self.name)
        spec = (rec.manifest if rec else {}).get("spec", {})
        replicas = int(spec.get("combiners", {}).get("replicas", self.spec.combiners.replicas))
        wanted = expand_template(tpl, replicas)
        if wanted != self._addresses:
            self.log.info("combiners changed", combiners=sorted(wanted))
            self._set_combiners(wanted)

    def close(self) -> None:
        for ch in self._channels.values():
            ch.close()

    def event(self, kind: str, message: str, level: str = "info", **kw: Any) -> None:
        try:
            self.state.add_event(
                EventRecord(job=self.name, kind=kind, message=message, level=level, **kw)
            )
        except Exception as exc:
            self.log.warning("cannot record event", kind=kind, error=str(exc))

    # ------------------------------------------------------------ main loop

    def run(self) -> str:
        """Run the job to the end; return the final phase (Succeeded or Failed)."""
        rec = self.state.create_job(self.name, self.job.to_manifest())
        if (
            rec.phase in (Phase.SUCCEEDED, Phase.FAILED)
            and rec.completed_rounds >= self.spec.rounds
        ):
            self.log.info("job already finished", phase=rec.phase)
            return rec.phase
        last = self._recover()
        if rec.phase == Phase.FAILED:
            # Started again after a failure (e.g. the train code was fixed): the
            # failed round gets a fresh retry budget.
            self._retry_floor[last + 1] = self._attempt_number(last + 1) - 1
            self.event("JobRestarted", f"restarting the failed job at round {last + 1}")
        if rec.started_at is None:
            self.state.update_job(self.name, started_at=time.time())
        self.state.update_job(self.name, phase=Phase.RUNNING, message="")
        self.event("JobRunning", f"job running from round {last + 1} of {self.spec.rounds}")
        try:
            self._ensure_seed()
            if last > 0:
                self._maybe_validate(last, resume=True)
            for r in range(last + 1, self.spec.rounds + 1):
                if self._stop.is_set():
                    return Phase.RUNNING
                self._wait_unsuspended()
                self._train_round(r)
                self._maybe_validate(r)
        except RoundFailed as exc:
            self.log.error("job failed", error=str(exc))
            self.state.update_job(
                self.name, phase=Phase.FAILED, message=str(exc), completed_at=time.time()
            )
            self.event("JobFailed", str(exc), "error")
            return Phase.FAILED
        self.state.update_job(
            self.name,
            phase=Phase.SUCCEEDED,
            completed_at=time.time(),
            message=f"completed {self.spec.rounds} rounds",
        )
        self.event("JobSucceeded", f"completed {self.spec.rounds} rounds")
        self.log.info("job succeeded", rounds=self.spec.rounds)
        return Phase.SUCCEEDED

    def _recover(self) -> int:
        """Reconcile the job record with the committed rounds after a restart."""
        rounds = self.state.get_rounds(self.name)
        for r in rounds:
            if r.status == AttemptStatus.RUNNING:
                self.state.fail_attempt(self.name, r.round, r.attempt, RESTARTED)
                self.event(
                    "AttemptAbandoned",
                    f"round {r.round} attempt {r.attempt} was interrupted by a reducer restart",
                    "warning",
                    round=r.round,
                    attempt=r.attempt,
                )
        last = self.state.last_committed_round(self.name)
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
        announced = False
        while True:
            rec = self.state.get_job(self.name)
            suspended = bool(rec and rec.manifest.get("spec", {}).get("suspend"))
            if not suspended:
                if announced:
                    self.state.update_job(self.name, phase=Phase.RUNNING, message="")
                    self.event("JobResumed", "round loop resumed")
                return
            if not announced:
                self.state.update_job(
                    self.name, phase=Phase.SUSPENDED, message="spec.suspend is true"
                )
                self.event("JobSuspended", "round loop paused (spec.suspend)")
                announced = True
            if self._stop.wait(self.cfg.poll_seconds * 4):
                return

    # ------------------------------------------------------------ seed model

    def _ensure_seed(self) -> None:
        """Model 0: from spec.model.seedUri (a file next to the job, or an object key),
        or made by one client's init function/command (an init task). The reducer
        never runs user code, so its image needs none."""
        key = model_key(self.name, 0)
        if self.state.get_model(self.name, 0) is not None:
            return
        m = self.spec.model
        tmp = self.cfg.workdir / "seed.safetensors"
        if self.store.exists(key):
            self.store.get_file(key, tmp)  # made before a restart, not yet recorded
        elif m.seed_uri:
            src = m.seed_uri.removeprefix("file://")
            path = Path(src) if Path(src).is_absolute() else self.cfg.job_dir / src
            try:
                if path.exists():
                    shutil.copyfile(path, tmp)
                else:
                    self.store.get_file(src, tmp)
            except FedkubeError as exc:
                raise RoundFailed(f"spec.model.seedUri {m.seed_uri!r}: {exc}") from None
        elif m.init_fn or m.init_command:
            self._client_init(key)
            self.store.get_file(key, tmp)
        else:
            raise RoundFailed("no seed model: set spec.model.seedUri, initFn or initCommand")
        try:
            header = read_header(tmp, max_bytes=m.max_bytes)
            with MappedModel(tmp) as mm:
                check_finite(mm)
        except ModelFileError as exc:
            self.store.delete(key)
            raise RoundFailed(f"seed model is invalid: {exc}") from None
        sha = sha256_file(tmp)
        size = tmp.stat().st_size
        if not self.store.exists(key):
            self.store.put_file(key, tmp)
        self.state.add_model(ModelRecord(self.name, 0, key, None, sha, size, time.time()))
        tmp.unlink()
        self.event("SeedStored", f"seed model stored ({len(header.tensors)} tensors, {size} bytes)")
        self.log.info("seed model stored", key=key, tensors=len(header.tensors), bytes=size)

    def _client_init(self, key: str) -> None:
        """Ask one connected client to create the seed model (spec.model.initFn or
        initCommand, run where the user's code is)."""
        c = self.spec.clients
        for attempt in range(1, self.spec.retry.max_attempts + 1):
            connected = self._wait_for_clients(1, 1)
            live = sorted(n for n, k in connected.items() if k > 0)
            if not live:
                reason = "no client connected to create the seed model"
            else:
                plan = pb.RoundPlan(
                    job=self.name,
                    round=0,
                    attempt=attempt,
                    kind=pb.TASK_KIND_INIT,
                    model_key=key,
                    deadline_unix_ms=int((time.time() + c.round_timeout_seconds) * 1000),
                    config_json=json.dumps(self.spec.train.config),
                    seed=self.spec.seed,
                    max_bytes=self.spec.model.max_bytes,
                )
                results = self._run_on_combiners(plan, {live[0]: 1}, lambda n, p: None)
                if any(r.partial is not None and r.partial.n_updates == 1 for r in results):
                    return
                reason = "; ".join(r.error for r in results if r.error) or "the client failed"
            self.event("SeedFailed", f"init attempt {attempt}: {reason}", "warning", round=0)
            self.log.warning("seed model not created", attempt=attempt, reason=reason)
        raise RoundFailed(
            f"the seed model could not be created by a client (spec.model.initFn/initCommand) "
            f"after {self.spec.retry.max_attempts} attempts"
        )

    # ------------------------------------------------------------ one round

    def _statuses(self) -> dict[str, int]:
        self.refresh_combiners()
        out: dict[str, int] = {}
        for name, stub in self._control.items():
            try:
                st = stub.Status(pb.StatusRequest(), metadata=self._md, timeout=5)
                out[name] = st.connected
            except grpc.RpcError as exc:
                if exc.code() in (
                    grpc.StatusCode.UNAUTHENTICATED,
                    grpc.StatusCode.FAILED_PRECONDITION,
                ):
                    raise RoundFailed(
                        f"combiner {name} refused the reducer: {exc.details()}"
                    ) from None
                if name not in self._unreachable:  # say it once, not every poll
                    self.log.warning("combiner unreachable", combiner=name, error=exc.details())
                    self._unreachable.add(name)
                out[name] = 0
            else:
                if name in self._unreachable:
                    self.log.info("combiner reachable again", combiner=name)
                    self._unreachable.discard(name)
        return out

    def _wait_for_clients(self, want: int, need: int) -> dict[str, int]:
        """Wait until `want` clients are connected; after a grace period settle for
        `need`; after the wait timeout go on with whatever is there."""
        t0 = time.monotonic()
        timeout = self.spec.clients.wait_timeout_seconds
        grace = min(timeout, 10.0)
        while True:
            connected = self._statuses()
            total = sum(connected.values())
            waited = time.monotonic() - t0
            if total >= want or (total >= need and waited >= grace) or waited >= timeout:
                return connected
            if self._stop.wait(self.cfg.poll_seconds):
                return connected

    def _attempt_number(self, r: int) -> int:
        return 1 + max(
            (x.attempt for x in self.state.get_rounds(self.name) if x.round == r), default=0
        )

    def _failed_attempts(self, r: int) -> int:
        """Failed attempts of round r that count against retry.maxAttempts: not the
        ones a reducer restart interrupted, nor those before a restart of a Failed job."""
        floor = self._retry_floor.get(r, 0)
        return sum(
            1
            for x in self.state.get_rounds(self.name)
            if x.round == r
            and x.status == AttemptStatus.FAILED
            and x.reason != RESTARTED
            and x.attempt > floor
        )

    def _train_round(self, r: int) -> None:
        limit = self.spec.retry.max_attempts
        while self._failed_attempts(r) < limit:
            attempt = self._attempt_number(r)
            try:
                self._train_attempt(r, attempt)
                return
            except (RoundFailed, StoreError) as exc:
                # A storage outage fails the attempt like a missing quorum does: it is
                # retried after a backoff instead of crashing the reducer.
                self.state.fail_attempt(self.name, r, attempt, str(exc))
                self.event(
                    "AttemptFailed",
                    f"round {r} attempt {attempt} failed: {exc}",
                    "warning",
                    round=r,
                    attempt=attempt,
                )
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

    def _run_on_combiners(
        self,
        plan: pb.RoundPlan,
        quotas: dict[str, int],
        on_progress: Callable[[str, pb.Progress], None],
    ) -> list[CombinerResult]:
        results = {n: CombinerResult(n) for n, q in quotas.items() if q > 0}
        timeout = max(5.0, plan.deadline_unix_ms / 1000 - time.time() + 60)

        def drive(name: str) -> None:
            res = results[name]
            p = pb.RoundPlan()
            p.CopyFrom(plan)
            p.quota = quotas[name]
            try:
                for ev in self._control[name].RunRound(p, metadata=self._md, timeout=timeout):
                    if ev.HasField("progress"):
                        on_progress(name, ev.progress)
                    elif ev.HasField("partial"):
                        res.partial = ev.partial
            except grpc.RpcError as exc:
                res.error = f"{exc.code().name}: {exc.details()}"
            if res.partial is None and not res.error:
                res.error = "the combiner ended the round without a result"

        threads = [threading.Thread(target=drive, args=(n,), daemon=True) for n in results]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return list(results.values())

    def _train_attempt(self, r: int, attempt: int) -> None:
        c = self.spec.clients
        log = self.log.bind(round=r, attempt=attempt)
        t0 = time.monotonic()
        self.state.begin_attempt(self.name, r, attempt)
        self.state.update_job(self.name, current_round=r)
        connected = self._wait_for_clients(c.per_round, c.min_updates)
        if sum(connected.values()) < c.min_updates:
            raise RoundFailed(
                f"only {sum(connected.values())} clients connected, "
                f"clients.minUpdates is {c.min_updates}"
            )
        quotas = distribute_quota(c.per_round, connected)
        t_wait = time.monotonic() - t0
        self.event(
            "RoundStarted",
            f"round {r} attempt {attempt}: {sum(quotas.values())} "
            f"clients over {sum(1 for q in quotas.values() if q)} combiners",
            round=r,
            attempt=attempt,
        )
        log.info("round started", quotas=quotas)
        plan = pb.RoundPlan(
            job=self.name,
            round=r,
            attempt=attempt,
            kind=pb.TASK_KIND_TRAIN,
            model_key=model_key(self.name, r - 1),
            deadline_unix_ms=int((time.time() + c.round_timeout_seconds) * 1000),
            config_json=json.dumps(self.spec.train.config),
            seed=self.spec.seed,
            max_bytes=self.spec.model.max_bytes,
        )

        def on_progress(name: str, p: pb.Progress) -> None:
            try:
                self.state.set_progress(
                    self.name,
                    r,
                    attempt,
                    name,
                    {
                        "selected": p.selected,
                        "received": p.received,
                        "rejected": p.rejected,
                        "failed": p.failed,
                    },
                )
            except Exception as exc:
                log.warning("cannot record progress", error=str(exc))

        t1 = time.monotonic()
        results = self._run_on_combiners(plan, quotas, on_progress)
        t_train = time.monotonic() - t1
        for res in results:
            if res.error:
                self.event(
                    "CombinerFailed",
                    f"combiner {res.name} failed round {r}: {res.error}",
                    "warning",
                    round=r,
                    attempt=attempt,
                    combiner=res.name,
                )
                log.warning("combiner failed", combiner=res.name, error=res.error)
        good = [res for res in results if res.partial is not None and res.partial.n_updates > 0]
        n_updates = sum(res.partial.n_updates for res in good if res.partial)
        if n_updates < c.min_updates:
            raise RoundFailed(
                f"{n_updates} updates aggregated, clients.minUpdates is {c.min_updates}"
            )
        t2 = time.monotonic()
        new_key, sha, size = self._merge_and_step(r, attempt, good)
        t_merge = time.monotonic() - t2
        partials = [res.partial for res in good if res.partial]
        metrics = weighted_metrics([(dict(p.metrics), float(p.num_examples)) for p in partials])
        combiners = {
            res.name: {
                "n_updates": res.partial.n_updates if res.partial else 0,
                "received": res.partial.n_updates if res.partial else 0,
                "selected": res.partial.selected if res.partial else quotas.get(res.name, 0),
                "rejected": res.partial.rejected if res.partial else 0,
                "failed": res.partial.failed if res.partial else 0,
                "num_examples": res.partial.num_examples if res.partial else 0,
                "aggregate_s": res.partial.timings.get("aggregate_s", 0.0) if res.partial else 0.0,
                "error": res.error,
            }
            for res in results
        }
        participants = sorted(x for p in partials for x in p.participants)
        timings = {
            "wait_s": t_wait,
            "train_s": t_train,
            "merge_s": t_merge,
            "total_s": time.monotonic() - t0,
        }
        committed = self.state.commit_round(
            self.name,
            r,
            attempt,
            model_key=new_key,
            n_updates=n_updates,
            num_examples=sum(int(p.num_examples) for p in partials),
            metrics=metrics,
            timings=timings,
            participants=participants,
            combiners=combiners,
        )
        if not committed:
            log.warning("round was already committed; nothing changed")
            return
        self.state.add_model(
            ModelRecord(self.name, r, new_key, model_key(self.name, r - 1), sha, size, time.time())
        )
        self.state.update_job(
            self.name, completed_rounds=r, current_round=r, latest_model=new_key, metrics=metrics
        )
        for p in partials:  # housekeeping: the round is committed whatever happens here
            try:
                self.store.delete(p.key)
            except FedkubeError as exc:
                log.warning("cannot delete a partial", key=p.key, error=str(exc))
        self.event(
            "RoundCompleted",
            f"round {r} committed: {n_updates} updates, "
            + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()),
            round=r,
            attempt=attempt,
        )
        log.info(
            "round committed",
            n_updates=n_updates,
            metrics=metrics,
            seconds=round(timings["total_s"], 3),
        )

    def _merge_and_step(
        self, r: int, attempt: int, good: list[CombinerResult]
    ) -> tuple[str, str, int]:
        """Merge partials (weighted by examples), apply the server optimizer,
        store model r (and the optimizer state). Returns (key, sha256, size)."""
        work = Path(tempfile.mkdtemp(prefix=f"merge-{r}-", dir=self.cfg.workdir))
        try:
            gpath = self.store.fetch(model_key(self.name, r - 1), work / "global.safetensors")
            template = read_header(gpath)
            agg = WeightedMean(template)
            for res in good:
                assert res.partial is not None
                ppath = self.store.fetch(res.partial.key, work / f"{res.name}.safetensors")
                try:
                    with MappedModel(ppath, max_bytes=self.spec.model.max_bytes) as mm:
                        check_compatible(template, mm.header)
                        check_finite(mm)
                        agg.add(mm, res.partial.weight)
                except ModelFileError as exc:
                    raise RoundFailed(f"partial of combiner {res.name} is invalid: {exc}") from None
            aggregated = agg.result()
            agg.close()
            opt = make_server_optimizer(self.spec.server_optimizer)
            if self.spec.server_optimizer.name == "fedavg":
                new_model = aggregated
            else:
                current = load_model(gpath)
                state: dict[str, np.ndarray] = {}
                okey = optimizer_key(self.name, r - 1)
                if self.store.exists(okey):
                    state = load_model(self.store.fetch(okey, work / "opt.safetensors"))
                new_model, new_state = opt.step(current, aggregated, state)
                spath = work / "opt-new.safetensors"
                save_model(spath, new_state, {"round": str(r)})
                self.store.put_file(optimizer_key(self.name, r), spath)
            out = work / "model.safetensors"
            sha = save_model(out, new_model, {"round": str(r), "attempt": str(attempt)})
            key = model_key(self.name, r)
            self.store.put_file(key, out)
            return key, sha, out.stat().st_size
        finally:
            shutil.rmtree(work, ignore_errors=True)

    # ------------------------------------------------------------ validation

    def _maybe_validate(self, r: int, *, resume: bool = False) -> None:
        try:
            self._validate_round(r, resume=resume)
        except StoreError as exc:  # the round is committed; its validation is best effort
            self.event("ValidationFailed", f"round {r}: {exc}", "warning", round=r)
            self.log.warning("validation failed", round=r, error=str(exc))

    def _validate_round(self, r: int, *, resume: bool) -> None:
        v = self.spec.validation
        if not v.enabled or not (r % v.every == 0 or r == self.spec.rounds):
            return
        if not (self.spec.train.validate_fn or self.spec.train.validate_command):
            return
        if resume:
            done = [x for x in self.state.committed_rounds(self.name) if x.round == r]
            if done and done[0].validation:
                return
        attempt = 1
        connected = self._wait_for_clients(
            v.per_round or self.spec.clients.per_round, v.min_reports
        )
        total = sum(connected.values())
        quotas = distribute_quota(v.per_round or total, connected)
        plan = pb.RoundPlan(
            job=self.name,
            round=r,
            attempt=attempt,
            kind=pb.TASK_KIND_VALIDATE,
            model_key=model_key(self.name, r),
            deadline_unix_ms=int((time.time() + v.timeout_seconds) * 1000),
            config_json=json.dumps(self.spec.train.config),
            seed=self.spec.seed,
            max_bytes=self.spec.model.max_bytes,
        )
        results = self._run_on_combiners(plan, quotas, lambda n, p: None)
        partials = [res.partial for res in results if res.partial and res.partial.n_updates]
        reports = sum(p.n_updates for p in partials)
        if reports < v.min_reports:
            self.event(
                "ValidationIncomplete",
                f"round {r}: {reports} validation reports, "
                f"validation.minReports is {v.min_reports}",
                "warning",
                round=r,
            )
            return
        examples = sum(int(p.num_examples) for p in partials)
        metrics = weighted_metrics([(dict(p.metrics), float(p.num_examples)) for p in partials])
        self.state.set_validation(self.name, r, metrics, examples)
        rec = [x for x in self.state.committed_rounds(self.name) if x.round == r]
        train_metrics = rec[0].metrics if rec else {}
        self.state.update_job(self.name, metrics={**train_metrics, **metrics})
        self.event(
            "RoundValidated",
            f"round {r} validated by {reports} clients: "
            + ", ".join(f"{k}={val:.4g}" for k, val in metrics.items()),
            round=r,
        )
        self.log.info("round validated", round=r, reports=reports, metrics=metrics)


def _state_answers(state: StateStore, name: str) -> bool:
    state.get_job(name)  # raises when the state store is unreachable
    return True


def expand_template(template: str, replicas: int) -> dict[str, str]:
    """'c-{i}=c-{i}.svc:7070' with 2 replicas -> {'c-0': 'c-0.svc:7070', 'c-1': ...}."""
    name, sep, addr = template.partition("=")
    if not sep or "{i}" not in name or ":" not in addr:
        raise ValueError(f"combiner template {template!r}: expected NAME-{{i}}=HOST-{{i}}:PORT")
    return {
        name.replace("{i}", str(i)): addr.replace("{i}", str(i)) for i in range(max(0, replicas))
    }


def run_reducer(cfg: ReducerConfig, *, health_port: int | None = None, linger: bool = False) -> str:
    """Run the job; with `health_port`, serve /healthz and /status meanwhile; with
    `linger`, keep serving after the job finished until SIGTERM (a Deployment's
    pod should not exit and be restarted in a loop)."""
    import signal

    from fedkube.reducer.health import HealthServer
    from fedkube.report import job_status

    reducer = Reducer(cfg)
    stopped = threading.Event()

    def _term(signum: int, frame: Any) -> None:
        reducer.stop()
        stopped.set()
        raise SystemExit(143)

    signal.signal(signal.SIGTERM, _term)
    health = None
    if health_port is not None:
        health = HealthServer(
            os.environ.get("FEDKUBE_BIND_HOST", "0.0.0.0"),
            health_port,
            healthy=lambda: _state_answers(cfg.state, cfg.job.name),
            status=lambda: job_status(cfg.state, cfg.job.name),
        ).start()
        reducer.log.info("health endpoint listening", port=health.port)
    try:
        try:
            phase = reducer.run()
        except TaskError as exc:
            reducer.log.error("job failed", error=str(exc))
            cfg.state.update_job(cfg.job.name, phase=Phase.FAILED, message=str(exc))
            phase = Phase.FAILED
        if linger:
            reducer.log.info("job finished; lingering until terminated", phase=phase)
            stopped.wait()
        return phase
    finally:
        reducer.close()
        if health is not None:
            health.close()
