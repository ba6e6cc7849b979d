"""Job status as data (for `fedkube status -o json`) and as tables (for people)."""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from fedkube.errors import StateError
from fedkube.state import StateStore
from fedkube.vocabulary import REDUCER_STALE_SECONDS, AttemptStatus, reducer_silence


def make_console(*, stderr: bool = False) -> Console:
    """A rich console; 120 columns when writing to a file or pipe (logs, CI)."""
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, width=None if stream.isatty() else 120)


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def duration_text(seconds: float) -> str:
    """45s, 2m10s, 1h02m."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def job_status(
    state: StateStore,
    name: str,
    *,
    events: int = 20,
    stale_after: float = REDUCER_STALE_SECONDS,
    now: float | None = None,
) -> dict[str, Any]:
    """The job as JSON-ready data. ``reducerMissing`` is true for a Running job whose
    reducer has not renewed ``reducer_seen_at`` for more than `stale_after` seconds
    (it was killed: nothing runs the job until a reducer starts again)."""
    now = time.time() if now is None else now
    job = state.get_job(name)
    if job is None:
        known = ", ".join(j.name for j in state.list_jobs()) or "none"
        raise StateError(f"no job named {name!r} in {state.uri} (jobs: {known})")
    rounds = state.get_rounds(name)
    history = []
    for r in rounds:
        history.append(
            {
                "round": r.round,
                "attempt": r.attempt,
                "status": r.status,
                "reason": r.reason or None,
                "updates": r.n_updates,
                "examples": r.num_examples,
                "metrics": r.metrics,
                "validation": r.validation,
                "timings": {k: round(v, 4) for k, v in r.timings.items()},
                "durationSeconds": round(r.completed_at - r.started_at, 3)
                if r.completed_at
                else None,
                "participants": r.participants,
                "combiners": r.combiners,
                "startedAt": _iso(r.started_at),
                "completedAt": _iso(r.completed_at),
            }
        )
    spec = job.manifest.get("spec", {})
    end = job.completed_at or now
    seen = job.reducer_seen_at
    silent = reducer_silence(job.phase, seen, now, stale_after)
    return {
        "name": job.name,
        "phase": job.phase,
        "message": job.message,
        "rounds": spec.get("rounds"),
        "currentRound": job.current_round,
        "completedRounds": job.completed_rounds,
        "latestModel": job.latest_model,
        "metrics": job.metrics,
        "startTime": _iso(job.started_at),
        "completionTime": _iso(job.completed_at),
        "durationSeconds": round(end - job.started_at, 3) if job.started_at else None,
        "reducerSeenAt": _iso(seen),
        "reducerSilentSeconds": round(now - seen, 1) if seen is not None else None,
        "reducerMissing": silent is not None,
        "roundHistory": [h for h in history if h["status"] == AttemptStatus.COMPLETED],
        "failedAttempts": [h for h in history if h["status"] != AttemptStatus.COMPLETED],
        "clients": [
            {
                "client": c.client,
                "combiner": c.combiner,
                "status": c.status,
                "lastSeen": _iso(c.last_seen),
            }
            for c in state.list_clients(name)
        ],
        "events": [
            {
                k: v
                for k, v in {
                    "time": _iso(e.at),
                    "level": e.level,
                    "kind": e.kind,
                    "message": e.message,
                    "round": e.round,
                    "combiner": e.combiner,
                    "client": e.client,
                }.items()
                if v is not None
            }
            for e in state.list_events(name)[-events:]
        ],
        "stateStore": state.uri,
    }


def _fmt(metrics: dict[str, float], keys: list[str] | None = None) -> str:
    items = [(k, metrics[k]) for k in (keys or sorted(metrics)) if k in metrics]
    return "  ".join(f"{k}={v:.4f}" for k, v in items)


def _num(v: float | None) -> str:
    return "" if v is None else f"{v:.4f}"


def render_status(st: dict[str, Any]) -> Group:
    head = Table.grid(padding=(0, 2))
    head.add_row("Job", Text(st["name"], style="bold"))
    phase_style = {"Succeeded": "green", "Failed": "red", "Running": "cyan"}.get(st["phase"], "")
    if st.get("reducerMissing"):
        silent = duration_text(st["reducerSilentSeconds"] or 0)
        head.add_row("Phase", Text(f"{st['phase']} (no reducer seen for {silent})", style="yellow"))
    else:
        head.add_row("Phase", Text(st["phase"], style=phase_style))
    head.add_row("Rounds", f"{st['completedRounds']} / {st['rounds']}")
    if st["metrics"]:
        head.add_row("Metrics", _fmt(st["metrics"]))
    if st["durationSeconds"] is not None:
        head.add_row("Duration", f"{st['durationSeconds']:.1f}s")
    if st["latestModel"]:
        head.add_row("Model", st["latestModel"])
    if st["message"]:
        head.add_row("Message", st["message"])
    rounds = Table(
        title="Rounds (validation of the global model; train = clients' local)", show_edge=False
    )
    val_keys = sorted({k for h in st["roundHistory"] for k in h["validation"]})
    train_keys = sorted({k for h in st["roundHistory"] for k in h["metrics"]})
    for col in ("round", "attempt", "updates"):
        rounds.add_column(col, justify="right")
    for k in val_keys:
        rounds.add_column(k, justify="right")
    for k in train_keys:
        rounds.add_column(k if k.startswith("train") else f"train {k}", justify="right")
    rounds.add_column("seconds", justify="right")
    rounds.add_column("clients", justify="right")
    for h in st["roundHistory"]:
        rounds.add_row(
            str(h["round"]),
            str(h["attempt"]),
            str(h["updates"]),
            *(_num(h["validation"].get(k)) for k in val_keys),
            *(_num(h["metrics"].get(k)) for k in train_keys),
            f"{h['timings'].get('total_s', 0):.2f}",
            str(len(h["participants"])),
        )
    parts: list[Any] = [head, rounds]
    if st["failedAttempts"]:
        fails = Table(title="Failed attempts", show_edge=False)
        for col in ("round", "attempt", "reason"):
            fails.add_column(col)
        for h in st["failedAttempts"]:
            fails.add_row(str(h["round"]), str(h["attempt"]), h["reason"] or h["status"])
        parts.append(fails)
    warn = [e for e in st["events"] if e["level"] != "info"]
    if warn:
        ev = Table(title="Recent warnings", show_edge=False)
        ev.add_column("time")
        ev.add_column("kind")
        ev.add_column("message")
        for e in warn[-10:]:
            ev.add_row(e["time"], e["kind"], e["message"])
        parts.append(ev)
    return Group(*parts)
