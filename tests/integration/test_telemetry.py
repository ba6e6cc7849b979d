"""Prometheus metrics of the reducer and the combiners, checked against the state store.

1. A real local run (reducer, two combiners, simulated clients as processes)
   plus a rogue client of the test's own, with a real credential, whose updates
   the combiner refuses: its /metrics are scraped during the run and after, and
   the counters equal what the state store recorded (committed rounds, update
   records by status and reason); no label names a client, no token shows.
2. One combiner in this process, driven by fake clients, for exact per-reason
   counts, the store latencies and the new UpdateRecord fields.
3. A real Prometheus server scrapes a local run through the run's file_sd
   targets file; its query API returns the committed-rounds count.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fedkube.model import load_model, save_model
from fedkube.proto.v1 import fedkube_pb2 as pb
from fedkube.proto.v1 import fedkube_pb2_grpc as pb_grpc
from fedkube.rpc import bearer
from fedkube.state import StateStore
from fedkube.vocabulary import AssignmentStatus, Phase
from tests.support import toy_task
from tests.support.combiner import (
    REDUCER_TOKEN,
    UNKNOWN_CLIENT_TOKEN,
    CombinerHarness,
    seed_model,
)
from tests.support.federation import Federation, toy_manifest, write_job

#: how long a condition that depends on the run may take (a bound, not a measurement)
PATIENCE = 120.0


# ---------------------------------------------------------------- scraping


class Scrape:
    """One scrape of a /metrics endpoint: the raw text and its samples."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples = [s for fam in text_string_to_metric_families(text) for s in fam.samples]

    @classmethod
    def of(cls, url: str) -> Scrape:
        with urllib.request.urlopen(url, timeout=10) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain")
            return cls(resp.read().decode())

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples `name` whose labels include `labels` (0 if none)."""
        return sum(
            s.value
            for s in self.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )

    def by(self, name: str, *keys: str) -> collections.Counter[tuple[str, ...]]:
        """The samples `name` summed by the values of `keys` (zero counts left out)."""
        out: collections.Counter[tuple[str, ...]] = collections.Counter()
        for s in self.samples:
            if s.name == name and s.value:
                out[tuple(s.labels.get(k, "") for k in keys)] += int(s.value)
        return out

    def label_values(self) -> set[str]:
        return {v for s in self.samples for v in s.labels.values()}


def eventually(cond: Callable[[], bool], what: str, timeout: float = PATIENCE) -> None:
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < timeout, f"timed out waiting for {what}"
        time.sleep(0.2)


def records_by_status(state: StateStore, job: str) -> collections.Counter[tuple[str, str]]:
    return collections.Counter((u.status, u.reason) for u in state.list_updates(job))


def assert_no_client_ids_nor_tokens(
    scrape: Scrape, client_ids: set[str], secrets: set[str]
) -> None:
    values = scrape.label_values()
    assert not values & client_ids, values & client_ids
    assert not any(cid in v for v in values for cid in client_ids)
    for secret in secrets:
        assert secret not in scrape.text
    assert "fkc_" not in scrape.text  # the form of every client token


# ---------------------------------------------------------------- a rogue client


class Rogue:
    """A client with a real credential whose train updates are refused: round 1 claims
    0 examples (bad_weight), later rounds send NaN weights (not_finite). It makes a
    valid seed if asked and declines validation (a failed validation report)."""

    def __init__(self, address: str, client_id: str, token: str) -> None:
        self.client_id = client_id
        self.md = bearer(token)
        self.channel = grpc.insecure_channel(address)
        self.stub = pb_grpc.CombinerStub(self.channel)
        self.handled: list[tuple[int, int]] = []  # (kind, round)
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self.call = self.stub.Connect(pb.Hello(client_id=client_id, job="toy"), metadata=self.md)
        self._threads = [
            threading.Thread(target=self._tasks, daemon=True),
            threading.Thread(target=self._beat, daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _beat(self) -> None:
        while not self._stop.wait(0.4):
            with contextlib.suppress(grpc.RpcError):
                self.stub.Heartbeat(pb.Ping(client_id=self.client_id), metadata=self.md, timeout=5)

    def _tasks(self) -> None:
        try:
            for task in self.call:
                self._handle(task)
                self.handled.append((task.kind, task.round))
        except grpc.RpcError as exc:
            if not self._stop.is_set():
                self.errors.append(exc)
        except Exception as exc:  # an assertion in the handler: the test reports it
            self.errors.append(exc)

    def _update(self, task: pb.Task, **kw: Any) -> pb.Ack:
        upd = pb.Update(
            task_id=task.task_id,
            client_id=self.client_id,
            job=task.job,
            round=task.round,
            attempt=task.attempt,
            **kw,
        )
        ack: pb.Ack = self.stub.ReportUpdate(upd, metadata=self.md, timeout=30)
        return ack

    def _handle(self, task: pb.Task) -> None:
        if task.kind == pb.TASK_KIND_VALIDATE:
            rep = pb.Validation(
                task_id=task.task_id,
                client_id=self.client_id,
                job=task.job,
                round=task.round,
                attempt=task.attempt,
                error="the rogue declines to validate",
            )
            self.stub.ReportValidation(rep, metadata=self.md, timeout=30)
            return
        out = Path(task.upload.path)
        out.parent.mkdir(parents=True, exist_ok=True)
        if task.kind == pb.TASK_KIND_INIT:
            sha = save_model(out, toy_task.init())
            assert self._update(task, num_examples=1, digest=sha).accepted
            return
        if task.round == 1:
            ack = self._update(task, num_examples=0)
            assert (ack.accepted, ack.reason) == (False, "bad_weight"), ack
            return
        model = load_model(task.model.path)
        model["w"] = np.full_like(model["w"], np.nan)
        sha = save_model(out, model)
        ack = self._update(task, num_examples=10, digest=sha)
        assert (ack.accepted, ack.reason) == (False, "not_finite"), ack

    def close(self) -> None:
        self._stop.set()
        self.call.cancel()
        self.channel.close()


# ---------------------------------------------------------------- 1. a local run


def test_metrics_of_a_local_run_match_the_state_store(tmp_path: Path) -> None:
    rounds = 2
    manifest = toy_manifest(rounds=rounds, combiners=2, clients=3, per_round=4, min_updates=3)
    with Federation(write_job(tmp_path / "job", manifest), tmp_path / "wd") as fed:
        fed.start(clients=False, reducer_args=["--linger"])  # serve metrics after the end
        rogue_token = fed.state.issue_credential("toy", "rogue-0")[0]
        rogue = Rogue(fed.fed.combiners["combiner-0"], "rogue-0", rogue_token)
        try:
            urls = fed.metrics_urls()
            assert set(urls) == {"reducer", "combiner-0", "combiner-1"}
            # The job runs but cannot pass round 1 without the simulated clients.
            eventually(lambda: _job_phase(fed) == Phase.RUNNING, "the job to run")
            scrape_before_the_clients(urls, rounds)
            fed.start_clients()
            scrape_until_done(fed, urls)
            assert not rogue.errors, rogue.errors
            assert (pb.TASK_KIND_TRAIN, rounds) in rogue.handled  # it took part in each round
            check_after_the_run(fed, urls, rounds, rogue_token)
        finally:
            rogue.close()


def scrape_before_the_clients(urls: dict[str, str], rounds: int) -> None:
    red = Scrape.of(urls["reducer"])
    assert red.value("fedkube_rounds_committed_total", job="toy") == 0
    assert red.value("fedkube_rounds_planned", job="toy") == rounds
    c0, c1 = Scrape.of(urls["combiner-0"]), Scrape.of(urls["combiner-1"])
    eventually(
        lambda: Scrape.of(urls["combiner-0"]).value("fedkube_clients_connected") == 1,
        "the rogue to connect",
    )
    assert c1.value("fedkube_clients_connected", job="toy", combiner="combiner-1") == 0
    assert c0.value("fedkube_updates_total", status="rejected") == 0


def scrape_until_done(fed: Federation, urls: dict[str, str]) -> None:
    """Scrape until the job succeeded: the reducer never counts a round the store
    lacks (its counter moves right after the store's commit)."""
    t0 = time.monotonic()
    while (phase := _job_phase(fed)) != Phase.SUCCEEDED:
        assert phase != Phase.FAILED, fed.log("reducer")
        assert time.monotonic() - t0 < PATIENCE * 2, "the job did not finish"
        before = len(fed.state.committed_rounds(fed.name))
        counted = Scrape.of(urls["reducer"]).value("fedkube_rounds_committed_total", job="toy")
        after = len(fed.state.committed_rounds(fed.name))
        assert before <= counted <= after
        for name in ("combiner-0", "combiner-1"):
            assert Scrape.of(urls[name]).value("fedkube_attempts_served_total") >= 0
        time.sleep(0.3)


def check_after_the_run(
    fed: Federation, urls: dict[str, str], rounds: int, rogue_token: str
) -> None:
    committed = fed.state.committed_rounds(fed.name)
    assert len(committed) == rounds
    red = Scrape.of(urls["reducer"])
    assert red.value("fedkube_rounds_committed_total", job="toy") == len(committed)
    assert red.value("fedkube_rounds_completed", job="toy") == rounds
    assert red.value("fedkube_rounds_planned", job="toy") == rounds
    assert red.value("fedkube_round_current", job="toy") == rounds
    assert red.value("fedkube_round_updates_total", job="toy") == sum(
        r.n_updates for r in committed
    )
    assert red.value("fedkube_attempt_duration_seconds_count", status="completed") == rounds
    for stage in ("wait", "train", "aggregate", "merge", "commit"):
        assert red.value("fedkube_round_stage_seconds_count", stage=stage) == rounds
        assert all(f"{stage}_s" in r.timings for r in committed)
    assert red.value("fedkube_state_store_seconds_count", operation="commit_round") == rounds
    assert red.value("fedkube_object_store_seconds_count", operation="put_file") >= rounds

    # The combiners' settled tasks, summed, are the store's update records.
    def combined() -> collections.Counter[tuple[str, ...]]:
        total: collections.Counter[tuple[str, ...]] = collections.Counter()
        for name in ("combiner-0", "combiner-1"):
            total += Scrape.of(urls[name]).by("fedkube_updates_total", "status", "reason")
        return total

    def store() -> collections.Counter[tuple[str, ...]]:
        return collections.Counter(dict(records_by_status(fed.state, fed.name)))

    eventually(lambda: combined() == store(), "update records written for every settled task")
    counts = store()
    assert counts[(AssignmentStatus.ACCEPTED, "")] >= sum(r.n_updates for r in committed)
    rogue = [u for u in fed.state.list_updates(fed.name) if u.client == "rogue-0" and u.round]
    assert {(u.round, u.status, u.reason) for u in rogue} == {
        (1, "rejected", "bad_weight"),
        *((r, "rejected", "not_finite") for r in range(2, rounds + 1)),
    }
    assert counts[(AssignmentStatus.REJECTED, "bad_weight")] >= 1

    c0 = Scrape.of(urls["combiner-0"])
    pushed = sum(
        1 for u in fed.state.list_updates(fed.name) if u.combiner == "combiner-0" and u.round >= 1
    )
    assert (
        c0.value("fedkube_task_fanout_seconds_count", combiner="combiner-0", kind="train") == pushed
    )
    assert c0.value("fedkube_attempts_served_total", combiner="combiner-0", kind="train") >= rounds
    assert c0.value("fedkube_clients_connected", combiner="combiner-0") == 3
    assert c0.value("fedkube_aggregate_bytes_total", combiner="combiner-0") > 0
    declined = c0.value("fedkube_validation_reports_total", status="failed", reason="client_error")
    assert declined >= 1  # the rogue's

    client_ids = {f"client-{i}" for i in range(3)} | {"rogue-0"}
    secrets = {fed.fed.reducer_token, rogue_token, *(fed.fed.client_token_for(i) for i in range(3))}
    for url in urls.values():
        assert_no_client_ids_nor_tokens(Scrape.of(url), client_ids, secrets)


# ---------------------------------------------------------------- 2. one combiner, exactly


class MeteredCombiner(CombinerHarness):
    """The test combiner of tests.support.combiner with its metrics endpoint on."""

    def serve_options(self) -> dict[str, Any]:
        return {"metrics_port": 0, "metrics_port_file": self.tmp / "metrics.port"}

    def scrape(self) -> Scrape:
        # written before the gRPC port file, which the harness waited for
        port = int((self.tmp / "metrics.port").read_text())
        return Scrape.of(f"http://127.0.0.1:{port}/metrics")


@pytest.fixture
def comb(tmp_path: Path):
    h = MeteredCombiner(tmp_path)
    yield h
    h.close()


def test_one_combiner_counts_each_outcome_once(comb: MeteredCombiner) -> None:
    good, bad = comb.client("good"), comb.client("bad")
    comb.wait_connected(2)
    s = comb.scrape()
    assert s.value("fedkube_clients_connected", combiner="c0") == 2
    assert s.value("fedkube_clients_busy", combiner="c0") == 0
    call = comb.run_round(quota=2)
    tg, tb = good.next_task(), bad.next_task()
    bad_model = {**seed_model(), "w": np.full(8, np.nan, np.float32)}
    ack = bad.report(tb, num_examples=5, digest=bad.upload(tb, bad_model))
    assert (ack.accepted, ack.reason) == (False, "not_finite")
    assert not bad.report(tb, num_examples=5).accepted  # a duplicate: ignored
    model = {**seed_model(), "w": np.ones(8, np.float32)}
    assert good.report(tg, num_examples=7, digest=good.upload(tg, model)).accepted
    assert call.result().n_updates == 1
    with pytest.raises(grpc.RpcError):  # a made-up token: refused before any work
        comb.client("nobody", token=UNKNOWN_CLIENT_TOKEN).next_task()

    s = comb.scrape()
    jc = {"job": "toy", "combiner": "c0"}
    assert s.by("fedkube_updates_total", "status", "reason") == {
        ("accepted", ""): 1,
        ("rejected", "not_finite"): 1,
    }
    assert s.by("fedkube_reports_ignored_total", "reason") == {("duplicate",): 1}
    assert s.value("fedkube_refused_calls_total", **jc, kind="AuthFailed") == 1
    assert s.value("fedkube_attempts_served_total", **jc, kind="train") == 1
    assert s.value("fedkube_task_fanout_seconds_count", **jc, kind="train") == 2
    assert s.value("fedkube_aggregate_seconds_count", **jc) == 2  # both files checked
    assert s.value("fedkube_aggregate_bytes_total", **jc) > 0
    assert s.value("fedkube_client_train_seconds_count", **jc) == 1  # accepted ones
    assert s.value("fedkube_object_store_seconds_count", **jc, operation="presign_put") == 2
    eventually(
        lambda: (
            comb.scrape().value("fedkube_state_store_seconds_count", operation="record_update") == 2
        ),
        "both update records written",
        timeout=10,
    )
    recs = {u.client: u for u in comb.state.list_updates("toy", 1)}
    assert recs["bad"].status == "rejected" and "NaN" in recs["bad"].message
    assert recs["good"].message == "" and recs["good"].train_s > 0
    assert_no_client_ids_nor_tokens(
        comb.scrape(),
        {"good", "bad", "nobody"},
        {REDUCER_TOKEN, comb.token_for("good"), comb.token_for("bad")},
    )


# ---------------------------------------------------------------- 3. real Prometheus


def test_prometheus_scrapes_a_local_run_through_its_targets_file(
    tmp_path: Path, prometheus: Callable[..., Any]
) -> None:
    rounds = 2
    manifest = toy_manifest(rounds=rounds, combiners=2, clients=2)
    manifest["spec"]["validation"] = {"enabled": False}
    with Federation(write_job(tmp_path / "job", manifest), tmp_path / "wd") as fed:
        fed.start(reducer_args=["--linger"])
        urls = fed.metrics_urls()  # the targets file now names the reducer too
        targets_file = fed.fed.metrics_targets_path
        assert len([t for e in _json(targets_file) for t in e["targets"]]) == len(urls)
        prom = prometheus(file_sd=[targets_file], scrape_interval=1.0)
        eventually(lambda: _job_phase(fed) == Phase.SUCCEEDED, "the job to succeed")
        committed = len(fed.state.committed_rounds(fed.name))
        assert committed == rounds

        def scraped_all() -> bool:
            return prom.value("sum(fedkube_rounds_committed_total)") == committed

        eventually(scraped_all, "Prometheus to scrape the committed rounds", timeout=60)
        assert prom.value("sum(fedkube_rounds_committed_total)") == committed
        assert prom.value('sum(fedkube_rounds_committed_total{job="toy"})') == committed
        accepted = sum(1 for u in fed.state.list_updates(fed.name) if u.status == "accepted")
        eventually(
            lambda: prom.value('sum(fedkube_updates_total{status="accepted"})') == accepted,
            "Prometheus to scrape the combiners' final counts",
            timeout=60,
        )
        roles = {t["labels"]["role"] for t in prom.targets() if t["health"] == "up"}
        assert roles == {"reducer", "combiner"}


def _json(path: Path) -> Any:
    import json

    return json.loads(path.read_text())


def _job_phase(fed: Federation) -> str | None:
    job = fed.state.get_job(fed.name)
    return job.phase if job else None
