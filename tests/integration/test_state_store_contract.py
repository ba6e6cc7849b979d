"""The StateStore contract, run on every backend: the same test functions on
SqliteStateStore ("sqlite") and MongoStateStore on a real FerretDB ("mongo",
the MongoDB wire protocol; see fedkube/devenv/).

A backend is a class in BACKENDS with ``uri`` (a URI that open_state_store
opens, also from another process) and ``open()`` (a new store on the same
data), on fresh storage (a new SQLite file; a new database, dropped
afterwards). The `backend` fixture is parametrized over BACKEND_PARAMS;
`store` is ``backend.open()``.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest

from fedkube.devenv.mongo import MongoServer
from fedkube.errors import StateError
from fedkube.state.base import (
    SCHEMA_VERSION,
    ClientRecord,
    EventRecord,
    ModelRecord,
    StateStore,
    UpdateRecord,
)
from fedkube.state.factory import open_state_store
from fedkube.state.sqlite import SqliteStateStore
from fedkube.vocabulary import AttemptStatus, Phase


class Backend(Protocol):
    uri: str

    def open(self) -> StateStore: ...


class SqliteBackend:
    def __init__(self, request: pytest.FixtureRequest, tmp_path: Path) -> None:
        self.path = tmp_path / "state" / "fedkube.db"
        self.uri = f"sqlite:///{self.path}"

    def open(self) -> StateStore:
        return SqliteStateStore(self.path)


class MongoBackend:
    def __init__(self, request: pytest.FixtureRequest, tmp_path: Path) -> None:
        server: MongoServer = request.getfixturevalue("mongo_server")
        database = server.new_database_name(request.node.name)
        request.addfinalizer(lambda: server.drop_database(database))
        self.uri = server.database_uri(database)

    def open(self) -> StateStore:
        return open_state_store(self.uri)


BACKENDS: dict[str, Any] = {"sqlite": SqliteBackend, "mongo": MongoBackend}
BACKEND_PARAMS = ["sqlite", "mongo"]


@pytest.fixture(params=BACKEND_PARAMS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    b: Backend = BACKENDS[request.param](request, tmp_path)
    return b


@pytest.fixture
def store(backend: Backend) -> Iterator[StateStore]:
    s = backend.open()
    yield s
    s.close()


def _commit(store: StateStore, job: str, round: int, attempt: int, **over: Any) -> bool:
    kw: dict[str, Any] = {
        "model_key": f"jobs/{job}/models/{round:06d}.safetensors",
        "n_updates": 3,
        "num_examples": 300,
        "metrics": {"loss": 0.5},
        "timings": {"aggregate": 1.5},
        "participants": ["c1", "c2", "c3"],
        "combiners": {"comb-0": {"updates": 3}},
    }
    kw.update(over)
    return store.commit_round(job, round, attempt, **kw)


# ---- jobs


def test_create_job_is_idempotent_and_keeps_the_record(store: StateStore) -> None:
    assert store.get_job("j") is None
    rec = store.create_job("j", {"spec": {"rounds": 3}})
    assert rec.name == "j"
    assert rec.phase == Phase.PENDING
    assert rec.manifest == {"spec": {"rounds": 3}}
    assert rec.created_at > 0
    store.update_job("j", phase=Phase.RUNNING, current_round=2)
    again = store.create_job("j", {"spec": {"rounds": 5}})
    assert again.created_at == rec.created_at
    assert again.phase == Phase.RUNNING  # the existing record, not a fresh Pending one
    assert again.current_round == 2
    assert again.manifest == {"spec": {"rounds": 5}}  # the new manifest is stored
    got = store.get_job("j")
    assert got is not None
    assert got.manifest == {"spec": {"rounds": 5}}
    assert [j.name for j in store.list_jobs()] == ["j"]


def test_manifest_with_dotted_and_dollar_keys(store: StateStore) -> None:
    manifest = {
        "metadata": {"annotations": {"app.kubernetes.io/name": "x", "$weird": 1}},
        "spec": {"list": [1, 2.5, "s", None, {"a.b": True}]},
    }
    store.create_job("j", manifest)
    got = store.get_job("j")
    assert got is not None
    assert got.manifest == manifest


def test_list_jobs_sorted_by_name(store: StateStore) -> None:
    for name in ["zeta", "alpha", "mid"]:
        store.create_job(name, {})
    assert [j.name for j in store.list_jobs()] == ["alpha", "mid", "zeta"]


def test_update_job(store: StateStore) -> None:
    created = store.create_job("j", {})
    rec = store.update_job(
        "j",
        phase=Phase.FAILED,
        message="boom",
        completed_rounds=4,
        latest_model="jobs/j/models/000004.safetensors",
        metrics={"accuracy": 0.9},
        completed_at=123.0,
    )
    assert rec.phase == Phase.FAILED
    assert rec.message == "boom"
    assert rec.completed_rounds == 4
    assert rec.latest_model == "jobs/j/models/000004.safetensors"
    assert rec.metrics == {"accuracy": 0.9}
    assert rec.completed_at == 123.0
    assert rec.updated_at >= created.updated_at
    assert store.get_job("j") == rec


def test_update_job_errors(store: StateStore) -> None:
    store.create_job("j", {})
    with pytest.raises(StateError, match="nope"):
        store.update_job("nope", phase=Phase.RUNNING)
    with pytest.raises(StateError, match="colour"):
        store.update_job("j", colour="red")
    with pytest.raises(StateError, match="Exploded"):
        store.update_job("j", phase="Exploded")
    rec = store.get_job("j")
    assert rec is not None
    assert rec.phase == Phase.PENDING  # failed updates changed nothing


# ---- rounds


def test_begin_attempt_is_idempotent(store: StateStore) -> None:
    r1 = store.begin_attempt("j", 1, 1)
    assert (r1.job, r1.round, r1.attempt, r1.status) == ("j", 1, 1, AttemptStatus.RUNNING)
    assert r1.started_at > 0
    r2 = store.begin_attempt("j", 1, 1)
    assert r2 == r1
    assert len(store.get_rounds("j")) == 1


def test_set_progress_replaces_per_combiner(store: StateStore) -> None:
    store.begin_attempt("j", 1, 1)
    store.set_progress("j", 1, 1, "comb-0", {"updates": 1})
    store.set_progress("j", 1, 1, "comb-1", {"updates": 5})
    store.set_progress("j", 1, 1, "comb-0", {"updates": 2, "bytes": 10})
    (r,) = store.get_rounds("j")
    assert r.combiners == {"comb-0": {"updates": 2, "bytes": 10}, "comb-1": {"updates": 5}}
    with pytest.raises(StateError):
        store.set_progress("j", 1, 9, "comb-0", {})


def test_concurrent_progress_from_combiners_is_not_lost(store: StateStore) -> None:
    store.begin_attempt("j", 1, 1)
    errors: list[BaseException] = []

    def report(c: int) -> None:
        try:
            for i in range(1, 16):
                store.set_progress("j", 1, 1, f"comb-{c}", {"updates": i})
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=report, args=(c,)) for c in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    (r,) = store.get_rounds("j")
    assert r.combiners == {f"comb-{c}": {"updates": 15} for c in range(4)}


def test_set_progress_after_commit_is_ignored(store: StateStore) -> None:
    store.begin_attempt("j", 1, 1)
    assert _commit(store, "j", 1, 1, combiners={"comb-0": {"final": True}})
    store.set_progress("j", 1, 1, "comb-0", {"late": True})
    (r,) = store.get_rounds("j")
    assert r.combiners == {"comb-0": {"final": True}}


def test_fail_attempt(store: StateStore) -> None:
    store.begin_attempt("j", 1, 1)
    store.fail_attempt("j", 1, 1, "timeout")
    (r,) = store.get_rounds("j")
    assert r.status == AttemptStatus.FAILED
    assert r.reason == "timeout"
    assert r.completed_at is not None
    store.fail_attempt("j", 1, 1, "second reason")  # no-op: already failed
    (r2,) = store.get_rounds("j")
    assert r2.reason == "timeout"
    assert store.last_committed_round("j") == 0
    with pytest.raises(StateError):
        store.fail_attempt("j", 7, 1, "no such attempt")


def test_fail_attempt_after_commit_is_noop(store: StateStore) -> None:
    store.begin_attempt("j", 1, 1)
    assert _commit(store, "j", 1, 1)
    before = store.get_rounds("j")
    store.fail_attempt("j", 1, 1, "too late")
    assert store.get_rounds("j") == before
    assert before[0].status == AttemptStatus.COMPLETED
    assert before[0].reason == ""


def test_commit_round_records_everything(store: StateStore) -> None:
    started = store.begin_attempt("j", 2, 1)
    assert _commit(
        store,
        "j",
        2,
        1,
        model_key="m2",
        n_updates=7,
        num_examples=700,
        metrics={"loss": 0.25, "accuracy": 0.75},
        timings={"round": 3.0},
        participants=["b", "a"],
        combiners={"c0": {"n": 4}, "c1": {"n": 3}},
    )
    (r,) = store.get_rounds("j")
    assert r.status == AttemptStatus.COMPLETED
    assert r.started_at == started.started_at
    assert r.completed_at is not None and r.completed_at >= r.started_at
    assert r.model_key == "m2"
    assert r.n_updates == 7
    assert r.num_examples == 700
    assert r.metrics == {"loss": 0.25, "accuracy": 0.75}
    assert r.timings == {"round": 3.0}
    assert r.participants == ["b", "a"]
    assert r.combiners == {"c0": {"n": 4}, "c1": {"n": 3}}
    assert store.committed_rounds("j") == [r]


def test_commit_round_twice_keeps_the_first(store: StateStore) -> None:
    store.begin_attempt("j", 1, 1)
    assert _commit(store, "j", 1, 1, model_key="first", metrics={"loss": 1.0})
    first = store.get_rounds("j")
    assert not _commit(store, "j", 1, 1, model_key="second", metrics={"loss": 2.0})
    assert store.get_rounds("j") == first
    assert first[0].model_key == "first"


def test_only_one_attempt_of_a_round_can_commit(store: StateStore) -> None:
    store.begin_attempt("j", 1, 1)
    store.begin_attempt("j", 1, 2)
    assert _commit(store, "j", 1, 2, model_key="from-2")
    assert not _commit(store, "j", 1, 1, model_key="from-1")
    rounds = {r.attempt: r for r in store.get_rounds("j")}
    assert rounds[2].status == AttemptStatus.COMPLETED
    assert rounds[2].model_key == "from-2"
    assert rounds[1].status == AttemptStatus.RUNNING  # unchanged by the refused commit
    assert rounds[1].model_key is None
    assert [r.attempt for r in store.committed_rounds("j")] == [2]


def test_commit_of_failed_attempt_is_refused(store: StateStore) -> None:
    store.begin_attempt("j", 1, 1)
    store.fail_attempt("j", 1, 1, "combiner lost")
    with pytest.raises(StateError, match="failed"):
        _commit(store, "j", 1, 1)
    (r,) = store.get_rounds("j")
    assert r.status == AttemptStatus.FAILED
    # a new attempt of the round can still commit
    store.begin_attempt("j", 1, 2)
    assert _commit(store, "j", 1, 2)
    assert store.last_committed_round("j") == 1


def test_commit_without_begin_creates_the_attempt(store: StateStore) -> None:
    assert _commit(store, "j", 1, 3)
    (r,) = store.get_rounds("j")
    assert (r.round, r.attempt, r.status) == (1, 3, AttemptStatus.COMPLETED)
    assert r.started_at > 0


def test_rounds_are_per_job(store: StateStore) -> None:
    assert _commit(store, "a", 1, 1)
    assert _commit(store, "b", 1, 1)  # same round number, other job
    assert store.last_committed_round("a") == 1
    assert store.last_committed_round("b") == 1
    assert [r.job for r in store.get_rounds("a")] == ["a"]


def test_get_rounds_sorted_and_last_committed(store: StateStore) -> None:
    assert store.last_committed_round("j") == 0
    assert store.get_rounds("j") == []
    for rnd, att in [(3, 1), (1, 2), (2, 1), (1, 1)]:
        store.begin_attempt("j", rnd, att)
    store.fail_attempt("j", 1, 1, "x")
    assert _commit(store, "j", 1, 2)
    assert _commit(store, "j", 2, 1)
    assert [(r.round, r.attempt) for r in store.get_rounds("j")] == [(1, 1), (1, 2), (2, 1), (3, 1)]
    assert [(r.round, r.attempt) for r in store.committed_rounds("j")] == [(1, 2), (2, 1)]
    assert store.last_committed_round("j") == 2  # round 3 is only running
    assert store.last_committed_round("other") == 0


def test_set_validation(store: StateStore) -> None:
    store.begin_attempt("j", 1, 1)
    store.begin_attempt("j", 1, 2)
    assert _commit(store, "j", 1, 2)
    store.set_validation("j", 1, {"accuracy": 0.5}, 100)
    store.set_validation("j", 1, {"accuracy": 0.6, "loss": 0.4}, 120)  # last write wins
    rounds = {r.attempt: r for r in store.get_rounds("j")}
    assert rounds[2].validation == {"accuracy": 0.6, "loss": 0.4}
    assert rounds[2].validation_examples == 120
    assert rounds[1].validation == {}
    assert rounds[2].metrics == {"loss": 0.5}  # training metrics untouched
    store.begin_attempt("j", 2, 1)
    with pytest.raises(StateError):
        store.set_validation("j", 2, {"accuracy": 0.1}, 1)  # not committed


# ---- updates


def _update(client: str, round: int = 1, attempt: int = 1, **over: Any) -> UpdateRecord:
    kw: dict[str, Any] = {
        "job": "j",
        "round": round,
        "attempt": attempt,
        "client": client,
        "combiner": "comb-0",
        "status": "accepted",
        "num_examples": 10,
        "sha256": "ab" * 32,
    }
    kw.update(over)
    return UpdateRecord(**kw)


def test_record_update_duplicate_returns_false(store: StateStore) -> None:
    assert store.record_update(_update("c1", num_examples=10))
    assert not store.record_update(_update("c1", num_examples=999, status="rejected", reason="dup"))
    (u,) = store.list_updates("j")
    assert u.num_examples == 10
    assert u.status == "accepted"
    assert u.reason == ""
    assert u.at > 0
    # the same client in another attempt or round is a different update
    assert store.record_update(_update("c1", attempt=2))
    assert store.record_update(_update("c1", round=2))
    assert len(store.list_updates("j")) == 3


def test_update_weight_roundtrips(store: StateStore) -> None:
    rec = _update("c1", num_examples=10**12)
    rec.weight = 20.0
    assert store.record_update(rec)
    (u,) = store.list_updates("j")
    assert (u.num_examples, u.weight) == (10**12, 20.0)


def test_credentials_issue_list_revoke(store: StateStore) -> None:
    t1, r1 = store.issue_credential("j", "site-1", "first")
    t2, r2 = store.issue_credential("j", "site-1")
    t3, _ = store.issue_credential("j", "site-2")
    store.issue_credential("other", "site-1")
    assert len({t1, t2, t3}) == 3 and all(t.startswith("fkc_") for t in (t1, t2, t3))
    recs = store.list_credentials("j")
    assert [(r.client, r.token_id) for r in recs] == [
        ("site-1", r1.token_id),
        ("site-1", r2.token_id),
        ("site-2", recs[2].token_id),
    ]
    assert all(t1 not in (r.digest, r.token_id) for r in recs)  # only digests are stored
    assert recs[0].note == "first" and recs[0].issued_at > 0 and recs[0].revoked_at is None
    assert store.revoke_credentials("j", "site-1", r1.token_id) == 1
    assert store.revoke_credentials("j", "site-1", r1.token_id) == 0  # already revoked
    live = [r.token_id for r in store.list_credentials("j") if r.revoked_at is None]
    assert live == [r2.token_id, recs[2].token_id]
    assert store.revoke_credentials("j", "site-1") == 1
    assert store.revoke_credentials("j", "nobody") == 0
    assert [r.client for r in store.list_credentials("j") if r.revoked_at is None] == ["site-2"]
    assert len(store.list_credentials("other")) == 1
    with pytest.raises(ValueError, match="client id"):
        store.issue_credential("j", "two words")


def test_list_updates_sorted_and_filtered(store: StateStore) -> None:
    recs = [
        _update("c2", round=2),
        _update("c9", round=1, attempt=2),
        _update("c1", round=1, attempt=2),
        _update("c5", round=1, attempt=1, status="rejected", reason="nan"),
    ]
    for r in recs:
        assert store.record_update(r)
    assert store.record_update(_update("c0", job="other"))
    got = store.list_updates("j")
    assert [(u.round, u.attempt, u.client) for u in got] == [
        (1, 1, "c5"),
        (1, 2, "c1"),
        (1, 2, "c9"),
        (2, 1, "c2"),
    ]
    assert got[0].status == "rejected" and got[0].reason == "nan"
    assert [u.client for u in store.list_updates("j", round=2)] == ["c2"]
    assert store.list_updates("j", round=5) == []
    assert [u.client for u in store.list_updates("other")] == ["c0"]


# ---- events


def _event(job: str, i: int, **over: Any) -> EventRecord:
    kw: dict[str, Any] = {"job": job, "kind": "RoundStarted", "message": f"event {i}"}
    kw.update(over)
    return EventRecord(**kw)


def test_events_seq_order_since_and_limit(store: StateStore) -> None:
    for i in range(5):
        store.add_event(_event("j", i, round=i, attempt=1))
        store.add_event(_event("k", i))
    evs = store.list_events("j")
    assert [e.message for e in evs] == [f"event {i}" for i in range(5)]
    assert [e.seq for e in evs] == [1, 2, 3, 4, 5]
    assert all(e.at > 0 for e in evs)
    assert [e.round for e in evs] == [0, 1, 2, 3, 4]
    assert [e.seq for e in store.list_events("j", since_seq=3)] == [4, 5]
    assert [e.seq for e in store.list_events("j", since_seq=1, limit=2)] == [2, 3]
    assert store.list_events("j", since_seq=5) == []
    assert store.list_events("j", limit=0) == []
    assert [e.seq for e in store.list_events("k")] == [1, 2, 3, 4, 5]  # per job
    assert store.list_events("none") == []


def test_event_fields_roundtrip(store: StateStore) -> None:
    store.add_event(
        EventRecord(
            job="j",
            kind="UpdateRejected",
            message="client c1 sent NaN",
            level="warning",
            round=3,
            attempt=2,
            client="c1",
            combiner="comb-1",
            at=1234.5,
        )
    )
    (e,) = store.list_events("j")
    assert (e.kind, e.message, e.level) == ("UpdateRejected", "client c1 sent NaN", "warning")
    assert (e.round, e.attempt, e.client, e.combiner) == (3, 2, "c1", "comb-1")
    assert e.at == 1234.5
    assert e.seq == 1


def test_event_with_explicit_seq_is_idempotent(store: StateStore) -> None:
    store.add_event(_event("j", 0, seq=1))
    store.add_event(_event("j", 0, seq=1, message="replayed"))
    store.add_event(_event("j", 1))
    evs = store.list_events("j")
    assert [(e.seq, e.message) for e in evs] == [(1, "event 0"), (2, "event 1")]


def test_concurrent_events_from_threads_get_unique_seqs(store: StateStore) -> None:
    errors: list[BaseException] = []

    def add(t: int) -> None:
        try:
            for i in range(25):
                store.add_event(_event("j", i, client=f"t{t}"))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert [e.seq for e in store.list_events("j")] == list(range(1, 101))


# ---- clients


def test_upsert_client_keeps_max_participations(store: StateStore) -> None:
    store.upsert_client(ClientRecord(job="j", client="c2", combiner="a", participations=3))
    store.upsert_client(ClientRecord(job="j", client="c1", combiner="a", last_seen=10.0))
    store.upsert_client(
        ClientRecord(
            job="j",
            client="c2",
            combiner="b",
            status="disconnected",
            last_seen=50.0,
            participations=1,  # smaller: the stored 3 is kept
        )
    )
    store.upsert_client(ClientRecord(job="other", client="c0", combiner="a"))
    c1, c2 = store.list_clients("j")
    assert (c1.client, c1.last_seen, c1.participations, c1.status) == ("c1", 10.0, 0, "connected")
    assert (c2.client, c2.combiner, c2.status) == ("c2", "b", "disconnected")
    assert c2.last_seen == 50.0
    assert c2.participations == 3
    store.upsert_client(ClientRecord(job="j", client="c2", combiner="b", participations=7))
    assert store.list_clients("j")[1].participations == 7
    (o,) = store.list_clients("other")
    assert o.last_seen > 0  # assigned when 0
    assert store.list_clients("nobody") == []


# ---- models


def _model(round: int, **over: Any) -> ModelRecord:
    kw: dict[str, Any] = {
        "job": "j",
        "round": round,
        "key": f"jobs/j/models/{round:06d}.safetensors",
        "parent": None if round == 0 else f"jobs/j/models/{round - 1:06d}.safetensors",
        "sha256": f"{round:064x}",
        "size": 1000 + round,
    }
    kw.update(over)
    return ModelRecord(**kw)


def test_models_latest_by_round_and_replace(store: StateStore) -> None:
    assert store.get_model("j") is None
    for rnd in [2, 0, 1]:
        store.add_model(_model(rnd))
    latest = store.get_model("j")
    assert latest is not None
    assert latest.round == 2
    assert latest.parent == "jobs/j/models/000001.safetensors"
    assert latest.created_at > 0
    r0 = store.get_model("j", 0)
    assert r0 is not None
    assert r0.parent is None and r0.size == 1000
    assert store.get_model("j", 7) is None
    assert [m.round for m in store.list_models("j")] == [0, 1, 2]
    store.add_model(_model(1, sha256="f" * 64, size=5, created_at=42.0))  # replace by (job, round)
    m1 = store.get_model("j", 1)
    assert m1 is not None
    assert (m1.sha256, m1.size, m1.created_at) == ("f" * 64, 5, 42.0)
    assert len(store.list_models("j")) == 3
    assert store.get_model("other") is None


# ---- persistence and sharing


def test_data_survives_reopen(backend: Backend) -> None:
    s1 = backend.open()
    s1.create_job("j", {"a": 1})
    s1.begin_attempt("j", 1, 1)
    assert _commit(s1, "j", 1, 1)
    s1.add_event(_event("j", 0))
    s1.close()
    s2 = backend.open()
    try:
        job = s2.get_job("j")
        assert job is not None and job.manifest == {"a": 1}
        assert s2.last_committed_round("j") == 1
        assert not _commit(s2, "j", 1, 2)  # still committed after reopen
        assert [e.seq for e in s2.list_events("j")] == [1]
    finally:
        s2.close()


def test_uri_reopens_the_same_store(store: StateStore, backend: Backend) -> None:
    store.create_job("j", {})
    other = open_state_store(store.uri)
    try:
        assert [j.name for j in other.list_jobs()] == ["j"]
        assert other.uri == store.uri
    finally:
        other.close()


def test_commit_race_between_threads(store: StateStore) -> None:
    n = 8
    for a in range(1, n + 1):
        store.begin_attempt("j", 1, a)
    barrier = threading.Barrier(n)
    results: dict[int, bool] = {}

    def go(a: int) -> None:
        barrier.wait()
        results[a] = _commit(store, "j", 1, a, model_key=f"m{a}")

    threads = [threading.Thread(target=go, args=(a,)) for a in range(1, n + 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [a for a, ok in results.items() if ok]
    assert len(results) == n
    assert len(winners) == 1
    (done,) = store.committed_rounds("j")
    assert done.attempt == winners[0]
    assert done.model_key == f"m{winners[0]}"


def _race_commit(uri: str, attempt: int, barrier: Any, out: Any) -> None:
    """In a child process: open the store by URI, wait for all, commit."""
    store = open_state_store(uri)
    try:
        store.begin_attempt("j", 1, attempt)
        for i in range(10):
            store.add_event(_event("j", i, attempt=attempt))
        barrier.wait(timeout=60)
        ok = _commit(store, "j", 1, attempt, model_key=f"m{attempt}")
        out.put((attempt, ok, None))
    except BaseException as exc:
        out.put((attempt, False, repr(exc)))
    finally:
        store.close()


def test_commit_race_between_processes(store: StateStore, backend: Backend) -> None:
    n = 6
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(n)
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_race_commit, args=(backend.uri, a, barrier, out))
        for a in range(1, n + 1)
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert [r[2] for r in results if r[2] is not None] == []
    winners = [a for a, ok, _ in results if ok]
    assert len(winners) == 1, results
    rounds = store.get_rounds("j")
    assert sorted(r.attempt for r in rounds) == list(range(1, n + 1))
    (done,) = [r for r in rounds if r.status == AttemptStatus.COMPLETED]
    assert done.attempt == winners[0]
    assert done.model_key == f"m{winners[0]}"
    assert {r.status for r in rounds if r.attempt != winners[0]} == {AttemptStatus.RUNNING}
    # events from all processes interleaved with unique, gap-free seqs
    assert [e.seq for e in store.list_events("j")] == list(range(1, n * 10 + 1))


# ---- sqlite specifics


def test_sqlite_uri_and_wal(tmp_path: Path) -> None:
    s = SqliteStateStore(tmp_path / "sub" / "x.db")
    try:
        assert s.uri == f"sqlite:///{(tmp_path / 'sub' / 'x.db').resolve()}"
        assert s.uri.startswith("sqlite:////")
    finally:
        s.close()
    conn = sqlite3.connect(tmp_path / "sub" / "x.db")
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        assert "rounds_one_completed" in indexes
    finally:
        conn.close()


def test_sqlite_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    SqliteStateStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    conn.commit()
    conn.close()
    with pytest.raises(StateError, match="schema version"):
        SqliteStateStore(path)


def test_sqlite_version_1_store_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    with contextlib.closing(SqliteStateStore(path)) as st:
        st.create_job("j", {"spec": {}})
        st.record_update(_update("c1", num_examples=10))
    conn = sqlite3.connect(path)  # back to the layout of schema version 1
    conn.execute("ALTER TABLE updates DROP COLUMN weight")
    conn.execute("ALTER TABLE jobs DROP COLUMN reducer_seen_at")
    conn.execute("DROP TABLE credentials")
    conn.execute("UPDATE schema_version SET version = 1")
    conn.commit()
    conn.close()
    with contextlib.closing(SqliteStateStore(path)) as st:
        (u,) = st.list_updates("j")
        assert (u.client, u.num_examples, u.weight) == ("c1", 10, 0.0)
        job = st.get_job("j")
        assert job is not None and job.reducer_seen_at is None
        st.issue_credential("j", "site-1")
        assert [r.client for r in st.list_credentials("j")] == ["site-1"]
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()


def test_sqlite_closed_store_raises_state_error(tmp_path: Path) -> None:
    s = SqliteStateStore(tmp_path / "x.db")
    s.close()
    s.close()  # idempotent
    with pytest.raises(StateError, match="closed"):
        s.get_job("j")
    with pytest.raises(StateError, match="closed"):
        s.create_job("j", {})


def test_sqlite_db_level_guard_allows_one_completed_attempt(tmp_path: Path) -> None:
    """The partial unique index refuses a second completed attempt even from
    a writer that bypasses commit_round."""
    s = SqliteStateStore(tmp_path / "x.db")
    try:
        assert _commit(s, "j", 1, 1)
        s.begin_attempt("j", 1, 2)
    finally:
        s.close()
    conn = sqlite3.connect(tmp_path / "x.db")
    try:
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute(
                "UPDATE rounds SET status='completed' WHERE job='j' AND round=1 AND attempt=2"
            )
    finally:
        conn.close()


def test_sqlite_not_a_database_is_state_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StateError, match=r"bad\.db"):
        SqliteStateStore(bad)
