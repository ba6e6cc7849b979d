"""SqliteStateStore: the embedded state store (one SQLite file).

Several processes (reducer, combiners, CLI polling) and threads open the same
file at once, so: WAL journal, a 30 s busy timeout, one connection per store
guarded by a lock, short transactions, and ``BEGIN IMMEDIATE`` (the write lock
up front) for every read-modify-write. commit_round checks and writes inside
one such transaction, and a partial unique index allows at most one completed
attempt per (job, round) as a second line of defence.

The dashboard's aggregate queries (fedkube/state/sqlite_queries.py) are plain
SQL over indexes made for them (_INDEXES): no derived tables are kept, since
SQLite groups the 1M update rows of a 1,000 x 1,000 job in well under a
second (bench/dashboard_queries.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from fedkube.errors import StateError
from fedkube.state import sqlite_queries as queries
from fedkube.state.base import (
    JOB_JSON_FIELDS,
    MAX_UPDATE_MESSAGE,
    SCHEMA_VERSION,
    ClientRecord,
    ClientSummary,
    CredentialRecord,
    EventRecord,
    JobOverview,
    JobRecord,
    ModelRecord,
    ParticipationCell,
    RoundRecord,
    StateStore,
    UpdateCount,
    UpdateRecord,
    check_schema_version,
    encode_json,
    encode_json_fields,
    now,
)
from fedkube.vocabulary import AttemptStatus, Phase

BUSY_TIMEOUT_S = 30.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    name TEXT PRIMARY KEY,
    manifest TEXT NOT NULL,
    phase TEXT NOT NULL,
    message TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    started_at REAL,
    completed_at REAL,
    current_round INTEGER NOT NULL DEFAULT 0,
    completed_rounds INTEGER NOT NULL DEFAULT 0,
    latest_model TEXT,
    metrics TEXT NOT NULL DEFAULT '{}',
    reducer_seen_at REAL
);
CREATE TABLE IF NOT EXISTS rounds (
    job TEXT NOT NULL,
    round INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    status TEXT NOT NULL,
    started_at REAL NOT NULL,
    completed_at REAL,
    reason TEXT NOT NULL DEFAULT '',
    model_key TEXT,
    n_updates INTEGER NOT NULL DEFAULT 0,
    num_examples INTEGER NOT NULL DEFAULT 0,
    metrics TEXT NOT NULL DEFAULT '{}',
    validation TEXT NOT NULL DEFAULT '{}',
    validation_examples INTEGER NOT NULL DEFAULT 0,
    timings TEXT NOT NULL DEFAULT '{}',
    participants TEXT NOT NULL DEFAULT '[]',
    combiners TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (job, round, attempt)
);
CREATE UNIQUE INDEX IF NOT EXISTS rounds_one_completed
    ON rounds (job, round) WHERE status = 'completed';
CREATE TABLE IF NOT EXISTS updates (
    job TEXT NOT NULL,
    round INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    client TEXT NOT NULL,
    combiner TEXT NOT NULL,
    status TEXT NOT NULL,
    num_examples INTEGER NOT NULL DEFAULT 0,
    reason TEXT NOT NULL DEFAULT '',
    digest TEXT NOT NULL DEFAULT '',
    at REAL NOT NULL,
    weight REAL NOT NULL DEFAULT 0,
    train_s REAL NOT NULL DEFAULT 0,
    message TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (job, round, attempt, client)
);
CREATE TABLE IF NOT EXISTS credentials (
    job TEXT NOT NULL,
    client TEXT NOT NULL,
    token_id TEXT NOT NULL,
    digest TEXT NOT NULL UNIQUE,
    issued_at REAL NOT NULL,
    revoked_at REAL,
    note TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (job, token_id)
);
CREATE TABLE IF NOT EXISTS events (
    job TEXT NOT NULL,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    message TEXT NOT NULL,
    level TEXT NOT NULL,
    round INTEGER,
    attempt INTEGER,
    client TEXT,
    combiner TEXT,
    at REAL NOT NULL,
    PRIMARY KEY (job, seq)
);
CREATE TABLE IF NOT EXISTS clients (
    job TEXT NOT NULL,
    client TEXT NOT NULL,
    combiner TEXT NOT NULL,
    status TEXT NOT NULL,
    last_seen REAL NOT NULL,
    participations INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (job, client)
);
CREATE TABLE IF NOT EXISTS models (
    job TEXT NOT NULL,
    round INTEGER NOT NULL,
    key TEXT NOT NULL,
    parent TEXT,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (job, round)
);
"""

#: the indexes of the dashboard's queries (sqlite_queries.py), created after any
#: migration since they name columns an older store gets from it
_INDEXES = """
CREATE INDEX IF NOT EXISTS updates_by_attempt
    ON updates (job, round, attempt, combiner, status, reason, weight);
CREATE INDEX IF NOT EXISTS updates_by_client ON updates (job, client, round, status, train_s);
CREATE INDEX IF NOT EXISTS updates_not_accepted ON updates (job, client, at, round, attempt)
    WHERE status != 'accepted';
CREATE INDEX IF NOT EXISTS events_by_kind ON events (job, kind, seq);
"""

_ROUND_JSON = frozenset({"metrics", "validation", "timings", "participants", "combiners"})
#: the rounds columns get_rounds(participants=False) reads (all but participants)
_ROUND_COLUMNS_BUT_PARTICIPANTS = ", ".join(
    f.name for f in dataclasses.fields(RoundRecord) if f.name != "participants"
)


#: columns schema version 2 added to tables a version-1 store already has
_V2_COLUMNS = {
    "jobs": ("reducer_seen_at", "REAL"),
    "updates": ("weight", "REAL NOT NULL DEFAULT 0"),
}
#: columns schema version 3 added (table, column, declaration)
_V3_COLUMNS = (
    ("updates", "train_s", "REAL NOT NULL DEFAULT 0"),
    ("updates", "message", "TEXT NOT NULL DEFAULT ''"),
)


def _migrate(c: sqlite3.Connection) -> None:
    """Upgrade an older store in place (inside the setup transaction); the new
    tables were already created by the schema's CREATE TABLE IF NOT EXISTS."""
    columns = [(t, col, decl) for t, (col, decl) in _V2_COLUMNS.items()] + list(_V3_COLUMNS)
    for table, column, decl in columns:
        have = {row[1] for row in c.execute(f"PRAGMA table_info({table})")}
        if column not in have:
            c.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
    # version 4: an update's file digest names its algorithm ("xxh3-128:..."), so the
    # column is no longer sha256
    if "sha256" in {row[1] for row in c.execute("PRAGMA table_info(updates)")}:
        c.execute("ALTER TABLE updates RENAME COLUMN sha256 TO digest")
    c.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))


def _plain(row: sqlite3.Row) -> dict[str, Any]:
    return {k: row[k] for k in row.keys()}  # noqa: SIM118 - sqlite3.Row


def _job_of(d: dict[str, Any]) -> JobRecord:
    """The JobRecord of a jobs row (as a dict; its JSON fields are decoded in place)."""
    for k in JOB_JSON_FIELDS:
        d[k] = json.loads(d[k])
    return JobRecord(**d)


def _job(row: sqlite3.Row) -> JobRecord:
    return _job_of(_plain(row))


def _round(row: sqlite3.Row) -> RoundRecord:
    d = _plain(row)
    for k in _ROUND_JSON.intersection(d):
        d[k] = json.loads(d[k])
    return RoundRecord(**d)


class SqliteStateStore(StateStore):
    """The StateStore contract on one SQLite file, safe across processes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser().resolve()
        self.uri = f"sqlite:///{self.path}"
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn: sqlite3.Connection | None = sqlite3.connect(
                str(self.path),
                timeout=BUSY_TIMEOUT_S,
                isolation_level=None,  # autocommit; transactions are explicit
                check_same_thread=False,
            )
        except (OSError, sqlite3.Error) as exc:
            raise StateError(f"cannot open state store {self.uri}: {exc}") from exc
        self._conn.row_factory = sqlite3.Row
        try:
            self._setup()
        except BaseException:
            self._conn.close()
            self._conn = None
            raise

    def __repr__(self) -> str:
        return f"SqliteStateStore({str(self.path)!r})"

    # ---- plumbing
    def _setup(self) -> None:
        conn = self._conn
        assert conn is not None
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            # Switching to WAL takes a brief exclusive lock; another process
            # opening the same new file at the same moment can make it fail.
            deadline = time.monotonic() + BUSY_TIMEOUT_S
            while True:
                try:
                    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                    break
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) or time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            if str(mode).lower() != "wal":
                raise StateError(f"state store {self.uri}: cannot enable WAL (journal mode {mode})")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
        except sqlite3.Error as exc:
            raise StateError(f"cannot open state store {self.uri}: {exc}") from exc
        with self._tx() as c:
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    c.execute(stmt)
            row = c.execute("SELECT MAX(version) FROM schema_version").fetchone()
            version = row[0]
            if version is None:
                c.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
            else:
                check_schema_version(self.uri, version)
                if version < SCHEMA_VERSION:
                    _migrate(c)
            for stmt in _INDEXES.split(";"):
                if stmt.strip():
                    c.execute(stmt)

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error)."""
        with self._lock:
            conn = self._conn
            if conn is None:
                raise StateError(f"state store {self.uri} is closed")
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StateError(
                    f"state store {self.uri}: cannot begin transaction: {exc}"
                ) from exc
            try:
                yield conn
            except BaseException as exc:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise StateError(f"state store {self.uri}: {exc}") from exc
                raise
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise StateError(f"state store {self.uri}: commit failed: {exc}") from exc

    def _query(self, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()) -> list[sqlite3.Row]:
        """A read (one statement is one consistent snapshot)."""
        with self._lock:
            conn = self._conn
            if conn is None:
                raise StateError(f"state store {self.uri} is closed")
            try:
                return conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise StateError(f"state store {self.uri}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # ---- jobs
    def create_job(self, name: str, manifest: dict[str, Any]) -> JobRecord:
        t = now()
        with self._tx() as c:
            c.execute(
                "INSERT INTO jobs (name, manifest, phase, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET manifest = excluded.manifest,"
                " updated_at = excluded.updated_at",
                (name, encode_json(manifest), Phase.PENDING, t, t),
            )
            row = c.execute("SELECT * FROM jobs WHERE name = ?", (name,)).fetchone()
        return _job(row)

    def get_job(self, name: str) -> JobRecord | None:
        rows = self._query("SELECT * FROM jobs WHERE name = ?", (name,))
        return _job(rows[0]) if rows else None

    def list_jobs(self) -> list[JobRecord]:
        return [_job(r) for r in self._query("SELECT * FROM jobs ORDER BY name")]

    def _set_job(self, name: str, values: dict[str, Any]) -> JobRecord:
        assignments = ", ".join(f"{k} = ?" for k in values)
        with self._tx() as c:
            cur = c.execute(
                f"UPDATE jobs SET {assignments} WHERE name = ?", (*values.values(), name)
            )
            if cur.rowcount == 0:
                raise StateError(f"update_job: no job {name!r}")
            row = c.execute("SELECT * FROM jobs WHERE name = ?", (name,)).fetchone()
        return _job(row)

    # ---- rounds
    def begin_attempt(self, job: str, round: int, attempt: int) -> RoundRecord:
        with self._tx() as c:
            c.execute(
                "INSERT OR IGNORE INTO rounds (job, round, attempt, status, started_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (job, round, attempt, AttemptStatus.RUNNING, now()),
            )
            row = c.execute(
                "SELECT * FROM rounds WHERE job = ? AND round = ? AND attempt = ?",
                (job, round, attempt),
            ).fetchone()
        return _round(row)

    def _attempt_row(
        self, c: sqlite3.Connection, job: str, round: int, attempt: int
    ) -> sqlite3.Row | None:
        row: sqlite3.Row | None = c.execute(
            "SELECT * FROM rounds WHERE job = ? AND round = ? AND attempt = ?",
            (job, round, attempt),
        ).fetchone()
        return row

    def set_progress(
        self, job: str, round: int, attempt: int, combiner: str, progress: dict[str, Any]
    ) -> None:
        with self._tx() as c:
            row = self._attempt_row(c, job, round, attempt)
            if row is None:
                raise StateError(
                    f"set_progress: job {job!r} round {round} has no attempt {attempt}"
                )
            if row["status"] != AttemptStatus.RUNNING:
                return  # a late report never changes a finished attempt
            combiners = json.loads(row["combiners"])
            combiners[combiner] = progress
            c.execute(
                "UPDATE rounds SET combiners = ? WHERE job = ? AND round = ? AND attempt = ?",
                (encode_json(combiners), job, round, attempt),
            )

    def fail_attempt(self, job: str, round: int, attempt: int, reason: str) -> None:
        with self._tx() as c:
            row = self._attempt_row(c, job, round, attempt)
            if row is None:
                raise StateError(
                    f"fail_attempt: job {job!r} round {round} has no attempt {attempt}"
                )
            c.execute(
                "UPDATE rounds SET status = ?, reason = ?, completed_at = ?"
                " WHERE job = ? AND round = ? AND attempt = ? AND status = ?",
                (AttemptStatus.FAILED, reason, now(), job, round, attempt, AttemptStatus.RUNNING),
            )

    def _commit_round(self, job: str, round: int, attempt: int, result: dict[str, Any]) -> bool:
        values = {"status": AttemptStatus.COMPLETED, **encode_json_fields(result, _ROUND_JSON)}
        cols = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        assignments = ", ".join(f"{k} = excluded.{k}" for k in values)
        with self._tx() as c:
            done = c.execute(
                "SELECT attempt FROM rounds WHERE job = ? AND round = ? AND status = ?",
                (job, round, AttemptStatus.COMPLETED),
            ).fetchone()
            if done is not None:
                return False
            row = self._attempt_row(c, job, round, attempt)
            if row is not None and row["status"] == AttemptStatus.FAILED:
                raise StateError(
                    f"commit_round: attempt {attempt} of job {job!r} round {round} already "
                    f"failed ({row['reason']}); start a new attempt"
                )
            # A running attempt is updated; one never begun is inserted, started now.
            c.execute(
                f"INSERT INTO rounds (job, round, attempt, started_at, {cols})"
                f" VALUES (?, ?, ?, ?, {marks})"
                f" ON CONFLICT (job, round, attempt) DO UPDATE SET {assignments}",
                (job, round, attempt, result["completed_at"], *values.values()),
            )
        return True

    def set_validation(
        self, job: str, round: int, metrics: dict[str, float], num_examples: int
    ) -> None:
        with self._tx() as c:
            cur = c.execute(
                "UPDATE rounds SET validation = ?, validation_examples = ?"
                " WHERE job = ? AND round = ? AND status = ?",
                (encode_json(metrics), num_examples, job, round, AttemptStatus.COMPLETED),
            )
            if cur.rowcount == 0:
                raise StateError(f"set_validation: job {job!r} round {round} is not committed")

    def get_rounds(self, job: str, *, participants: bool = True) -> list[RoundRecord]:
        columns = "*" if participants else _ROUND_COLUMNS_BUT_PARTICIPANTS
        rows = self._query(
            f"SELECT {columns} FROM rounds WHERE job = ? ORDER BY round, attempt", (job,)
        )
        return [_round(r) for r in rows]

    def committed_rounds(self, job: str) -> list[RoundRecord]:
        rows = self._query(
            "SELECT * FROM rounds WHERE job = ? AND status = ? ORDER BY round, attempt",
            (job, AttemptStatus.COMPLETED),
        )
        return [_round(r) for r in rows]

    def last_committed_round(self, job: str) -> int:
        rows = self._query(
            "SELECT MAX(round) FROM rounds WHERE job = ? AND status = ?",
            (job, AttemptStatus.COMPLETED),
        )
        value = rows[0][0]
        return int(value) if value is not None else 0

    # ---- updates
    def record_update(self, rec: UpdateRecord) -> bool:
        with self._tx() as c:
            cur = c.execute(
                "INSERT OR IGNORE INTO updates (job, round, attempt, client, combiner, status,"
                " num_examples, reason, digest, at, weight, train_s, message)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    rec.job,
                    rec.round,
                    rec.attempt,
                    rec.client,
                    rec.combiner,
                    rec.status,
                    rec.num_examples,
                    rec.reason,
                    rec.digest,
                    rec.at or now(),
                    rec.weight,
                    rec.train_s,
                    rec.message[:MAX_UPDATE_MESSAGE],
                ),
            )
            return cur.rowcount == 1

    def list_updates(self, job: str, round: int | None = None) -> list[UpdateRecord]:
        if round is None:
            rows = self._query(
                "SELECT * FROM updates WHERE job = ? ORDER BY round, attempt, client", (job,)
            )
        else:
            rows = self._query(
                "SELECT * FROM updates WHERE job = ? AND round = ? ORDER BY round, attempt, client",
                (job, round),
            )
        return [UpdateRecord(**_plain(r)) for r in rows]

    # ---- aggregate queries (the dashboard): SQL in sqlite_queries.py
    def job_overviews(self) -> list[JobOverview]:
        return queries.job_overviews(self._query, _job_of)

    def count_updates(
        self, job: str, *, round_from: int | None = None, round_to: int | None = None
    ) -> list[UpdateCount]:
        return queries.count_updates(self._query, job, round_from, round_to)

    def participation(
        self, job: str, *, clients: Sequence[str], round_from: int, round_to: int
    ) -> list[ParticipationCell]:
        return queries.participation(self._query, job, clients, round_from, round_to)

    def client_summaries(self, job: str) -> list[ClientSummary]:
        return queries.client_summaries(self._query, job)

    def query_events(
        self,
        job: str,
        *,
        kinds: Sequence[str] = (),
        levels: Sequence[str] = (),
        round: int | None = None,
        client: str | None = None,
        combiner: str | None = None,
        before_seq: int | None = None,
        limit: int = 200,
    ) -> list[EventRecord]:
        where = queries.EventFilter(kinds, levels, round, client, combiner, before_seq)
        return [
            EventRecord(**_plain(r)) for r in queries.query_events(self._query, job, where, limit)
        ]

    def count_events(self, job: str) -> dict[str, int]:
        return queries.count_events(self._query, job)

    # ---- events
    def add_event(self, ev: EventRecord) -> None:
        """Append `ev`. Sequence numbers are per job (1, 2, 3, ...). An event given
        with a seq that already exists is ignored (idempotent replay)."""
        with self._tx() as c:
            seq = ev.seq
            if not seq:
                seq = c.execute(
                    "SELECT COALESCE(MAX(seq), 0) + 1 FROM events WHERE job = ?", (ev.job,)
                ).fetchone()[0]
            c.execute(
                "INSERT OR IGNORE INTO events (job, seq, kind, message, level, round, attempt,"
                " client, combiner, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    ev.job,
                    seq,
                    ev.kind,
                    ev.message,
                    ev.level,
                    ev.round,
                    ev.attempt,
                    ev.client,
                    ev.combiner,
                    ev.at or now(),
                ),
            )

    def list_events(
        self, job: str, *, since_seq: int = 0, limit: int | None = None
    ) -> list[EventRecord]:
        rows = self._query(
            "SELECT * FROM events WHERE job = ? AND seq > ? ORDER BY seq LIMIT ?",
            (job, since_seq, -1 if limit is None else max(0, limit)),
        )
        return [EventRecord(**_plain(r)) for r in rows]

    # ---- clients
    def upsert_client(self, rec: ClientRecord) -> None:
        with self._tx() as c:
            c.execute(
                "INSERT INTO clients (job, client, combiner, status, last_seen, participations)"
                " VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (job, client) DO UPDATE SET combiner = excluded.combiner,"
                " status = excluded.status, last_seen = excluded.last_seen,"
                " participations = MAX(participations, excluded.participations)",
                (
                    rec.job,
                    rec.client,
                    rec.combiner,
                    rec.status,
                    rec.last_seen or now(),
                    rec.participations,
                ),
            )

    def list_clients(self, job: str) -> list[ClientRecord]:
        rows = self._query("SELECT * FROM clients WHERE job = ? ORDER BY client", (job,))
        return [ClientRecord(**_plain(r)) for r in rows]

    # ---- credentials
    def add_credential(self, rec: CredentialRecord) -> None:
        with self._tx() as c:
            c.execute(
                "INSERT INTO credentials (job, client, token_id, digest, issued_at, revoked_at,"
                " note) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    rec.job,
                    rec.client,
                    rec.token_id,
                    rec.digest,
                    rec.issued_at or now(),
                    rec.revoked_at,
                    rec.note,
                ),
            )

    def list_credentials(self, job: str) -> list[CredentialRecord]:
        rows = self._query(
            "SELECT * FROM credentials WHERE job = ? ORDER BY client, issued_at", (job,)
        )
        return [CredentialRecord(**_plain(r)) for r in rows]

    def revoke_credentials(
        self, job: str, client: str, token_id: str | None = None, *, at: float | None = None
    ) -> int:
        sql = "UPDATE credentials SET revoked_at = ? WHERE job = ? AND client = ?"
        params: tuple[Any, ...] = (at or now(), job, client)
        if token_id is not None:
            sql += " AND token_id = ?"
            params += (token_id,)
        with self._tx() as c:
            return c.execute(sql + " AND revoked_at IS NULL", params).rowcount

    # ---- models
    def add_model(self, rec: ModelRecord) -> None:
        with self._tx() as c:
            c.execute(
                "INSERT INTO models (job, round, key, parent, sha256, size, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (job, round) DO UPDATE SET key = excluded.key,"
                " parent = excluded.parent, sha256 = excluded.sha256, size = excluded.size,"
                " created_at = excluded.created_at",
                (
                    rec.job,
                    rec.round,
                    rec.key,
                    rec.parent,
                    rec.sha256,
                    rec.size,
                    rec.created_at or now(),
                ),
            )

    def get_model(self, job: str, round: int | None = None) -> ModelRecord | None:
        if round is None:
            rows = self._query(
                "SELECT * FROM models WHERE job = ? ORDER BY round DESC LIMIT 1", (job,)
            )
        else:
            rows = self._query("SELECT * FROM models WHERE job = ? AND round = ?", (job, round))
        return ModelRecord(**_plain(rows[0])) if rows else None

    def list_models(self, job: str) -> list[ModelRecord]:
        rows = self._query("SELECT * FROM models WHERE job = ? ORDER BY round", (job,))
        return [ModelRecord(**_plain(r)) for r in rows]
