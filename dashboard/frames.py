"""The state store's records as pandas DataFrames, shaped for the pages' tables
and charts. Pure module: records in, frames out (no store, no Streamlit).

Long ("tidy") frames feed the Altair charts (`fedkube.dashboard.charts`); wide
ones feed `st.dataframe`. Times stay Unix seconds until a page formats them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Final

import pandas as pd

from fedkube.state.base import (
    ClientSummary,
    EventRecord,
    JobOverview,
    ModelRecord,
    ParticipationCell,
    RoundRecord,
    UpdateCount,
)
from fedkube.vocabulary import (
    AssignmentStatus,
    AttemptStatus,
    ClientStatus,
    headline_metric,
    headline_name,
)

#: The parts a round's wall time is broken into, in the order they happen, with
#: the RoundRecord.timings key each comes from. Aggregation runs on the combiners
#: while clients still train, so "training" is train_s minus aggregate_s.
DURATION_PARTS: Final = (
    ("waiting", "wait_s"),
    ("training", "train_s"),
    ("aggregation", "aggregate_s"),
    ("merge", "merge_s"),
    ("commit", "commit_s"),
)
TRAIN: Final = "train"
VALIDATION: Final = "validation"


def spec_of(manifest: dict[str, Any]) -> dict[str, Any]:
    spec = manifest.get("spec")
    return spec if isinstance(spec, dict) else {}


def _int(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def planned_rounds(manifest: dict[str, Any]) -> int:
    return _int(spec_of(manifest).get("rounds"), 0)


def combiner_count(manifest: dict[str, Any]) -> int:
    combiners = spec_of(manifest).get("combiners")
    return _int(combiners.get("replicas"), 1) if isinstance(combiners, dict) else 1


def quorum(manifest: dict[str, Any]) -> int:
    """spec.clients.minUpdates (1 when the manifest does not say)."""
    clients = spec_of(manifest).get("clients")
    return _int(clients.get("minUpdates"), 1) if isinstance(clients, dict) else 1


def latest_metrics(rounds: Sequence[RoundRecord]) -> dict[str, float]:
    """The newest committed round's validation metrics, else its train metrics."""
    for r in reversed(rounds):
        if r.status == AttemptStatus.COMPLETED and (r.validation or r.metrics):
            return dict(r.validation or r.metrics)
    return {}


def jobs_frame(overviews: Sequence[JobOverview], now: float) -> pd.DataFrame:
    """One row per job: the Jobs page's table."""
    rows = []
    for o in overviews:
        j = o.job
        rounds = planned_rounds(j.manifest)
        end = j.completed_at or now
        rows.append(
            {
                "job": j.name,
                "phase": j.phase,
                "progress": min(1.0, j.completed_rounds / rounds) if rounds else 0.0,
                "rounds": f"{j.completed_rounds}/{rounds}",
                "metric": headline_metric(j.metrics) or "",
                "started": pd.to_datetime(j.started_at, unit="s", utc=True)
                if j.started_at
                else pd.NaT,
                "duration_s": (end - j.started_at) if j.started_at else None,
                "combiners": combiner_count(j.manifest),
                "connected": o.connected,
                "clients": o.clients,
                "message": j.message,
            }
        )
    columns = [
        "job",
        "phase",
        "progress",
        "rounds",
        "metric",
        "started",
        "duration_s",
        "combiners",
        "connected",
        "clients",
        "message",
    ]
    return pd.DataFrame(rows, columns=columns)


def committed(rounds: Iterable[RoundRecord]) -> list[RoundRecord]:
    return [r for r in rounds if r.status == AttemptStatus.COMPLETED]


def metric_frame(rounds: Sequence[RoundRecord]) -> pd.DataFrame:
    """Long frame (round, source, metric, value) of the committed rounds' train
    metrics (source "train") and validation metrics (source "validation")."""
    rows = []
    for r in committed(rounds):
        for source, values in ((TRAIN, r.metrics), (VALIDATION, r.validation)):
            for name, value in values.items():
                rows.append({"round": r.round, "source": source, "metric": name, "value": value})
    return pd.DataFrame(rows, columns=["round", "source", "metric", "value"])


def metric_names(frame: pd.DataFrame) -> list[str]:
    """The metrics of a metric_frame, the headline one first."""
    names = sorted(set(frame["metric"])) if len(frame) else []
    head = headline_name(dict.fromkeys(names, 0.0))
    return sorted(names, key=lambda n: (n != head, n))


def duration_frame(rounds: Sequence[RoundRecord]) -> pd.DataFrame:
    """Long frame (round, part, seconds) of each committed round's wall time broken
    into DURATION_PARTS (parts a round did not record are left out)."""
    rows = []
    for r in committed(rounds):
        t = r.timings
        for part, key in DURATION_PARTS:
            if key not in t:
                continue
            seconds = float(t[key])
            if key == "train_s":
                seconds = max(0.0, seconds - float(t.get("aggregate_s", 0.0)))
            rows.append({"round": r.round, "part": part, "seconds": seconds})
    return pd.DataFrame(rows, columns=["round", "part", "seconds"])


def attempts_frame(rounds: Sequence[RoundRecord]) -> pd.DataFrame:
    """The failed attempts (and the retries after them): the Job detail page's table."""
    retried = {r.round for r in rounds if r.attempt > 1}
    rows = [
        {
            "round": r.round,
            "attempt": r.attempt,
            "status": r.status,
            "reason": r.reason,
            "started": pd.to_datetime(r.started_at, unit="s", utc=True),
            "duration_s": (r.completed_at - r.started_at) if r.completed_at else None,
        }
        for r in rounds
        if r.status == AttemptStatus.FAILED or r.round in retried
    ]
    return pd.DataFrame(
        rows, columns=["round", "attempt", "status", "reason", "started", "duration_s"]
    )


def updates_frame(counts: Sequence[UpdateCount], rounds: Sequence[RoundRecord]) -> pd.DataFrame:
    """Long frame (round, status, count) of the update records of each round's
    committed attempt (or its last attempt, while it runs or if none committed)."""
    last: dict[int, int] = {}
    for r in rounds:
        last[r.round] = max(last.get(r.round, 0), r.attempt)
    won = {r.round: r.attempt for r in rounds if r.status == AttemptStatus.COMPLETED}
    chosen = {rnd: won.get(rnd, attempt) for rnd, attempt in last.items()}
    totals: dict[tuple[int, str], int] = {}
    for c in counts:
        if chosen.get(c.round, c.attempt) != c.attempt:
            continue
        totals[(c.round, c.status)] = totals.get((c.round, c.status), 0) + c.count
    rows = [{"round": k[0], "status": k[1], "count": v} for k, v in sorted(totals.items())]
    return pd.DataFrame(rows, columns=["round", "status", "count"])


def combiner_frame(counts: Sequence[UpdateCount]) -> pd.DataFrame:
    """Long frame (round, combiner, count) of the accepted updates per combiner."""
    totals: dict[tuple[int, str], int] = {}
    for c in counts:
        if c.status == AssignmentStatus.ACCEPTED:
            totals[(c.round, c.combiner)] = totals.get((c.round, c.combiner), 0) + c.count
    rows = [{"round": k[0], "combiner": k[1], "count": v} for k, v in sorted(totals.items())]
    return pd.DataFrame(rows, columns=["round", "combiner", "count"])


def combiner_totals(counts: Sequence[UpdateCount]) -> pd.DataFrame:
    """One row per combiner: its accepted, rejected and failed updates over the job."""
    table: dict[str, dict[str, int]] = {}
    for c in counts:
        row = table.setdefault(c.combiner, {s.value: 0 for s in _SETTLED})
        row[c.status] = row.get(c.status, 0) + c.count
    rows = [{"combiner": name, **row} for name, row in sorted(table.items())]
    return pd.DataFrame(rows, columns=["combiner", *(s.value for s in _SETTLED)])


_SETTLED: Final = (AssignmentStatus.ACCEPTED, AssignmentStatus.REJECTED, AssignmentStatus.FAILED)


def refusals_frame(counts: Sequence[UpdateCount]) -> pd.DataFrame:
    """One row per (status, reason) of the updates that were not accepted, most first."""
    totals: dict[tuple[str, str], int] = {}
    for c in counts:
        if c.status != AssignmentStatus.ACCEPTED:
            totals[(c.status, c.reason)] = totals.get((c.status, c.reason), 0) + c.count
    rows = [{"status": s, "reason": r or "(none)", "count": n} for (s, r), n in totals.items()]
    frame = pd.DataFrame(rows, columns=["status", "reason", "count"])
    return frame.sort_values(["count", "reason"], ascending=[False, True], ignore_index=True)


#: how a participation cell is shown when a client has several records in a round
#: (a retried attempt): the best status wins
_STATUS_RANK: Final[dict[str, int]] = {
    AssignmentStatus.ACCEPTED: 0,
    AssignmentStatus.REJECTED: 1,
    AssignmentStatus.FAILED: 2,
}


def participation_frame(cells: Sequence[ParticipationCell]) -> pd.DataFrame:
    """One row per (client, round): the best status of its records that round."""
    best: dict[tuple[str, int], str] = {}
    for c in cells:
        key = (c.client, c.round)
        have = best.get(key)
        if have is None or _STATUS_RANK.get(c.status, 9) < _STATUS_RANK.get(have, 9):
            best[key] = c.status
    rows = [{"client": k[0], "round": k[1], "status": v} for k, v in sorted(best.items())]
    return pd.DataFrame(rows, columns=["client", "round", "status"])


def events_frame(events: Sequence[EventRecord]) -> pd.DataFrame:
    rows = [
        {
            "seq": e.seq,
            "at": pd.to_datetime(e.at, unit="s", utc=True),
            "level": e.level,
            "kind": e.kind,
            "round": e.round,
            "attempt": e.attempt,
            "combiner": e.combiner,
            "client": e.client,
            "message": e.message,
        }
        for e in events
    ]
    columns = ["seq", "at", "level", "kind", "round", "attempt", "combiner", "client", "message"]
    return pd.DataFrame(rows, columns=columns)


def is_online(c: ClientSummary, now: float, offline_after: float) -> bool:
    """Connected, and seen within `offline_after` seconds."""
    return c.status == ClientStatus.CONNECTED and now - c.last_seen <= offline_after


def clients_frame(
    clients: Sequence[ClientSummary], now: float, offline_after: float
) -> pd.DataFrame:
    """One row per client: the Clients page's table."""
    rows = [
        {
            "client": c.client,
            "online": is_online(c, now, offline_after),
            "combiner": c.combiner,
            "last_seen": pd.to_datetime(c.last_seen, unit="s", utc=True),
            "seen_ago_s": max(0.0, now - c.last_seen),
            "rounds": c.rounds,
            "accepted": c.accepted,
            "rejected": c.rejected,
            "failed": c.failed,
            "mean_train_s": c.mean_train_s,
            "last_error": c.last_error,
        }
        for c in clients
    ]
    columns = [
        "client",
        "online",
        "combiner",
        "last_seen",
        "seen_ago_s",
        "rounds",
        "accepted",
        "rejected",
        "failed",
        "mean_train_s",
        "last_error",
    ]
    return pd.DataFrame(rows, columns=columns)


def models_frame(models: Sequence[ModelRecord]) -> pd.DataFrame:
    """The lineage: one row per model, newest first."""
    rows = [
        {
            "round": m.round,
            "sha256": m.sha256,
            "size_bytes": m.size,
            "parent": m.parent or "",
            "key": m.key,
            "created": pd.to_datetime(m.created_at, unit="s", utc=True),
        }
        for m in sorted(models, key=lambda m: m.round, reverse=True)
    ]
    return pd.DataFrame(rows, columns=["round", "sha256", "size_bytes", "parent", "key", "created"])
