"""The dashboard's aggregate queries on the SQLite store, as SQL.

Each function takes the store's `query` (one statement, one consistent
snapshot, errors as StateError) and returns the records of fedkube.state.base.
The indexes they rely on are SqliteStateStore's ``_INDEXES``:

- count_updates groups along ``updates_by_attempt`` (job, round, attempt,
  combiner, status, reason, weight): an index-only scan in group order;
- participation and client_summaries read ``updates_by_client`` (job, client,
  round, status, train_s): 50 clients x 50 rounds are 50 short range scans, and
  the per-client counts an index-only scan; last_error is one seek per client
  in the partial index ``updates_not_accepted``;
- query_events walks the primary key (job, seq) backwards, or
  ``events_by_kind`` (job, kind, seq) when kinds are given; count_events
  counts ``events_by_kind``.

List filters (clients, kinds, levels) are bound as one JSON array and read
with ``json_each``, so their length never meets SQLite's variable limit.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fedkube.state.base import (
    ClientSummary,
    JobOverview,
    JobRecord,
    ParticipationCell,
    UpdateCount,
)
from fedkube.state.update_error import error_text
from fedkube.vocabulary import AssignmentStatus, ClientStatus

#: SqliteStateStore._query: positional (tuple) or named (dict) parameters
Query = Callable[[str, tuple[Any, ...] | dict[str, Any]], list[sqlite3.Row]]

_ACCEPTED = str(AssignmentStatus.ACCEPTED)
_REJECTED = str(AssignmentStatus.REJECTED)
_FAILED = str(AssignmentStatus.FAILED)


def job_overviews(query: Query, job_of: Callable[[dict[str, Any]], JobRecord]) -> list[JobOverview]:
    """`job_of` makes the JobRecord of a jobs row (as a dict)."""
    rows = query(
        "SELECT j.*, COALESCE(c.clients, 0) AS _clients, COALESCE(c.connected, 0) AS _connected"
        " FROM jobs j LEFT JOIN (SELECT job, COUNT(*) AS clients,"
        " SUM(status = ?) AS connected FROM clients GROUP BY job) c ON c.job = j.name"
        " ORDER BY j.name",
        (str(ClientStatus.CONNECTED),),
    )
    out = []
    for r in rows:
        d = {k: r[k] for k in r.keys() if not k.startswith("_")}  # noqa: SIM118 - sqlite3.Row
        out.append(JobOverview(job_of(d), int(r["_clients"]), int(r["_connected"])))
    return out


def _round_range(round_from: int | None, round_to: int | None) -> tuple[str, tuple[Any, ...]]:
    sql, params = "", []
    if round_from is not None:
        sql += " AND round >= ?"
        params.append(round_from)
    if round_to is not None:
        sql += " AND round <= ?"
        params.append(round_to)
    return sql, tuple(params)


def count_updates(
    query: Query, job: str, round_from: int | None, round_to: int | None
) -> list[UpdateCount]:
    where, params = _round_range(round_from, round_to)
    rows = query(
        "SELECT round, attempt, combiner, status, reason, COUNT(*) AS n, TOTAL(weight) AS w"
        f" FROM updates WHERE job = ?{where}"
        " GROUP BY round, attempt, combiner, status, reason"
        " ORDER BY round, attempt, combiner, status, reason",
        (job, *params),
    )
    return [
        UpdateCount(
            r["round"], r["attempt"], r["combiner"], r["status"], r["reason"], r["n"], r["w"]
        )
        for r in rows
    ]


def participation(
    query: Query, job: str, clients: Sequence[str], round_from: int, round_to: int
) -> list[ParticipationCell]:
    if not clients:
        return []
    rows = query(
        "SELECT client, round, status, COUNT(*) AS n FROM updates"
        " WHERE job = ? AND client IN (SELECT value FROM json_each(?))"
        " AND round >= ? AND round <= ?"
        " GROUP BY client, round, status ORDER BY client, round, status",
        (job, json.dumps(list(clients)), round_from, round_to),
    )
    return [ParticipationCell(r["client"], r["round"], r["status"], r["n"]) for r in rows]


# One pass over the job's updates per client along updates_by_client (counts,
# distinct accepted rounds, the mean of the recorded training times), and per client
# one seek in the partial index updates_not_accepted for its latest update that was
# not accepted (ties broken by round, then attempt): last_error. The statuses are
# literals, not parameters, so that SQLite can use that partial index.
_CLIENT_SUMMARIES = f"""
WITH agg AS (
    SELECT client,
           COUNT(DISTINCT CASE WHEN status = '{_ACCEPTED}' THEN round END) AS rounds,
           TOTAL(status = '{_ACCEPTED}') AS accepted,
           TOTAL(status = '{_REJECTED}') AS rejected,
           TOTAL(status = '{_FAILED}') AS failed,
           AVG(CASE WHEN status = '{_ACCEPTED}' AND train_s > 0 THEN train_s END) AS mean_train_s
    FROM updates WHERE job = :job GROUP BY client
)
SELECT c.client, c.combiner, c.status, c.last_seen, c.participations,
       COALESCE(a.rounds, 0) AS rounds, COALESCE(a.accepted, 0) AS accepted,
       COALESCE(a.rejected, 0) AS rejected, COALESCE(a.failed, 0) AS failed,
       a.mean_train_s, e.reason AS err_reason, e.message AS err_message, e.at AS err_at
FROM clients c
LEFT JOIN agg a ON a.client = c.client
LEFT JOIN updates e ON e.rowid = (
    SELECT u.rowid FROM updates u
    WHERE u.job = c.job AND u.client = c.client AND u.status != '{_ACCEPTED}'
    ORDER BY u.at DESC, u.round DESC, u.attempt DESC LIMIT 1
)
WHERE c.job = :job
ORDER BY c.client
"""


def client_summaries(query: Query, job: str) -> list[ClientSummary]:
    rows = query(_CLIENT_SUMMARIES, {"job": job})
    return [
        ClientSummary(
            client=r["client"],
            combiner=r["combiner"],
            status=r["status"],
            last_seen=r["last_seen"],
            participations=r["participations"],
            rounds=int(r["rounds"]),
            accepted=int(r["accepted"]),
            rejected=int(r["rejected"]),
            failed=int(r["failed"]),
            mean_train_s=r["mean_train_s"],
            last_error="" if r["err_at"] is None else error_text(r["err_reason"], r["err_message"]),
            last_error_at=r["err_at"],
        )
        for r in rows
    ]


@dataclass(frozen=True)
class EventFilter:
    """query_events' filters (an empty sequence or None filters nothing)."""

    kinds: Sequence[str] = ()
    levels: Sequence[str] = ()
    round: int | None = None
    client: str | None = None
    combiner: str | None = None
    before_seq: int | None = None

    def sql(self) -> tuple[str, tuple[Any, ...]]:
        """The WHERE terms after ``job = ?`` and their parameters."""
        terms: list[str] = []
        params: list[Any] = []
        for column, values in (("kind", self.kinds), ("level", self.levels)):
            if values:
                terms.append(f"{column} IN (SELECT value FROM json_each(?))")
                params.append(json.dumps(list(values)))
        for column, value in (
            ("round", self.round),
            ("client", self.client),
            ("combiner", self.combiner),
        ):
            if value is not None:
                terms.append(f"{column} = ?")
                params.append(value)
        if self.before_seq is not None:
            terms.append("seq < ?")
            params.append(self.before_seq)
        return "".join(f" AND {t}" for t in terms), tuple(params)


def query_events(query: Query, job: str, where: EventFilter, limit: int) -> list[sqlite3.Row]:
    if limit <= 0:
        return []
    sql, params = where.sql()
    return query(
        f"SELECT * FROM events WHERE job = ?{sql} ORDER BY seq DESC LIMIT ?",
        (job, *params, limit),
    )


def count_events(query: Query, job: str) -> dict[str, int]:
    rows = query("SELECT kind, COUNT(*) AS n FROM events WHERE job = ? GROUP BY kind", (job,))
    return {r["kind"]: int(r["n"]) for r in rows}
