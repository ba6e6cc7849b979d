"""The dashboard's pure shaping of store records into frames (fedkube.dashboard.frames)
and the charts built on them."""

from __future__ import annotations

import pytest

from fedkube.dashboard import charts, frames
from fedkube.dashboard.config import DashboardConfig
from fedkube.state.base import (
    ClientSummary,
    JobOverview,
    JobRecord,
    ParticipationCell,
    RoundRecord,
    UpdateCount,
)


def rnd(r: int, a: int = 1, status: str = "completed", **kw: object) -> RoundRecord:
    return RoundRecord(job="j", round=r, attempt=a, status=status, started_at=100.0, **kw)  # type: ignore[arg-type]


def test_durations_split_training_from_aggregation() -> None:
    rounds = [
        rnd(1, timings={"wait_s": 1.0, "train_s": 5.0, "aggregate_s": 2.0, "merge_s": 0.5}),
        rnd(2, status="failed", timings={"wait_s": 9.0}),
    ]
    f = frames.duration_frame(rounds)
    got = dict(zip(f["part"], f["seconds"], strict=True))
    assert got == {"waiting": 1.0, "training": 3.0, "aggregation": 2.0, "merge": 0.5}
    assert set(f["round"]) == {1}  # failed attempts have no breakdown
    assert charts.duration_chart(f).to_dict()["mark"]["type"] == "bar"


def test_updates_per_round_count_the_committed_attempt_only() -> None:
    rounds = [rnd(1, 1, "failed"), rnd(1, 2), rnd(2, 1, "running")]
    counts = [
        UpdateCount(1, 1, "c0", "accepted", "", 5, 5.0),
        UpdateCount(1, 2, "c0", "accepted", "", 3, 3.0),
        UpdateCount(1, 2, "c1", "rejected", "not_finite", 1, 0.0),
        UpdateCount(2, 1, "c1", "accepted", "", 2, 2.0),
    ]
    f = frames.updates_frame(counts, rounds)
    assert f.to_dict("records") == [
        {"round": 1, "status": "accepted", "count": 3},
        {"round": 1, "status": "rejected", "count": 1},
        {"round": 2, "status": "accepted", "count": 2},
    ]
    totals = frames.combiner_totals(counts).set_index("combiner")
    assert totals.loc["c0", "accepted"] == 8 and totals.loc["c1", "rejected"] == 1
    refusals = frames.refusals_frame(counts)
    assert refusals.to_dict("records") == [
        {"status": "rejected", "reason": "not_finite", "count": 1}
    ]
    spec = charts.updates_chart(f, 3).to_dict()
    assert len(spec["layer"]) == 2  # bars and the quorum rule


def test_participation_shows_the_best_status_of_a_round() -> None:
    cells = [
        ParticipationCell("a", 1, "failed", 1),
        ParticipationCell("a", 1, "accepted", 1),
        ParticipationCell("b", 1, "rejected", 2),
    ]
    f = frames.participation_frame(cells)
    assert f.to_dict("records") == [
        {"client": "a", "round": 1, "status": "accepted"},
        {"client": "b", "round": 1, "status": "rejected"},
    ]


def test_metric_frame_and_the_headline_metric_first() -> None:
    rounds = [
        rnd(1, metrics={"loss": 0.5}, validation={"accuracy": 0.7}),
        rnd(2, 1, "failed", metrics={"loss": 9.0}),
        rnd(2, 2, metrics={"loss": 0.4}, validation={"accuracy": 0.8}),
    ]
    f = frames.metric_frame(rounds)
    assert len(f) == 4 and 9.0 not in set(f["value"])
    assert frames.metric_names(f) == ["accuracy", "loss"]
    assert frames.latest_metrics(rounds) == {"accuracy": 0.8}
    assert frames.attempts_frame(rounds)["attempt"].tolist() == [1, 2]


def test_jobs_frame_progress_and_clients() -> None:
    manifest = {"spec": {"rounds": 4, "combiners": {"replicas": 3}}}
    job = JobRecord(
        name="j",
        manifest=manifest,
        phase="Running",
        started_at=100.0,
        completed_rounds=1,
        metrics={"accuracy": 0.91234},
    )
    f = frames.jobs_frame([JobOverview(job, clients=5, connected=2)], now=160.0)
    row = f.iloc[0]
    assert row["progress"] == pytest.approx(0.25)
    assert row["rounds"] == "1/4" and row["combiners"] == 3 and row["connected"] == 2
    assert row["metric"] == "accuracy=0.9123" and row["duration_s"] == 60.0


def test_online_means_connected_and_seen_recently() -> None:
    def c(status: str, seen: float) -> ClientSummary:
        return ClientSummary("x", "c0", status, seen, 0, 0, 0, 0, 0, None, "", None)

    assert frames.is_online(c("connected", 990.0), 1000.0, 60.0)
    assert not frames.is_online(c("connected", 900.0), 1000.0, 60.0)
    assert not frames.is_online(c("disconnected", 999.0), 1000.0, 60.0)


def test_config_round_trips_through_the_environment() -> None:
    cfg = DashboardConfig(state="sqlite:///x.db", store="file:///s", refresh_seconds=2.0)
    assert DashboardConfig.from_env(cfg.to_env()) == cfg
    with pytest.raises(ValueError, match="FEDKUBE_DASHBOARD_STATE"):
        DashboardConfig.from_env({})
