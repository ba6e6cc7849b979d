"""Benchmark: the dashboard's state-store queries on a big job, SQLite and MongoDB.

Seeds one job of `--rounds` x `--clients` (default 1,000 x 1,000: 1M update
records, accepted / rejected / failed with reasons and messages; one committed
attempt per round and a failed one before it every 10th round; ~20 events per
round; a model and the participants of every round; one ClientRecord per
client) into a fresh SQLite file and into a fresh database on a FerretDB
started for the run (fedkube.devenv.mongo, as the tests do), writing straight
through each backend's connection: seeding is not timed. Then it times, best
of `--repeat`, every query the dashboard's Job detail page runs and their
total (target: under 2 s), and apart from that total the Jobs page
(job_overviews) and the Clients page (client_summaries).

With both stores it also checks that they return the same records for every
query (a wrong seed layout or a wrong query shows up there).

    python bench/dashboard_queries.py                       # 1,000 x 1,000, both stores
    python bench/dashboard_queries.py --quick               # 20 x 20, seconds
    python bench/dashboard_queries.py --stores sqlite --json out.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedkube.state.base import (
    ClientRecord,
    EventRecord,
    ModelRecord,
    RoundRecord,
    StateStore,
    UpdateRecord,
    encode_json,
    encode_json_fields,
)
from fedkube.vocabulary import AssignmentStatus, AttemptStatus, EventKind, Phase, Reason

JOB = "bench"
COMBINERS = 4
#: every FAIL_EVERY-th round has a failed attempt 1 (a tenth of the clients, lost)
FAIL_EVERY = 10
EVENTS_PER_ROUND = 20
#: the Job detail page's total must stay under this many seconds
TARGET_S = 2.0

_REJECTS = [
    (Reason.NOT_FINITE, "NaN in tensor layer3.weight"),
    (Reason.WRONG_SHAPE, "tensor fc.bias has shape [9], the global model [10]"),
    (Reason.CHECKSUM, "digest mismatch: reported xxh3-128:0a1b2c3d4e5f..., the file has ..."),
    (Reason.TOO_LARGE, "update is 9000000 bytes, over the limit of 8000000 bytes"),
]
_FAILS = [
    (Reason.DEADLINE, "no report before the deadline"),
    (Reason.CLIENT_ERROR, "train command exited with status 1: CUDA out of memory"),
    (Reason.CLIENT_LOST, "the client disconnected"),
]


@dataclass
class Attempt:
    round: int
    attempt: int
    failed: bool
    updates: list[UpdateRecord] = field(default_factory=list)


@dataclass
class Dataset:
    """A job's records, generated deterministically (seeded)."""

    rounds: int
    n_clients: int
    seed: int = 7
    t0: float = 1.7e9

    @property
    def clients(self) -> list[str]:
        return [f"client-{i:05d}" for i in range(self.n_clients)]

    def combiner(self, i: int) -> str:
        return f"comb-{i % COMBINERS}"

    def attempts(self) -> Iterator[Attempt]:
        rng = random.Random(self.seed)
        clients = self.clients
        for r in range(1, self.rounds + 1):
            base = self.t0 + r * 60.0
            if r % FAIL_EVERY == 0:
                a = Attempt(r, 1, True)
                for i, c in enumerate(clients[: max(1, len(clients) // 10)]):
                    a.updates.append(
                        self._update(r, 1, i, c, AssignmentStatus.FAILED, *_FAILS[2], base + i)
                    )
                yield a
            a = Attempt(r, 2 if r % FAIL_EVERY == 0 else 1, False)
            for i, c in enumerate(clients):
                x = rng.random()
                at = base + 30 + i * 0.01
                if x < 0.92:
                    train = 0.0 if x < 0.005 else round(1 + rng.random() * 20, 3)
                    u = self._update(r, a.attempt, i, c, AssignmentStatus.ACCEPTED, "", "", at)
                    u.train_s = train
                elif x < 0.97:
                    reason, msg = _REJECTS[rng.randrange(len(_REJECTS))]
                    u = self._update(r, a.attempt, i, c, AssignmentStatus.REJECTED, reason, msg, at)
                    u.train_s = round(1 + rng.random() * 20, 3)
                else:
                    reason, msg = _FAILS[rng.randrange(len(_FAILS))]
                    u = self._update(r, a.attempt, i, c, AssignmentStatus.FAILED, reason, msg, at)
                a.updates.append(u)
            yield a

    def _update(
        self, r: int, attempt: int, i: int, c: str, status: str, reason: str, msg: str, at: float
    ) -> UpdateRecord:
        accepted = status == AssignmentStatus.ACCEPTED
        return UpdateRecord(
            job=JOB,
            round=r,
            attempt=attempt,
            client=c,
            combiner=self.combiner(i),
            status=str(status),
            num_examples=100 + i % 50,
            reason=str(reason),
            digest="xxh3-128:" + "ab" * 16 if accepted else "",
            at=at,
            weight=float(100 + i % 50) if accepted else 0.0,
            message=msg,
        )

    def round_record(self, a: Attempt) -> RoundRecord:
        base = self.t0 + a.round * 60.0
        rec = RoundRecord(JOB, a.round, a.attempt, started_at=base, completed_at=base + 50)
        if a.failed:
            rec.status, rec.reason = (
                AttemptStatus.FAILED,
                "only 100 updates, clients.minUpdates is 500",
            )
            # what the combiners reported before the attempt failed (set_progress)
            rec.combiners = {f"comb-{k}": {"received": 25, "quota": 250} for k in range(COMBINERS)}
            return rec
        accepted = [u for u in a.updates if u.status == AssignmentStatus.ACCEPTED]
        rec.status = AttemptStatus.COMPLETED
        rec.model_key = f"jobs/{JOB}/models/{a.round:06d}.safetensors"
        rec.n_updates = len(accepted)
        rec.num_examples = sum(u.num_examples for u in accepted)
        rec.metrics = {"loss": 1.0 / a.round, "accuracy": 1 - 1.0 / (a.round + 1)}
        rec.timings = {"wait_s": 0.5, "train_s": 40.0, "merge_s": 1.5, "commit_s": 0.2}
        rec.participants = sorted(u.client for u in accepted)
        rec.combiners = {
            f"comb-{k}": {"n_updates": sum(1 for u in accepted if u.combiner == f"comb-{k}")}
            for k in range(COMBINERS)
        }
        return rec

    def events(self, a: Attempt) -> list[EventRecord]:
        """~EVENTS_PER_ROUND events per round (seq assigned by the seeder)."""
        out: list[EventRecord] = []
        t = self.t0 + a.round * 60.0
        ev = {"job": JOB, "round": a.round, "attempt": a.attempt}
        out.append(EventRecord(kind=EventKind.ROUND_STARTED, message="started", at=t, **ev))
        if a.failed:
            out.append(
                EventRecord(
                    kind=EventKind.ATTEMPT_FAILED,
                    message="no quorum",
                    level="warning",
                    at=t + 50,
                    **ev,
                )
            )
            return out
        budget = EVENTS_PER_ROUND - 3 - (1 if a.round % FAIL_EVERY == 0 else 0)
        for u in [u for u in a.updates if u.status != AssignmentStatus.ACCEPTED][:budget]:
            kind = (
                EventKind.UPDATE_REJECTED
                if u.status == AssignmentStatus.REJECTED
                else EventKind.TRAIN_FAILED
            )
            out.append(
                EventRecord(
                    kind=kind,
                    message=f"client {u.client}: {u.reason}: {u.message}",
                    level="warning",
                    client=u.client,
                    combiner=u.combiner,
                    at=u.at,
                    **ev,
                )
            )
        out.append(
            EventRecord(kind=EventKind.ROUND_COMPLETED, message="committed", at=t + 50, **ev)
        )
        out.append(
            EventRecord(kind=EventKind.ROUND_VALIDATED, message="accuracy 0.9", at=t + 55, **ev)
        )
        return out

    def model(self, r: int) -> ModelRecord:
        return ModelRecord(
            JOB,
            r,
            f"jobs/{JOB}/models/{r:06d}.safetensors",
            None if r == 0 else f"jobs/{JOB}/models/{r - 1:06d}.safetensors",
            f"{r:064x}",
            4_000_000,
            self.t0 + r * 60.0 + 50,
        )

    def client_records(self) -> list[ClientRecord]:
        return [
            ClientRecord(
                JOB,
                c,
                self.combiner(i),
                "connected" if i % 7 else "disconnected",
                self.t0 + self.rounds * 60.0,
                self.rounds,
            )
            for i, c in enumerate(self.clients)
        ]


# ---- seeding


def seed_sqlite(data: Dataset, path: Path) -> StateStore:
    from fedkube.state.sqlite import SqliteStateStore

    store = SqliteStateStore(path)
    store.create_job(JOB, {"apiVersion": "fedkube.dev/v1alpha1", "kind": "FederatedJob"})
    store.update_job(JOB, phase=Phase.SUCCEEDED, completed_rounds=data.rounds)
    update_cols = [f.name for f in dataclasses.fields(UpdateRecord)]
    round_cols = [f.name for f in dataclasses.fields(RoundRecord)]
    json_cols = {"metrics", "validation", "timings", "participants", "combiners"}
    event_cols = [f.name for f in dataclasses.fields(EventRecord)]
    seq = 0
    with store._tx() as c:  # seeding straight through the connection (not timed)
        for a in data.attempts():
            c.executemany(
                f"INSERT INTO updates ({', '.join(update_cols)})"
                f" VALUES ({', '.join('?' for _ in update_cols)})",
                [dataclasses.astuple(u) for u in a.updates],
            )
            rec = dataclasses.asdict(data.round_record(a))
            c.execute(
                f"INSERT INTO rounds ({', '.join(round_cols)})"
                f" VALUES ({', '.join('?' for _ in round_cols)})",
                [encode_json(rec[k]) if k in json_cols else rec[k] for k in round_cols],
            )
            events = data.events(a)
            c.executemany(
                f"INSERT INTO events ({', '.join(event_cols)})"
                f" VALUES ({', '.join('?' for _ in event_cols)})",
                [
                    tuple(seq + i if k == "seq" else getattr(e, k) for k in event_cols)
                    for i, e in enumerate(events, start=1)
                ],
            )
            seq += len(events)
        c.executemany(
            "INSERT INTO models (job, round, key, parent, sha256, size, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            [dataclasses.astuple(data.model(r)) for r in range(1, data.rounds + 1)],
        )
        c.executemany(
            "INSERT INTO clients (job, client, combiner, status, last_seen, participations)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [dataclasses.astuple(x) for x in data.client_records()],
        )
    return store


def seed_mongo(data: Dataset, uri: str) -> StateStore:
    """The job in the documents MongoStateStore writes (see fedkube/state/mongo.py):
    rounds, commits and participant lists as commit_round leaves them, the
    failed attempts' progress, updates and their rounds' rollups (built by the
    store's own mongo_rollups functions, client blocks merged by its own
    Rollups.merge_block), events archived by its own archiver, models, clients."""
    from fedkube.state import mongo as m
    from fedkube.state.factory import open_state_store
    from fedkube.state.mongo_rollups import BLOCK_ROUNDS, RoundRollup, rollup_docs

    store = open_state_store(uri)
    assert isinstance(store, m.MongoStateStore)
    store.create_job(JOB, {"apiVersion": "fedkube.dev/v1alpha1", "kind": "FederatedJob"})
    store.update_job(JOB, phase=Phase.SUCCEEDED, completed_rounds=data.rounds)
    db = store._client[store.database]  # seeding straight through the connection (not timed)
    fields = [f.name for f in dataclasses.fields(UpdateRecord)]
    batch: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    rounds: list[dict[str, Any]] = []
    by_round: dict[int, list[dict[str, Any]]] = {}
    for a in data.attempts():
        docs = [{f: getattr(u, f) for f in fields} for u in a.updates]
        batch += docs
        by_round.setdefault(a.round, []).extend(docs)
        rounds.append(_mongo_round(db, data.round_record(a), m))
        events += [
            {**dataclasses.asdict(e), "seq": len(events) + i + 1}
            for i, e in enumerate(data.events(a))
        ]
        if not a.failed:  # committed: its round rolled up (and no recent copies left)
            rollup = RoundRollup.of(by_round.pop(a.round))
            for name, doc in rollup_docs(JOB, a.round, rollup).items():
                db[name].insert_one(doc)
        if len(batch) >= 20_000:
            db["updates"].insert_many(batch)
            batch = []
    if batch:
        db["updates"].insert_many(batch)
    db["rounds"].insert_many(rounds)
    for block in range(data.rounds // BLOCK_ROUNDS):  # as the commit of its last round does
        store._rollups.merge_block(JOB, block)
    db["events"].insert_many(events)
    store._archive.archive(JOB, upto=store._archive.first_of(len(events)) - 1)
    db["models"].insert_many([dataclasses.asdict(data.model(r)) for r in range(1, data.rounds + 1)])
    db["clients"].insert_many([dataclasses.asdict(c) for c in data.client_records()])
    return store


def _mongo_round(db: Any, rec: RoundRecord, m: Any) -> dict[str, Any]:
    """The round document of `rec`; a commit and its participant list, or a failed
    attempt's progress documents, written on the way."""
    key = {"job": rec.job, "round": rec.round, "attempt": rec.attempt}
    doc = {**m._ROUND_DEFAULTS, **key, "started_at": rec.started_at}
    if rec.status == AttemptStatus.FAILED:
        db["progress"].insert_many(
            [{**key, "combiner": c, "progress": encode_json(p)} for c, p in rec.combiners.items()]
        )
        return {**doc, "status": rec.status, "reason": rec.reason, "completed_at": rec.completed_at}
    pid = encode_json([rec.job, rec.round, rec.attempt, "seed"])
    db["participants"].insert_one(
        {"_id": pid, **key, "participants": encode_json(rec.participants)}
    )
    values = {
        k: getattr(rec, k)
        for k in ("completed_at", "model_key", "n_updates", "num_examples", "metrics", "timings",
                  "combiners")
    }  # fmt: skip
    payload = {**encode_json_fields(values, m._ROUND_JSON), "participants_id": pid}
    db["commits"].insert_one({**key, "at": rec.completed_at, "payload": payload})
    return {**doc, **payload, "status": AttemptStatus.COMPLETED}


# ---- timing


def page_queries(store: StateStore, data: Dataset) -> list[tuple[str, Callable[[], Any]]]:
    """The Job detail page's queries, in its order."""
    first = sorted(data.clients)[:50]
    hi = data.rounds
    lo = max(1, hi - 49)
    return [
        ("get_job", lambda: store.get_job(JOB)),
        ("get_rounds", lambda: store.get_rounds(JOB, participants=False)),
        ("count_updates", lambda: store.count_updates(JOB)),
        (
            "participation",
            lambda: store.participation(JOB, clients=first, round_from=lo, round_to=hi),
        ),
        ("query_events", lambda: store.query_events(JOB, limit=200)),
        (
            "query_events_rejected",
            lambda: store.query_events(JOB, kinds=["UpdateRejected"], limit=200),
        ),
        ("count_events", lambda: store.count_events(JOB)),
        ("list_models", lambda: store.list_models(JOB)),
    ]


def other_queries(store: StateStore) -> list[tuple[str, Callable[[], Any]]]:
    return [
        ("job_overviews", lambda: store.job_overviews()),
        ("client_summaries", lambda: store.client_summaries(JOB)),
    ]


def time_store(
    store: StateStore, data: Dataset, repeat: int
) -> tuple[dict[str, float], dict[str, Any]]:
    """Best seconds per query (and the page total), and each query's last result."""
    best: dict[str, float] = {}
    results: dict[str, Any] = {}
    for _ in range(repeat):
        total = 0.0
        for name, q in page_queries(store, data):
            t = time.perf_counter()
            results[name] = q()
            dt = time.perf_counter() - t
            total += dt
            best[name] = min(best.get(name, math.inf), dt)
        best["job_detail_total"] = min(best.get("job_detail_total", math.inf), total)
        for name, q in other_queries(store):
            t = time.perf_counter()
            results[name] = q()
            best[name] = min(best.get(name, math.inf), time.perf_counter() - t)
    return best, results


def _comparable(name: str, result: Any) -> Any:
    """`result` of query `name` with what legitimately differs between stores left
    out (creation times) and floats rounded (summation order)."""
    if name == "get_job":
        return (result.name, result.phase, result.completed_rounds)
    if name == "job_overviews":
        return [(o.job.name, o.clients, o.connected) for o in result]

    def fix(v: Any) -> Any:
        if isinstance(v, float):
            return round(v, 9)
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return fix(dataclasses.asdict(v))
        if isinstance(v, dict):
            return {k: fix(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [fix(x) for x in v]
        return v

    return fix(result)


def _open(name: str, data: Dataset, tmp: Path, mongo: list[Any]) -> StateStore:
    if name == "sqlite":
        return seed_sqlite(data, tmp / "state.db")
    if name == "mongo":
        from fedkube.devenv.mongo import start_mongo

        server = start_mongo()
        mongo.append(server)
        return seed_mongo(data, server.database_uri("fedkube_bench"))
    raise SystemExit(f"unknown store {name!r} (sqlite, mongo)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="20 rounds x 20 clients")
    ap.add_argument("--stores", default="sqlite,mongo", help="comma-separated: sqlite, mongo")
    ap.add_argument("--json", type=Path, help="write the rows to this file")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.clients = 20, 20
    data = Dataset(args.rounds, args.clients)
    stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    tmp = Path(tempfile.mkdtemp(prefix="fedkube-bench-"))
    mongo: list[Any] = []
    rows: list[dict[str, Any]] = []
    results: dict[str, dict[str, Any]] = {}
    try:
        for name in stores:
            t = time.perf_counter()
            store = _open(name, data, tmp, mongo)
            print(f"{name}: seeded {args.rounds} rounds x {args.clients} clients in "
                  f"{time.perf_counter() - t:.1f}s", flush=True)  # fmt: skip
            best, results[name] = time_store(store, data, args.repeat)
            store.close()
            for q, sec in best.items():
                target = TARGET_S if q == "job_detail_total" else None
                rows.append({"case": f"{name}/{q}", "metric": "seconds", "fedkube": sec,
                             "baseline": None, "ratio": None, "target": target, "higher": False,
                             "met": (sec < target) if target is not None else None})  # fmt: skip
    finally:
        for server in mongo:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n{'store':8} {'query':24} {'seconds':>8}  (best of {args.repeat})")
    for row in rows:
        store_name, q = row["case"].split("/")
        mark = "" if row["met"] is None else ("  < 2 s: met" if row["met"] else "  >= 2 s: NOT met")
        print(f"{store_name:8} {q:24} {row['fedkube']:8.3f}{mark}")
    ok = True
    if len(results) > 1:
        (a, ra), (b, rb) = list(results.items())[:2]
        differ = [q for q in ra if _comparable(q, ra[q]) != _comparable(q, rb[q])]
        verdict = "yes" if not differ else "NO: " + ", ".join(differ)
        print(f"\n{a} and {b} return the same records: {verdict}")
        ok = not differ
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
