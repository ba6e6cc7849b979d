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
import dataclasses
import json
import multiprocessing
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest

from fedkube.devenv.mongo import MongoServer
from fedkube.errors import StateError
from fedkube.state import mongo_events, mongo_rollups
from fedkube.state.base import (
    MAX_UPDATE_MESSAGE,
    SCHEMA_VERSION,
    ClientRecord,
    ClientSummary,
    EventRecord,
    ModelRecord,
    ParticipationCell,
    StateStore,
    UpdateCount,
    UpdateRecord,
)
from fedkube.state.factory import open_state_store
from fedkube.state.mongo import MongoStateStore
from fedkube.state.mongo_rollups import unpack
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
#: the indexes schema version 3 added to the SQLite store
_V3_INDEXES = ("updates_by_attempt", "updates_by_client", "updates_not_accepted", "events_by_kind")
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
        "digest": "xxh3-128:" + "ab" * 16,
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


def add_events_from_threads(store: StateStore, threads: int, each: int) -> None:
    """`threads` threads add `each` events of job "j" at once; none may fail."""
    errors: list[BaseException] = []

    def add(t: int) -> None:
        try:
            for i in range(each):
                store.add_event(_event("j", i, client=f"t{t}"))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    workers = [threading.Thread(target=add, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert errors == []


def test_concurrent_events_from_threads_get_unique_seqs(store: StateStore) -> None:
    add_events_from_threads(store, 4, 25)
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


# ---- dashboard queries (aggregates computed by the backend)


def _small_event_blocks(store: StateStore, size: int = 3) -> None:
    """MongoDB: archive events in pages of `size`, so few events use both the
    inbox and the pages (mongo_events.py); nothing to do on SQLite."""
    if isinstance(store, MongoStateStore):
        store._archive.block_size = size


def test_update_train_s_and_message_roundtrip_and_long_messages_are_cut(
    store: StateStore,
) -> None:
    assert store.record_update(_update("c1", train_s=12.25, message="boom"))
    assert store.record_update(_update("c2", status="failed", message="x" * 600 + "tail"))
    assert store.record_update(_update("c3"))
    c1, c2, c3 = store.list_updates("j")
    assert (c1.train_s, c1.message) == (12.25, "boom")
    assert c2.message == "x" * MAX_UPDATE_MESSAGE
    assert (c3.train_s, c3.message) == (0.0, "")


def test_get_rounds_without_participants(store: StateStore) -> None:
    store.begin_attempt("j", 1, 1)
    store.fail_attempt("j", 1, 1, "no quorum")
    assert _commit(store, "j", 1, 2, participants=["b", "a"])
    assert _commit(store, "j", 2, 1, participants=["c"])
    store.begin_attempt("j", 3, 1)
    full = store.get_rounds("j")
    slim = store.get_rounds("j", participants=False)
    assert [r.participants for r in full] == [[], ["b", "a"], ["c"], []]
    assert [r.participants for r in slim] == [[], [], [], []]
    assert slim == [dataclasses.replace(r, participants=[]) for r in full]
    assert [(r.round, r.attempt, r.status) for r in slim] == [
        (1, 1, AttemptStatus.FAILED),
        (1, 2, AttemptStatus.COMPLETED),
        (2, 1, AttemptStatus.COMPLETED),
        (3, 1, AttemptStatus.RUNNING),
    ]
    assert store.get_rounds("other", participants=False) == []


# (round, attempt, client, combiner, status, reason, weight, at, train_s, message)
_JOB_UPDATES = [
    (1, 1, "c1", "comb-0", "failed", "client_lost", 0.0, 10.0, 0.0, "the client disconnected"),
    (1, 1, "c2", "comb-1", "failed", "deadline", 0.0, 11.0, 0.0, "no report before the deadline"),
    (1, 1, "c4", "comb-1", "rejected", "checksum", 0.0, 12.0, 1.0, "sha256 mismatch"),
    (1, 2, "c1", "comb-0", "accepted", "", 10.0, 20.0, 2.0, ""),
    (1, 2, "c2", "comb-1", "accepted", "", 20.0, 21.0, 0.0, ""),
    (1, 2, "c3", "comb-0", "rejected", "not_finite", 0.0, 22.0, 5.0, "NaN in w"),
    (1, 2, "c4", "comb-0", "rejected", "not_finite", 0.0, 23.0, 1.0, "Inf in b"),
    (1, 2, "c5", "comb-0", "accepted", "", 5.0, 24.0, 4.0, ""),
    (2, 1, "c1", "comb-0", "accepted", "", 1.5, 30.0, 4.0, ""),
    (2, 1, "c2", "comb-0", "failed", "client_error", 0.0, 31.0, 0.0, "exit 1"),
]
#: recorded after round 2 was committed (a combiner's deadline record arriving late)
_LATE_UPDATE = (2, 1, "c3", "comb-0", "failed", "deadline", 0.0, 35.0, 0.0, "")
#: round 3 runs: never committed
_RUNNING_UPDATE = (3, 1, "c1", "comb-1", "accepted", "", 3.0, 40.0, 0.0, "")


def _record(store: StateStore, row: tuple[Any, ...], job: str = "j") -> None:
    rnd, att, client, comb, status, reason, weight, at, train_s, message = row
    assert store.record_update(
        UpdateRecord(
            job, rnd, att, client, comb, status, 10, reason, "", at, weight, train_s, message
        )
    )


def _seed_job(store: StateStore) -> None:
    """Job j: round 1 (attempt 1 failed, 2 committed), round 2 committed and then
    a late record, round 3 running; job k has a record of its own."""
    store.create_job("j", {})
    for r, a in [(1, 1), (1, 2), (2, 1)]:
        store.begin_attempt("j", r, a)
    for row in _JOB_UPDATES:
        _record(store, row)
    store.fail_attempt("j", 1, 1, "no quorum")
    assert _commit(store, "j", 1, 2)
    assert _commit(store, "j", 2, 1)
    _record(store, _LATE_UPDATE)
    store.begin_attempt("j", 3, 1)
    _record(store, _RUNNING_UPDATE)
    _record(store, (*_RUNNING_UPDATE[:2], "c1", "comb-0", "accepted", "", 9.0, 1.0, 1.0, ""), "k")


_COUNTS = [
    UpdateCount(1, 1, "comb-0", "failed", "client_lost", 1, 0.0),
    UpdateCount(1, 1, "comb-1", "failed", "deadline", 1, 0.0),
    UpdateCount(1, 1, "comb-1", "rejected", "checksum", 1, 0.0),
    UpdateCount(1, 2, "comb-0", "accepted", "", 2, 15.0),
    UpdateCount(1, 2, "comb-0", "rejected", "not_finite", 2, 0.0),
    UpdateCount(1, 2, "comb-1", "accepted", "", 1, 20.0),
    UpdateCount(2, 1, "comb-0", "accepted", "", 1, 1.5),
    UpdateCount(2, 1, "comb-0", "failed", "client_error", 1, 0.0),
    UpdateCount(2, 1, "comb-0", "failed", "deadline", 1, 0.0),
    UpdateCount(3, 1, "comb-1", "accepted", "", 1, 3.0),
]


def test_count_updates_groups_sorts_and_filters_rounds(store: StateStore) -> None:
    assert store.count_updates("j") == []
    _seed_job(store)
    assert store.count_updates("j") == _COUNTS
    assert store.count_updates("j", round_from=2) == _COUNTS[6:]
    assert store.count_updates("j", round_to=1) == _COUNTS[:6]
    assert store.count_updates("j", round_from=2, round_to=2) == _COUNTS[6:9]
    assert store.count_updates("j", round_from=4) == []
    assert store.count_updates("k") == [UpdateCount(3, 1, "comb-0", "accepted", "", 1, 9.0)]
    assert store.count_updates("nobody") == []
    # round 3 committed: the same counts (the late record of round 2 included)
    assert _commit(store, "j", 3, 1)
    assert store.count_updates("j") == _COUNTS


def test_participation_groups_by_client_round_and_status(store: StateStore) -> None:
    _seed_job(store)
    cells = store.participation("j", clients=["c4", "c1", "c2", "c9"], round_from=1, round_to=2)
    assert cells == [
        ParticipationCell("c1", 1, "accepted", 1),
        ParticipationCell("c1", 1, "failed", 1),
        ParticipationCell("c1", 2, "accepted", 1),
        ParticipationCell("c2", 1, "accepted", 1),
        ParticipationCell("c2", 1, "failed", 1),
        ParticipationCell("c2", 2, "failed", 1),
        ParticipationCell("c4", 1, "rejected", 2),
    ]
    assert store.participation("j", clients=["c3"], round_from=2, round_to=9) == [
        ParticipationCell("c3", 2, "failed", 1)  # the late record
    ]
    assert store.participation("j", clients=["c1"], round_from=3, round_to=3) == [
        ParticipationCell("c1", 3, "accepted", 1)  # the running round
    ]
    assert store.participation("j", clients=[], round_from=1, round_to=3) == []
    assert store.participation("j", clients=["c5"], round_from=2, round_to=3) == []
    assert store.participation("nobody", clients=["c1"], round_from=1, round_to=3) == []


def _seed_clients(store: StateStore) -> None:
    for client, comb, status, seen, parts in [
        ("c6", "comb-1", "connected", 103.0, 0),
        ("c1", "comb-0", "connected", 100.0, 3),
        ("c3", "comb-0", "connected", 102.0, 1),
        ("c2", "comb-1", "disconnected", 101.0, 2),
    ]:
        store.upsert_client(ClientRecord("j", client, comb, status, seen, parts))


def test_client_summaries(store: StateStore) -> None:
    _seed_job(store)
    assert store.client_summaries("j") == []  # no ClientRecords: no rows
    _seed_clients(store)
    c1, c2, c3, c6 = store.client_summaries("j")
    # accepted in rounds 1, 2 and 3; the mean leaves out round 3's train_s of 0
    assert c1 == ClientSummary(
        "c1", "comb-0", "connected", 100.0, 3, 3, 3, 0, 1, 3.0,
        "client_lost: the client disconnected", 10.0,
    )  # fmt: skip
    # the latest not-accepted record is the one of round 2 (at 31)
    assert c2 == ClientSummary(
        "c2", "comb-1", "disconnected", 101.0, 2, 1, 1, 0, 2, None, "client_error: exit 1", 31.0
    )
    # a rejected record's train_s does not count; the late record is its latest error
    assert c3 == ClientSummary(
        "c3", "comb-0", "connected", 102.0, 1, 0, 0, 1, 1, None, "deadline", 35.0
    )
    assert c6 == ClientSummary("c6", "comb-1", "connected", 103.0, 0, 0, 0, 0, 0, None, "", None)
    assert _commit(store, "j", 3, 1)
    assert store.client_summaries("j") == [c1, c2, c3, c6]
    assert store.client_summaries("nobody") == []


def test_client_summaries_count_distinct_accepted_rounds(store: StateStore) -> None:
    store.upsert_client(ClientRecord("j", "x", "comb-0", "connected", 5.0, 2))
    rows = [  # accepted twice in round 1 (attempts 1 and 2), once in round 2
        (1, 1, "x", "comb-0", "accepted", "", 1.0, 1.0, 0.0, ""),
        (1, 2, "x", "comb-0", "accepted", "", 1.0, 2.0, 6.0, ""),
        (2, 1, "x", "comb-0", "accepted", "", 1.0, 3.0, 0.0, ""),
        (3, 1, "x", "comb-0", "rejected", "corrupt", 0.0, 4.0, 9.0, ""),
    ]
    _record(store, rows[0])
    _record(store, rows[1])
    assert _commit(store, "j", 1, 2)  # round 1 counted apart from the rest (MongoDB)
    _record(store, rows[2])
    _record(store, rows[3])
    (x,) = store.client_summaries("j")
    assert (x.rounds, x.accepted, x.rejected, x.failed) == (2, 3, 1, 0)
    assert (x.mean_train_s, x.last_error, x.last_error_at) == (6.0, "corrupt", 4.0)


def test_job_overviews_count_clients(store: StateStore) -> None:
    assert store.job_overviews() == []
    for name in ["k", "a", "j"]:
        store.create_job(name, {"n": name})
    _seed_clients(store)
    store.upsert_client(ClientRecord("k", "x", "comb-0", "connected"))
    store.upsert_client(ClientRecord("nojob", "y", "comb-0", "connected"))
    overviews = store.job_overviews()
    assert [(o.job.name, o.clients, o.connected) for o in overviews] == [
        ("a", 0, 0),
        ("j", 4, 3),
        ("k", 1, 1),
    ]
    assert [o.job for o in overviews] == store.list_jobs()


_EVENTS = [  # kind, level, round, client, combiner
    ("RoundStarted", "info", 1, None, None),
    ("UpdateRejected", "warning", 1, "c4", "comb-1"),
    ("TrainFailed", "warning", 1, "c1", "comb-0"),
    ("RoundCompleted", "info", 1, None, None),
    ("RoundStarted", "info", 2, None, None),
    ("UpdateRejected", "warning", 2, "c3", "comb-0"),
    ("UpdateRejected", "error", 2, "c4", "comb-0"),
    ("RoundCompleted", "info", 2, None, None),
    ("JobSucceeded", "info", None, None, None),
]


def _seed_events(store: StateStore) -> None:
    _small_event_blocks(store)
    for i, (kind, level, rnd, client, comb) in enumerate(_EVENTS):
        store.add_event(
            _event("j", i, kind=kind, level=level, round=rnd, client=client, combiner=comb)
        )
    store.add_event(_event("k", 0))
    store.add_event(_event("k", 1, kind="JobSucceeded"))


def test_query_events_filters_newest_first_and_pages(store: StateStore) -> None:
    _seed_events(store)

    def seqs(**kw: Any) -> list[int]:
        return [e.seq for e in store.query_events("j", **kw)]

    assert store.query_events("j") == list(reversed(store.list_events("j")))
    assert seqs() == [9, 8, 7, 6, 5, 4, 3, 2, 1]
    assert seqs(limit=3) == [9, 8, 7]
    assert seqs(limit=3, before_seq=7) == [6, 5, 4]
    assert seqs(limit=3, before_seq=4) == [3, 2, 1]
    assert seqs(before_seq=1) == []
    assert seqs(kinds=["UpdateRejected"]) == [7, 6, 2]
    assert seqs(kinds=["UpdateRejected", "TrainFailed"]) == [7, 6, 3, 2]
    assert seqs(kinds=["UpdateRejected", "TrainFailed"], limit=2) == [7, 6]
    assert seqs(kinds=["UpdateRejected", "TrainFailed"], limit=2, before_seq=6) == [3, 2]
    assert seqs(levels=["warning"]) == [6, 3, 2]
    assert seqs(levels=["error", "warning"]) == [7, 6, 3, 2]
    assert seqs(round=2) == [8, 7, 6, 5]
    assert seqs(client="c4") == [7, 2]
    assert seqs(combiner="comb-0") == [7, 6, 3]
    assert seqs(kinds=["UpdateRejected"], round=1) == [2]
    assert seqs(kinds=["UpdateRejected"], levels=["warning"], client="c4", round=1) == [2]
    assert seqs(kinds=["Nothing"]) == []
    assert seqs(client="nobody") == []
    assert seqs(limit=0) == []
    (e,) = store.query_events("j", client="c3")
    assert (e.kind, e.level, e.round, e.client, e.combiner, e.message) == (
        "UpdateRejected", "warning", 2, "c3", "comb-0", "event 5",
    )  # fmt: skip
    assert [e.seq for e in store.query_events("k")] == [2, 1]
    assert store.query_events("none") == []


def test_count_events_per_kind(store: StateStore) -> None:
    assert store.count_events("j") == {}
    _seed_events(store)
    assert store.count_events("j") == {
        "RoundStarted": 2,
        "UpdateRejected": 3,
        "TrainFailed": 1,
        "RoundCompleted": 2,
        "JobSucceeded": 1,
    }
    assert store.count_events("k") == {"RoundStarted": 1, "JobSucceeded": 1}
    assert [e.seq for e in store.list_events("j", since_seq=2, limit=5)] == [3, 4, 5, 6, 7]


def _grouped(updates: list[UpdateRecord]) -> list[UpdateCount]:
    """count_updates computed in Python: the test's oracle."""
    acc: dict[tuple[int, int, str, str, str], list[float]] = {}
    for u in updates:
        row = acc.setdefault((u.round, u.attempt, u.combiner, u.status, u.reason), [0, 0.0])
        row[0] += 1
        row[1] += u.weight
    return [UpdateCount(*k, int(n), w) for k, (n, w) in sorted(acc.items())]


def test_counts_stay_exact_when_records_race_the_commit(store: StateStore) -> None:
    """Combiners record updates while the reducer commits the round: the counts
    include every record, before and after the commit (MongoDB: recent copies)."""
    store.begin_attempt("j", 1, 1)
    start = threading.Barrier(5)
    errors: list[BaseException] = []

    def record(t: int) -> None:
        try:
            start.wait()
            for i in range(15):
                status, reason = ("accepted", "") if i % 3 else ("failed", "deadline")
                store.record_update(
                    _update(f"t{t}-{i:02d}", combiner=f"comb-{t}", status=status, reason=reason,
                            weight=float(i))
                )  # fmt: skip
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=record, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    start.wait()
    assert _commit(store, "j", 1, 1)
    for t in threads:
        t.join()
    assert errors == []
    updates = store.list_updates("j")
    assert len(updates) == 60
    assert store.count_updates("j") == _grouped(updates)
    clients = sorted(u.client for u in updates)
    cells = store.participation("j", clients=clients, round_from=1, round_to=1)
    assert cells == [
        ParticipationCell(u.client, 1, u.status, 1) for u in sorted(updates, key=lambda u: u.client)
    ]
    assert _commit(store, "j", 2, 1)  # rebuilds round 1's rollup (MongoDB)
    assert store.count_updates("j") == _grouped(updates)
    assert store.participation("j", clients=clients, round_from=1, round_to=1) == cells


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
    for index in _V3_INDEXES:
        conn.execute(f"DROP INDEX {index}")
    conn.execute("ALTER TABLE updates DROP COLUMN message")
    conn.execute("ALTER TABLE updates DROP COLUMN train_s")
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


def test_sqlite_version_2_store_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "v2.db"
    with contextlib.closing(SqliteStateStore(path)) as st:
        st.create_job("j", {"spec": {}})
        assert st.record_update(_update("c1", weight=10.0, train_s=3.0, message="x"))
    conn = sqlite3.connect(path)  # back to the layout of schema version 2
    for index in _V3_INDEXES:
        conn.execute(f"DROP INDEX {index}")
    conn.execute("ALTER TABLE updates DROP COLUMN message")
    conn.execute("ALTER TABLE updates DROP COLUMN train_s")
    conn.execute("UPDATE schema_version SET version = 2")
    conn.commit()
    conn.close()
    with contextlib.closing(SqliteStateStore(path)) as st:
        (u,) = st.list_updates("j")
        assert (u.client, u.weight, u.train_s, u.message) == ("c1", 10.0, 0.0, "")
        assert st.record_update(_update("c2", status="failed", train_s=1.5, message="y" * 501))
        assert [(u.train_s, len(u.message)) for u in st.list_updates("j")] == [(0.0, 0), (1.5, 500)]
        assert st.count_updates("j") == [
            UpdateCount(1, 1, "comb-0", "accepted", "", 1, 10.0),
            UpdateCount(1, 1, "comb-0", "failed", "", 1, 0.0),
        ]
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == SCHEMA_VERSION
    indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert set(_V3_INDEXES) <= indexes
    conn.close()


def test_sqlite_dashboard_queries_use_their_indexes(tmp_path: Path) -> None:
    """The query plans read the indexes made for them (no scan of every update)."""
    s = SqliteStateStore(tmp_path / "x.db")
    s.close()
    conn = sqlite3.connect(tmp_path / "x.db")
    try:

        def plan(sql: str, *params: Any) -> str:
            return " | ".join(r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql, params))

        counts = plan(
            "SELECT round, attempt, combiner, status, reason, COUNT(*), TOTAL(weight) FROM updates"
            " WHERE job = ? GROUP BY round, attempt, combiner, status, reason",
            "j",
        )
        assert "COVERING INDEX updates_by_attempt" in counts
        assert "TEMP B-TREE" not in counts  # grouped in index order
        errors = plan(
            "SELECT rowid FROM updates WHERE job = ? AND client = ? AND status != 'accepted'"
            " ORDER BY at DESC, round DESC, attempt DESC LIMIT 1",
            "j",
            "c1",
        )
        assert "INDEX updates_not_accepted" in errors
    finally:
        conn.close()


# ---- mongo specifics (FerretDB; see the docstrings of fedkube/state/mongo*.py)


@pytest.fixture
def mongo_store(mongo_uri: str) -> Iterator[MongoStateStore]:
    s = open_state_store(mongo_uri)
    assert isinstance(s, MongoStateStore)
    yield s
    s.close()


def _db(store: MongoStateStore) -> Any:
    return store._client[store.database]


def test_mongo_events_archive_complete_blocks_into_pages(mongo_store: MongoStateStore) -> None:
    _small_event_blocks(mongo_store, 4)
    for i in range(10):
        mongo_store.add_event(_event("j", i, kind="UpdateRejected" if i % 3 else "RoundStarted"))
    db = _db(mongo_store)
    # seqs 1-4 and 5-8 moved to pages; the inbox keeps the newest block (9, 10)
    assert sorted(d["seq"] for d in db["events"].find({"job": "j"})) == [9, 10]
    assert sorted(d["first"] for d in db["event_blocks"].find({"job": "j"})) == [1, 5]
    assert [e.seq for e in mongo_store.list_events("j")] == list(range(1, 11))
    assert [e.message for e in mongo_store.list_events("j", since_seq=3, limit=4)] == [
        "event 3", "event 4", "event 5", "event 6",
    ]  # fmt: skip
    assert [e.seq for e in mongo_store.query_events("j", limit=4, before_seq=8)] == [7, 6, 5, 4]
    assert [e.seq for e in mongo_store.query_events("j", kinds=["RoundStarted"])] == [10, 7, 4, 1]
    assert mongo_store.count_events("j") == {"RoundStarted": 4, "UpdateRejected": 6}
    # an archived seq given again is ignored, as an existing one is
    mongo_store.add_event(_event("j", 0, seq=2, message="replayed"))
    assert [e.message for e in mongo_store.list_events("j", since_seq=1, limit=1)] == ["event 1"]
    assert db["events"].count_documents({"job": "j"}) == 2
    # a leftover inbox copy of an archived event (an archiver stopped before it
    # deleted) is read once, from its page
    page = db["event_pages"].find_one({"job": "j", "first": 1})
    assert page is not None
    db["events"].insert_one(
        {
            "job": "j",
            **dict(
                zip(mongo_events.PAGE_FIELDS, json.loads(unpack(page["events"]))[0], strict=True)
            ),
        }
    )
    assert [e.seq for e in mongo_store.list_events("j")] == list(range(1, 11))
    assert mongo_store.count_events("j") == {"RoundStarted": 4, "UpdateRejected": 6}


def test_mongo_concurrent_events_across_blocks(mongo_store: MongoStateStore) -> None:
    _small_event_blocks(mongo_store, 5)
    add_events_from_threads(mongo_store, 4, 15)
    assert [e.seq for e in mongo_store.list_events("j")] == list(range(1, 61))
    assert [e.seq for e in mongo_store.query_events("j", limit=60)] == list(range(60, 0, -1))
    assert mongo_store.count_events("j") == {"RoundStarted": 60}
    assert _db(mongo_store)["events"].count_documents({"job": "j"}) <= 10


@contextlib.contextmanager
def _updates_hidden(store: MongoStateStore) -> Iterator[None]:
    """The updates collection renamed away: what a query reads without it."""
    db = _db(store)
    db["updates"].rename("updates_hidden")
    try:
        yield
    finally:
        db["updates_hidden"].rename("updates")


def test_mongo_committed_rounds_are_read_from_their_rollups(mongo_store: MongoStateStore) -> None:
    db = _db(mongo_store)
    for row in _JOB_UPDATES:
        _record(mongo_store, row)
    assert db["updates_recent"].count_documents({"job": "j"}) == len(_JOB_UPDATES)
    assert _commit(mongo_store, "j", 1, 2)
    # round 1 rolled up: its recent copies are gone, round 2's (running) are left
    assert sorted(d["round"] for d in db["updates_recent"].find({"job": "j"})) == [2, 2]
    with _updates_hidden(mongo_store):  # no query reads a record
        assert mongo_store.count_updates("j") == _COUNTS[:8]
        assert mongo_store.participation("j", clients=["c4"], round_from=1, round_to=2) == [
            ParticipationCell("c4", 1, "rejected", 2)
        ]
    # a late record of round 1 counts at once (the rollup plus the copy it did not count)
    _record(mongo_store, (1, 2, "c9", "comb-0", "accepted", "", 7.0, 50.0, 1.0, ""))
    round_1 = [*_COUNTS[:3], UpdateCount(1, 2, "comb-0", "accepted", "", 3, 22.0), *_COUNTS[4:6]]
    assert mongo_store.count_updates("j", round_to=1) == round_1
    # the next commit rolls round 1 up again (9 records) and drops its copy
    assert _commit(mongo_store, "j", 2, 1)
    assert sorted(d["n"] for d in db["rollup_counts"].find({"job": "j", "round": 1})) == [8, 9]
    assert db["updates_recent"].count_documents({"job": "j"}) == 0
    with _updates_hidden(mongo_store):
        assert mongo_store.count_updates("j") == [*round_1, *_COUNTS[6:8]]
    # committed attempts keep no progress documents; their participants have theirs
    assert db["progress"].count_documents({"job": "j"}) == 0
    assert db["participants"].count_documents({"job": "j"}) == 2


def test_mongo_client_summaries_from_blocks_and_rounds_agree(
    mongo_store: MongoStateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mongo_rollups, "BLOCK_ROUNDS", 2)
    db = _db(mongo_store)
    _seed_clients(mongo_store)
    for r in range(1, 6):
        for i, client in enumerate(["c1", "c2", "c3"]):
            status = ["accepted", "rejected", "failed"][(r + i) % 3]
            row = (r, 1, client, "comb-0", status, "" if status == "accepted" else "why",
                   1.0, 10.0 * r + i, float(r), f"m{r}")  # fmt: skip
            _record(mongo_store, row)
        assert _commit(mongo_store, "j", r, 1)
    # rounds 1-2 and 3-4 merged into blocks; round 5's block is not complete
    assert sorted(d["block"] for d in db["rollup_client_blocks"].find({"job": "j"})) == [0, 1]
    from_blocks = mongo_store.client_summaries("j")
    c1 = from_blocks[0]
    # c1: rejected in rounds 1 and 4, failed in 2 and 5, accepted in 3
    assert (c1.client, c1.rounds, c1.accepted, c1.rejected, c1.failed) == ("c1", 1, 1, 2, 2)
    assert c1.mean_train_s == 3.0
    assert (c1.last_error, c1.last_error_at) == ("why: m5", 50.0)
    db["rollup_client_blocks"].delete_many({})
    with _updates_hidden(mongo_store):
        assert mongo_store.client_summaries("j") == from_blocks  # from the round rollups
    # a late record of round 1: block 0 no longer exact until a commit merges it again
    _record(mongo_store, (1, 2, "c1", "comb-1", "failed", "late", 0.0, 99.0, 0.0, "x"))
    late = mongo_store.client_summaries("j")
    assert (late[0].failed, late[0].last_error, late[0].last_error_at) == (3, "late: x", 99.0)
    assert _commit(mongo_store, "j", 6, 1)  # rolls round 1 up again, merges block 0 again
    ids = {
        r: d["_id"] for r, d in mongo_rollups.latest(db["rollup_counts"].find({"job": "j"})).items()
    }
    blocks = [
        mongo_rollups.merged_rollups(b) for b in db["rollup_client_blocks"].find({"block": 0})
    ]
    assert {1: ids[1], 2: ids[2]} in blocks
    with _updates_hidden(mongo_store):
        assert mongo_store.client_summaries("j") == late


def test_mongo_schema_2_store_is_upgraded(mongo_uri: str) -> None:
    """Documents as fedkube wrote them at schema version 2: updates without train_s
    and message, participant lists inline, every event in the events collection."""
    first = open_state_store(mongo_uri)
    assert isinstance(first, MongoStateStore)
    db = _db(first)  # the client stays open for the test's raw writes and reads
    first.create_job("j", {})
    db["meta"].update_one({"_id": "schema"}, {"$set": {"version": 2}})
    db["updates"].insert_many(
        [
            {"job": "j", "round": 1, "attempt": 1, "client": c, "combiner": "comb-0",
             "status": st, "num_examples": 10, "reason": re, "sha256": "", "at": 1.0,
             "weight": w}
            for c, st, re, w in [("c1", "accepted", "", 10.0), ("c2", "rejected", "corrupt", 0.0)]
        ]
    )  # fmt: skip
    payload = {"completed_at": 2.0, "model_key": "m1", "n_updates": 1, "num_examples": 10,
               "metrics": "{}", "timings": "{}", "participants": ["c1"],
               "combiners": "{}"}  # fmt: skip
    db["commits"].insert_one({"job": "j", "round": 1, "attempt": 1, "at": 2.0, "payload": payload})
    db["rounds"].insert_one(
        {"job": "j", "round": 1, "attempt": 1, "started_at": 1.0, "status": "completed",
         "reason": "", "validation": "{}", "validation_examples": 0, **payload}
    )  # fmt: skip
    db["events"].insert_many(
        [{"job": "j", "seq": i, "kind": "RoundStarted", "message": f"event {i}", "level": "info",
          "round": None, "attempt": None, "client": None, "combiner": None, "at": float(i)}
         for i in range(1, 8)]
    )  # fmt: skip
    store = open_state_store(mongo_uri)
    assert isinstance(store, MongoStateStore)
    _small_event_blocks(store, 3)
    try:
        u1, u2 = store.list_updates("j")
        assert (u1.client, u1.train_s, u1.message, u2.reason) == ("c1", 0.0, "", "corrupt")
        assert db["meta"].find_one({"_id": "schema"})["version"] == SCHEMA_VERSION
        (r,) = store.get_rounds("j")
        assert (r.status, r.participants) == (AttemptStatus.COMPLETED, ["c1"])
        assert store.get_rounds("j", participants=False)[0].participants == []
        assert store.count_updates("j") == [
            UpdateCount(1, 1, "comb-0", "accepted", "", 1, 10.0),
            UpdateCount(1, 1, "comb-0", "rejected", "corrupt", 1, 0.0),
        ]
        # the complete blocks of the old events were archived by the upgrade
        assert sorted(d["seq"] for d in db["events"].find({"job": "j"})) == [7]
        assert [e.seq for e in store.list_events("j")] == list(range(1, 8))
        # the next commit builds the old round's rollup too
        assert _commit(store, "j", 2, 1)
        assert db["rollup_counts"].count_documents({"job": "j", "round": 1}) == 1
        db["updates"].delete_many({"job": "j"})
        assert len(store.count_updates("j")) == 2
    finally:
        store.close()
        first.close()


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
