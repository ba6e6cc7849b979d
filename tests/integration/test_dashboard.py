"""The dashboard's pages rendered by Streamlit's AppTest against a state store
that a real local run filled: SQLite (the embedded default) and MongoDB
(FerretDB). Values shown are checked against the store (rounds, metrics,
clients, refusal reasons); no page raises, and no credential is shown.

The run: 4 simulated clients over 2 combiners, 3 rounds; client-3's training
produces NaN (its own contract check fails it before upload) and client-2's
training raises: both failed updates with reason client_error and their own
error message.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from fedkube.dashboard import source
from fedkube.dashboard.config import DashboardConfig
from fedkube.dashboard.server import APP_SCRIPT
from fedkube.state import StateStore, open_state_store
from fedkube.vocabulary import Reason
from tests.support.federation import Federation, toy_manifest, write_job

pytestmark = pytest.mark.slow

JOB = "dash"
ROUNDS = 3
CLIENTS = [f"client-{i}" for i in range(4)]
CONFIG = {"bad": {"client-3": "nan"}, "crash": {"client-2": "raise"}}


def run_federation(base: Path, state: str | None = None) -> tuple[str, Path, str]:
    """A finished local run: (its state URI, its workdir, one client token)."""
    manifest = toy_manifest(
        JOB, rounds=ROUNDS, combiners=2, clients=4, min_updates=2, config=CONFIG
    )
    job_file = write_job(base / "job", manifest)
    workdir = base / "run"
    with Federation(job_file, workdir, state=state) as fed:
        fed.start()
        assert fed.wait_reducer() == 0, fed.log("reducer")
        return fed.fed.state_uri, workdir, fed.fed.client_token_for(0)


@pytest.fixture(scope="module")
def sqlite_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, str]:
    return run_federation(tmp_path_factory.mktemp("dash-sqlite"))


@pytest.fixture(scope="module")
def mongo_run(
    tmp_path_factory: pytest.TempPathFactory, mongo_server: Any
) -> Iterator[tuple[str, Path, str]]:
    database = mongo_server.new_database_name("dashboard")
    try:
        yield run_federation(
            tmp_path_factory.mktemp("dash-mongo"), mongo_server.database_uri(database)
        )
    finally:
        mongo_server.drop_database(database)


@pytest.fixture(params=["sqlite", "mongo"])
def run(request: pytest.FixtureRequest) -> tuple[str, Path, str]:
    return request.getfixturevalue(f"{request.param}_run")


@pytest.fixture
def store(run: tuple[str, Path, str]) -> Iterator[StateStore]:
    st = open_state_store(run[0])
    yield st
    st.close()


def app(run: tuple[str, Path, str], monkeypatch: pytest.MonkeyPatch, **opts: Any) -> AppTest:
    cfg = DashboardConfig(state=run[0], workdir=str(run[1]), kube="off", **opts)
    for k, v in cfg.to_env().items():
        monkeypatch.setenv(k, v)
    source.config.cache_clear()
    at = AppTest.from_file(str(APP_SCRIPT), default_timeout=60)
    at.query_params["job"] = JOB
    return at


def page(at: AppTest, script: str | None = None) -> AppTest:
    """Run the app (on `script`, a page of pages/), failing on any exception shown."""
    at.run()
    if script is not None:
        at.switch_page(f"pages/{script}").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def texts(at: AppTest) -> str:
    """Everything a page shows as text: markdown, captions, titles, metrics, tables."""
    parts: list[str] = []
    for kind in ("title", "header", "subheader", "markdown", "caption", "info", "warning"):
        parts += [str(e.value) for e in getattr(at, kind)]
    parts += [f"{m.label} {m.value}" for m in at.metric]
    parts += [e.value.to_csv() for e in at.dataframe]
    parts += [str(e.value) for e in at.code]
    return "\n".join(parts)


def frame(at: AppTest, *columns: str) -> pd.DataFrame:
    """The first table on the page with all these columns."""
    for d in at.dataframe:
        if set(columns) <= set(d.value.columns):
            return d.value
    raise AssertionError(f"no table with columns {columns} on the page")


def test_jobs_page(run: tuple[str, Path, str], store: StateStore, monkeypatch: Any) -> None:
    at = page(app(run, monkeypatch))
    job = store.get_job(JOB)
    assert job is not None
    table = at.dataframe[0].value
    row = table[table["job"] == JOB].iloc[0]
    assert row["phase"] == job.phase == "Succeeded"
    assert row["rounds"] == f"{ROUNDS}/{ROUNDS}"
    assert row["progress"] == 1.0
    assert row["combiners"] == 2
    assert row["clients"] == len(store.list_clients(JOB)) == len(CLIENTS)
    assert row["metric"].startswith("loss=")
    assert "Not reading the cluster" in texts(at)


def test_job_detail_page(run: tuple[str, Path, str], store: StateStore, monkeypatch: Any) -> None:
    at = page(app(run, monkeypatch), "job_detail.py")
    committed = store.committed_rounds(JOB)
    assert len(committed) == ROUNDS
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Rounds committed"] == str(ROUNDS)
    # the metric table: every committed round's train loss and validation dist, as stored
    table = frame(at, "loss (train)")
    for r in committed:
        assert table.loc[r.round, "loss (train)"] == pytest.approx(r.metrics["loss"])
        assert table.loc[r.round, "dist (validation)"] == pytest.approx(r.validation["dist"])
    assert at.selectbox(key="train_metric").value == "loss"
    assert at.selectbox(key="validation_metric").value == "dist"
    # refusals by reason: the store's counts of the bad clients' updates
    refusals = frame(at, "status", "reason", "count")
    by_reason = dict(zip(refusals["reason"], refusals["count"], strict=True))
    updates = store.list_updates(JOB)
    assert by_reason[Reason.CLIENT_ERROR] == sum(u.reason == Reason.CLIENT_ERROR for u in updates)
    assert by_reason[Reason.CLIENT_ERROR] >= 2 * ROUNDS  # two clients fail every round
    combiners = frame(at, "combiner", "accepted")
    assert combiners["accepted"].sum() == sum(u.status == "accepted" for u in updates)
    events = frame(at, "seq", "kind")
    assert len(events) == min(200, len(store.list_events(JOB)))
    assert "TrainFailed" in set(events["kind"])
    durations = frame(at, "mean seconds")
    assert {"waiting", "training", "merge"} <= set(durations.index)


def test_job_detail_event_filters(
    run: tuple[str, Path, str], store: StateStore, monkeypatch: Any
) -> None:
    at = page(app(run, monkeypatch), "job_detail.py")
    at.multiselect(key="event_kinds").select("TrainFailed").run()
    assert not at.exception
    events = frame(at, "seq", "kind")
    stored = [e for e in store.list_events(JOB) if e.kind == "TrainFailed"]
    assert set(events["kind"]) == {"TrainFailed"}
    assert len(events) == len(stored) > 0
    at.text_input(key="event_who").input("client-3").run()
    events = frame(at, "seq", "kind")
    assert set(events["client"]) == {"client-3"}


def test_clients_page(run: tuple[str, Path, str], store: StateStore, monkeypatch: Any) -> None:
    at = page(app(run, monkeypatch), "clients.py")
    table = frame(at, "client", "online")
    assert sorted(table["client"]) == CLIENTS
    rows = table.set_index("client")
    updates = store.list_updates(JOB)
    for c in CLIENTS:
        mine = [u for u in updates if u.client == c]
        assert rows.loc[c, "accepted"] == sum(u.status == "accepted" for u in mine)
        assert rows.loc[c, "rejected"] == sum(u.status == "rejected" for u in mine)
        assert rows.loc[c, "rounds"] == len({u.round for u in mine if u.status == "accepted"})
    assert rows.loc["client-3", "last_error"].startswith(f"{Reason.CLIENT_ERROR}: ")
    assert "NaN or Inf" in rows.loc["client-3", "last_error"]
    assert "toy training blew up" in rows.loc["client-2", "last_error"]
    assert rows.loc["client-2", "failed"] >= ROUNDS
    assert rows.loc["client-0", "last_error"] == ""
    assert rows.loc["client-0", "mean_train_s"] > 0


def test_models_page(run: tuple[str, Path, str], store: StateStore, monkeypatch: Any) -> None:
    at = page(app(run, monkeypatch), "models.py")
    table = frame(at, "round", "sha256")
    models = store.list_models(JOB)
    assert sorted(table["round"]) == sorted(m.round for m in models)
    latest = max(models, key=lambda m: m.round)
    row = table[table["round"] == latest.round].iloc[0]
    assert row["sha256"] == latest.sha256
    assert row["size_bytes"] == latest.size
    assert latest.sha256 in texts(at)


def test_no_credential_is_shown(
    run: tuple[str, Path, str], store: StateStore, monkeypatch: Any
) -> None:
    """Neither a client token nor a stored digest appears on any page."""
    token = run[2]
    digests = [c.digest for c in store.list_credentials(JOB)]
    assert digests
    at = app(run, monkeypatch)
    for script in (None, "job_detail.py", "clients.py", "models.py"):
        shown = texts(page(at, script))
        assert token not in shown
        for d in digests:
            assert d not in shown and d[:16] not in shown


def test_pages_say_what_to_do_on_an_empty_store(tmp_path: Path, monkeypatch: Any) -> None:
    uri = f"sqlite:///{tmp_path / 'state.db'}"
    open_state_store(uri).close()
    at = app((uri, tmp_path, ""), monkeypatch)
    for script in (None, "job_detail.py", "clients.py", "models.py"):
        shown = texts(page(at, script))
        assert "No jobs in" in shown and "fedkube run" in shown


def test_a_job_without_rounds_says_what_comes(tmp_path: Path, monkeypatch: Any) -> None:
    """A Running job with no round yet: each part of the detail page says what will
    appear there (the live refresh itself is checked in the browser test)."""
    uri = f"sqlite:///{tmp_path / 'state.db'}"
    st = open_state_store(uri)
    st.create_job(JOB, toy_manifest(JOB))
    st.update_job(JOB, phase="Running")
    st.close()
    at = page(app((uri, tmp_path, ""), monkeypatch, refresh_seconds=1.0), "job_detail.py")
    shown = texts(at)
    assert "metrics appear when round 1 commits" in shown
    assert "No updates recorded yet" in shown
    assert "No failed or retried attempts" in shown
