"""The FederatedJob status the operator computes (fedkube.operator.status).

No cluster here: status_from from the state store's job record and the status
blocks of the children (phase, rounds, metrics, combiners, times, and one
helper per condition: Ready, Progressing, Suspended, Complete, Failed), and the
one headline-metric rule that both the status and the CRD's documentation use.
"""

from __future__ import annotations

import copy
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from fedkube import vocabulary
from fedkube.operator import crd
from fedkube.operator import status as s
from fedkube.spec import FederatedJob
from fedkube.state.base import JobRecord
from fedkube.vocabulary import Phase
from tests.unit.test_builders import make_job

CRD_FILE = (
    Path(__file__).resolve().parents[2] / "charts/fedkube/crds/federatedjobs.fedkube.dev.yaml"
)

T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
T1 = datetime(2025, 3, 1, 12, 5, 0, tzinfo=UTC)
STARTED = datetime(2025, 3, 1, 11, 0, 0, tzinfo=UTC).timestamp()
DONE = datetime(2025, 3, 1, 11, 30, 15, tzinfo=UTC).timestamp()


def record(phase: str = "Running", **kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "phase": phase,
        "message": "",
        "current_round": 3,
        "completed_rounds": 2,
        "latest_model": "jobs/mnist/models/2.safetensors",
        "metrics": {"loss": 0.25, "accuracy": 0.968},
        "started_at": STARTED,
        "completed_at": None,
    }
    return {**base, **kw}


READY_STS = {"replicas": 3, "readyReplicas": 3}
READY_DEP = {"replicas": 1, "readyReplicas": 1}


def status(
    job: FederatedJob | None = None,
    rec: Any = "default",
    sts_status: dict[str, Any] | None = READY_STS,
    dep_status: dict[str, Any] | None = READY_DEP,
    previous: dict[str, Any] | None = None,
    now: datetime | float = T0,
    **kw: Any,
) -> dict[str, Any]:
    return s.status_from(
        job or make_job(),
        record=record() if rec == "default" else rec,
        statefulset=sts_status,
        deployment=dep_status,
        generation=kw.pop("generation", 4),
        previous=previous,
        now=now,
        **kw,
    )


def cond(st: dict[str, Any], type_: str) -> dict[str, Any]:
    found = [c for c in st["conditions"] if c["type"] == type_]
    assert len(found) == 1
    return found[0]


def truth(st: dict[str, Any]) -> dict[str, str]:
    return {c["type"]: c["status"] for c in st["conditions"]}


def test_status_running() -> None:
    st = status()
    assert st["phase"] == "Running"
    assert st["observedGeneration"] == 4
    assert st["currentRound"] == 3 and st["completedRounds"] == 2
    assert st["latestModel"] == "jobs/mnist/models/2.safetensors"
    assert st["metrics"] == {"loss": 0.25, "accuracy": 0.968}
    assert st["headlineMetric"] == "accuracy=0.968"  # .4g: the one headline rule
    assert st["combiners"] == {
        "replicas": 3,
        "ready": 3,
        "selector": "app.kubernetes.io/name=fedkube,app.kubernetes.io/instance=mnist,"
        "app.kubernetes.io/component=combiner",
    }
    assert st["startTime"] == "2025-03-01T11:00:00Z"
    assert st["completionTime"] is None
    assert [c["type"] for c in st["conditions"]] == [
        "Ready",
        "Progressing",
        "Suspended",
        "Complete",
        "Failed",
    ]
    assert truth(st) == {
        "Ready": "True",
        "Progressing": "True",
        "Suspended": "False",
        "Complete": "False",
        "Failed": "False",
    }
    assert cond(st, "Progressing")["reason"] == "RoundsRunning"
    assert cond(st, "Progressing")["message"] == "round 3 of 5 (2 completed)"
    for c in st["conditions"]:
        assert c["lastTransitionTime"] == "2025-03-01T12:00:00Z"
        assert c["observedGeneration"] == 4
        assert re.fullmatch(r"[A-Z][A-Za-z]*", c["reason"]), c
        assert isinstance(c["message"], str)
    assert json.loads(json.dumps(st)) == st


def test_status_pending_before_the_job_record_exists() -> None:
    st = status(rec=None, sts_status=None, dep_status=None)
    assert st["phase"] == "Pending"
    assert st["currentRound"] == 0 and st["completedRounds"] == 0
    assert st["latestModel"] is None and st["metrics"] == {} and st["headlineMetric"] is None
    assert st["startTime"] is None and st["completionTime"] is None
    assert st["combiners"]["replicas"] == 0 and st["combiners"]["ready"] == 0
    assert truth(st) == {
        "Ready": "False",
        "Progressing": "False",
        "Suspended": "False",
        "Complete": "False",
        "Failed": "False",
    }
    assert cond(st, "Ready")["reason"] == "ReducerNotReady"
    assert cond(st, "Progressing")["reason"] == "Pending"


def test_status_accepts_a_job_record_dataclass() -> None:
    rec = JobRecord(
        name="mnist",
        manifest={},
        phase="Running",
        current_round=2,
        completed_rounds=1,
        latest_model="jobs/mnist/models/1.safetensors",
        metrics={"acc": 0.5},
        started_at=STARTED,
    )
    st = status(rec=rec)
    assert st["phase"] == "Running" and st["currentRound"] == 2 and st["completedRounds"] == 1
    assert st["headlineMetric"] == "acc=0.5"
    assert st["startTime"] == "2025-03-01T11:00:00Z"


def test_status_ready_needs_the_reducer_and_every_combiner() -> None:
    st = status(sts_status={"replicas": 3, "readyReplicas": 2})
    assert cond(st, "Ready")["status"] == "False"
    assert cond(st, "Ready")["reason"] == "CombinersNotReady"
    assert "2/3 combiners ready" in cond(st, "Ready")["message"]
    st = status(dep_status={"replicas": 1})  # readyReplicas is omitted when 0
    assert (cond(st, "Ready")["status"], cond(st, "Ready")["reason"]) == (
        "False",
        "ReducerNotReady",
    )
    st = status(sts_status={"replicas": 3})
    assert st["combiners"]["ready"] == 0


def test_status_suspended() -> None:
    job = make_job(suspend=True)
    # the operator scaled the combiners down; the reducer has not paused yet
    st = status(job, rec=record("Running"), sts_status={"replicas": 0})
    assert st["phase"] == "Suspended"
    assert cond(st, "Suspended")["status"] == "True"
    assert cond(st, "Suspended")["reason"] == "Suspending"
    assert cond(st, "Progressing")["status"] == "False"
    # with zero combiners wanted and the reducer up, the job is Ready (to resume)
    assert cond(st, "Ready")["status"] == "True"
    # the reducer paused its round loop
    st = status(job, rec=record("Suspended", message="spec.suspend is true"), sts_status={})
    assert st["phase"] == "Suspended"
    assert cond(st, "Suspended")["reason"] == "Suspended"
    assert cond(st, "Progressing")["reason"] == "Suspended"
    # unsuspended, but the reducer has not resumed yet
    st = status(rec=record("Suspended"))
    assert st["phase"] == "Suspended"
    assert (cond(st, "Suspended")["status"], cond(st, "Suspended")["reason"]) == (
        "True",
        "Resuming",
    )
    # resumed
    st = status(rec=record("Running"))
    assert (cond(st, "Suspended")["status"], cond(st, "Suspended")["reason"]) == (
        "False",
        "NotSuspended",
    )


def test_status_suspended_before_the_job_record_exists() -> None:
    st = status(make_job(suspend=True), rec=None, sts_status=None)
    assert st["phase"] == "Suspended"
    assert cond(st, "Suspended")["status"] == "True"


def test_status_succeeded() -> None:
    rec = record("Succeeded", message="completed 5 rounds", completed_at=DONE, completed_rounds=5)
    st = status(rec=rec)
    assert st["phase"] == "Succeeded"
    assert st["completionTime"] == "2025-03-01T11:30:15Z"
    assert truth(st)["Complete"] == "True" and truth(st)["Failed"] == "False"
    assert truth(st)["Progressing"] == "False"
    assert cond(st, "Complete")["reason"] == "RoundsCompleted"
    assert cond(st, "Complete")["message"] == "completed 5 rounds"
    assert cond(st, "Failed")["reason"] == "Succeeded"
    # a finished job stays finished even when suspended afterwards
    assert status(make_job(suspend=True), rec=rec)["phase"] == "Succeeded"


def test_status_failed() -> None:
    rec = record("Failed", message="round 3: 1 of 2 updates (quorum 2)", completed_at=DONE)
    st = status(rec=rec)
    assert st["phase"] == "Failed"
    assert st["message"] == "round 3: 1 of 2 updates (quorum 2)"
    assert truth(st)["Failed"] == "True" and truth(st)["Complete"] == "False"
    assert cond(st, "Failed")["reason"] == "RoundFailed"
    assert cond(st, "Failed")["message"] == "round 3: 1 of 2 updates (quorum 2)"
    assert st["completionTime"] == "2025-03-01T11:30:15Z"


def test_status_completion_time_only_when_finished() -> None:
    # a failed job restarted keeps its old completed_at in the record until it ends again
    st = status(rec=record("Running", completed_at=DONE))
    assert st["completionTime"] is None


def test_status_keeps_last_transition_time_when_a_condition_does_not_change() -> None:
    first = status(now=T0)
    again = status(previous=first, now=T1)
    assert again["conditions"] == first["conditions"]
    # Ready flips: only Ready gets the new time
    degraded = status(previous=first, now=T1, sts_status={"replicas": 3, "readyReplicas": 1})
    assert cond(degraded, "Ready")["lastTransitionTime"] == "2025-03-01T12:05:00Z"
    for t in ("Progressing", "Suspended", "Complete", "Failed"):
        assert cond(degraded, t)["lastTransitionTime"] == "2025-03-01T12:00:00Z"
    # a changed reason with the same status keeps the time too
    not_ready = status(previous=first, now=T1, dep_status={})
    assert cond(not_ready, "Ready")["reason"] == "ReducerNotReady"
    later = status(previous=not_ready, now=datetime(2025, 3, 1, 13, tzinfo=UTC), sts_status={})
    assert cond(later, "Ready")["reason"] == "CombinersNotReady"
    assert cond(later, "Ready")["lastTransitionTime"] == "2025-03-01T12:05:00Z"


def test_status_transitions_to_succeeded() -> None:
    running = status(now=T0)
    done = status(
        rec=record("Succeeded", completed_at=DONE, completed_rounds=5), previous=running, now=T1
    )
    changed = {
        c["type"] for c in done["conditions"] if c["lastTransitionTime"].endswith("12:05:00Z")
    }
    assert changed == {"Progressing", "Complete"}


def test_status_observed_generation_and_time_formats() -> None:
    st = status(generation=9, now=T0.timestamp())
    assert st["observedGeneration"] == 9
    assert {c["observedGeneration"] for c in st["conditions"]} == {9}
    assert cond(st, "Ready")["lastTransitionTime"] == "2025-03-01T12:00:00Z"
    no_gen = status(generation=None)
    assert "observedGeneration" not in no_gen
    assert s.rfc3339(datetime(2025, 1, 2, 3, 4, 5, 999_000)) == "2025-01-02T03:04:05Z"


def test_status_reports_a_build_error_on_ready() -> None:
    st = status(rec=None, sts_status=None, dep_status=None, error="spec.storage.s3 is required")
    c = cond(st, "Ready")
    assert (c["status"], c["reason"], c["message"]) == (
        "False",
        "InvalidSpec",
        "spec.storage.s3 is required",
    )


# ---------------------------------------------------------------- the headline metric

# (metrics, the Metric column). The first of accuracy, acc, f1, auc, loss; else the
# first metric by name (not by the record's order); 4 significant digits (.4g).
HEADLINES: list[tuple[dict[str, float] | None, str | None]] = [
    ({"loss": 0.5, "accuracy": 0.96799}, "accuracy=0.968"),
    ({"accuracy": 0.96812, "loss": 0.1}, "accuracy=0.9681"),
    ({"acc": 0.5, "accuracy": 0.9}, "accuracy=0.9"),
    ({"loss": 0.5, "acc": 0.75}, "acc=0.75"),
    ({"f1": 0.1, "loss": 1.23456}, "f1=0.1"),
    ({"f1": 0.1, "auc": 0.9}, "f1=0.1"),
    ({"auc": 0.91234, "loss": 0.3}, "auc=0.9123"),
    ({"loss": 1.23456}, "loss=1.235"),
    ({"loss": 0.25, "mse": 1.0}, "loss=0.25"),
    ({"mse": 1.5, "mae": 0.5}, "mae=0.5"),
    ({"rmse": 123456.0}, "rmse=1.235e+05"),
    ({"n": 3}, "n=3"),
    ({}, None),
    (None, None),
]


def _crd_headline_description() -> str:
    """status.headlineMetric's description in the committed chart CRD."""
    doc = yaml.safe_load(CRD_FILE.read_text())
    schema = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    text: str = schema["properties"]["status"]["properties"]["headlineMetric"]["description"]
    return text


def crd_documented_headline(metrics: dict[str, float] | None) -> str | None:
    """The headline rule as the CRD documents it, read from the committed CRD's text:
    "NAME=VALUE of the first of A, B, ... in metrics (else the first metric by name),
    e.g. NAME=VALUE." (the example fixes the number format)."""
    text = _crd_headline_description()
    found = re.search(r"the first of (.+?) in metrics \(else the first metric by name\)", text)
    assert found, text
    order = found.group(1).split(", ")
    if not metrics:
        return None
    name = next((n for n in order if n in metrics), None) or min(metrics)
    return f"{name}={metrics[name]:.4g}"


@pytest.mark.parametrize(("metrics", "headline"), HEADLINES)
def test_status_headline_metric_is_the_one_the_crd_documents(
    metrics: dict[str, float] | None, headline: str | None
) -> None:
    assert s.headline_metric(metrics) == headline
    assert status(rec=record(metrics=metrics))["headlineMetric"] == headline
    assert crd_documented_headline(metrics) == headline


def test_the_crd_example_is_what_the_status_writes() -> None:
    text = _crd_headline_description()
    example = re.search(r"e\.g\. (\w+)=(\S+)\.$", text)
    assert example, text
    name, value = example.groups()
    st = status(rec=record(metrics={name: float(value)}))
    assert st["headlineMetric"] == f"{name}={value}" == s.HEADLINE_EXAMPLE
    column = next(c for c in crd.PRINTER_COLUMNS if c["name"] == "Metric")
    assert str(column["description"]).endswith(f"e.g. {st['headlineMetric']}.")


def test_the_crd_descriptions_are_built_from_the_status_constants() -> None:
    assert vocabulary.HEADLINE_METRICS == ("accuracy", "acc", "f1", "auc", "loss")
    assert vocabulary.HEADLINE_FORMAT == ".4g"
    description = _crd_headline_description()
    assert description == s.JobStatus.model_fields["headline_metric"].description
    assert description == f"The Metric column: {s.HEADLINE_RULE}, e.g. {s.HEADLINE_EXAMPLE}."
    assert ", ".join(vocabulary.HEADLINE_METRICS) in description
    # the committed CRD is the generated one (test_crd.py), so both descriptions follow the rule
    assert crd.render_crd_yaml() == CRD_FILE.read_text()


def test_status_drops_metrics_json_cannot_carry() -> None:
    st = status(rec=record(metrics={"loss": float("nan"), "accuracy": 0.9, "n": 3, "bad": "x"}))
    assert st["metrics"] == {"accuracy": 0.9, "n": 3}
    json.dumps(st, allow_nan=False)


def test_status_is_pure() -> None:
    prev = status()
    frozen = copy.deepcopy(prev)
    rec = record()
    rec_copy = copy.deepcopy(rec)
    a = status(rec=rec, previous=prev, now=T1)
    b_ = status(rec=rec, previous=prev, now=T1)
    assert a == b_
    assert prev == frozen and rec == rec_copy


# ---------------------------------------------------------------- vocabulary and helpers


def test_status_phases_and_conditions_use_the_shared_vocabulary() -> None:
    rec = JobRecord(name="mnist", manifest={})  # phase defaults to Phase.PENDING
    assert rec.phase is Phase.PENDING
    st = status(rec=rec, sts_status=None, dep_status=None)
    assert st["phase"] == "Pending" and type(st["phase"]) is str
    yaml.safe_dump(st)  # plain strings only: no StrEnum members leak into the status
    assert [c["type"] for c in st["conditions"]] == list(s.CONDITION_TYPES)
    assert s.CONDITION_TYPES == ("Ready", "Progressing", "Suspended", "Complete", "Failed")
    for phase in Phase:
        got = status(rec=record(phase.value), sts_status=None, dep_status=None)
        assert got["phase"] == phase.value and type(got["phase"]) is str
        yaml.safe_dump(got)


def test_event_reasons() -> None:
    assert [r.value for r in s.EventReason] == [
        "InvalidSpec",
        "StateStoreUnavailable",
        "Reconciled",
        "RoundCompleted",
        "Expired",
    ]
    assert [s.phase_event_reason(p) for p in Phase] == [
        "JobPending",
        "JobRunning",
        "JobSuspended",
        "JobSucceeded",
        "JobFailed",
    ]
    # the Ready condition of an invalid spec carries the InvalidSpec Event's reason
    st = status(rec=None, error="bad")
    assert cond(st, "Ready")["reason"] == s.EventReason.INVALID_SPEC


def test_rfc3339_round_trips() -> None:
    text = s.rfc3339(T0)
    assert text == "2025-03-01T12:00:00Z"
    assert s.parse_rfc3339(text) == T0
    assert s.rfc3339(s.parse_rfc3339(s.rfc3339(DONE))) == "2025-03-01T11:30:15Z"
