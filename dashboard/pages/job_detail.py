"""The Job detail page: metrics per round (train and validation side by side),
round duration broken down, updates per round against the quorum, per-combiner
load, participation (client x round), failed and retried attempts, refused
updates by reason, and the event log with filters."""

from __future__ import annotations

import time
from typing import Final

import pandas as pd
import streamlit as st

from fedkube.dashboard import charts, frames, kube, ui
from fedkube.report import duration_text
from fedkube.state import EventRecord, JobRecord, RoundRecord, StateStore, UpdateCount
from fedkube.vocabulary import HEADLINE_FORMAT, AttemptStatus, headline_name

#: clients per page of the participation heatmap, and rounds in its window
HEATMAP_CLIENTS: Final = 50
HEATMAP_ROUNDS: Final = 50
EVENT_PAGE: Final = 200
LEVELS: Final = ("info", "warning", "error")


def _header(job: JobRecord, rounds: list[RoundRecord]) -> None:
    st.title(job.name)
    ui.phase_badge(job.phase)
    if job.message:
        st.caption(job.message)
    planned = frames.planned_rounds(job.manifest)
    if planned:
        st.progress(
            min(1.0, job.completed_rounds / planned),
            text=f"{job.completed_rounds} of {planned} rounds committed",
        )
    cols = st.columns(5)
    cols[0].metric("Rounds committed", job.completed_rounds)
    latest = frames.latest_metrics(rounds)
    head = headline_name(latest)
    if head is not None:
        cols[1].metric(head, f"{latest[head]:{HEADLINE_FORMAT}}")
    else:
        cols[1].metric("Metric", "-")
    failed = sum(r.status == AttemptStatus.FAILED for r in rounds)
    cols[2].metric("Failed attempts", failed)
    cols[3].metric("Combiners", frames.combiner_count(job.manifest))
    if job.started_at:
        end = job.completed_at or time.time()
        cols[4].metric("Duration", duration_text(end - job.started_at))
    else:
        cols[4].metric("Duration", "not started")


def _metrics(rounds: list[RoundRecord]) -> None:
    frame = frames.metric_frame(rounds)
    if frame.empty:
        st.info("No committed round yet: metrics appear when round 1 commits.")
        return
    columns = st.columns(2)
    for col, source in zip(columns, (frames.TRAIN, frames.VALIDATION), strict=True):
        with col:
            names = frames.metric_names(frame[frame["source"] == source])
            if not names:
                st.caption(
                    f"No {source} metrics yet."
                    + (
                        " Validation runs every spec.validation.every rounds."
                        if source == frames.VALIDATION
                        else ""
                    )
                )
                continue
            metric = st.selectbox(f"{source.capitalize()} metric", names, key=f"{source}_metric")
            st.altair_chart(charts.metric_chart(frame, metric, source), width="stretch")
    wide = frame.pivot_table(
        index="round", columns=["source", "metric"], values="value", aggfunc="last"
    )
    wide.columns = [f"{m} ({s})" for s, m in wide.columns]
    st.dataframe(wide.sort_index(ascending=False), width="stretch", key="metric_table")


def _durations(rounds: list[RoundRecord]) -> None:
    frame = frames.duration_frame(rounds)
    if frame.empty:
        st.info("No committed round yet: its duration breakdown appears when it commits.")
        return
    st.altair_chart(charts.duration_chart(frame), width="stretch")
    mean = frame.groupby("part", sort=False)["seconds"].mean().round(3)
    st.dataframe(mean.rename("mean seconds").to_frame(), width="content", key="duration_table")


def _updates(job: JobRecord, rounds: list[RoundRecord], counts: list[UpdateCount]) -> None:
    if not counts:
        st.info("No updates recorded yet: they appear as clients report.")
        return
    st.altair_chart(
        charts.updates_chart(frames.updates_frame(counts, rounds), frames.quorum(job.manifest)),
        width="stretch",
    )
    left, right = st.columns(2)
    with left:
        st.altair_chart(charts.combiner_chart(frames.combiner_frame(counts)), width="stretch")
    with right:
        st.markdown("**Per combiner, whole job**")
        st.dataframe(
            frames.combiner_totals(counts), hide_index=True, width="stretch", key="combiners"
        )
    refusals = frames.refusals_frame(counts)
    st.subheader("Refused and failed updates")
    if refusals.empty:
        st.caption("Every update was accepted.")
    else:
        st.altair_chart(charts.refusals_chart(refusals), width="stretch")
        st.dataframe(refusals, hide_index=True, width="stretch", key="refusals")


def _participation(store: StateStore, job: JobRecord, rounds: list[RoundRecord]) -> None:
    clients = sorted(c.client for c in store.list_clients(job.name))
    last = max((r.round for r in rounds), default=0)
    if not clients or not last:
        st.info("No participation yet: clients and rounds appear here once a round starts.")
        return
    c1, c2 = st.columns(2)
    pages = (len(clients) + HEATMAP_CLIENTS - 1) // HEATMAP_CLIENTS
    page = (
        c1.number_input("Client page", 1, pages, 1, key="client_page", help="50 clients a page")
        if pages > 1
        else 1
    )
    lo = max(1, last - HEATMAP_ROUNDS + 1)
    if last > 1:
        lo, hi = c2.slider("Rounds", 1, last, (lo, last), key="round_window")
    else:
        hi = last
    shown = clients[(int(page) - 1) * HEATMAP_CLIENTS : int(page) * HEATMAP_CLIENTS]
    cells = store.participation(job.name, clients=shown, round_from=lo, round_to=hi)
    frame = frames.participation_frame(cells)
    if frame.empty:
        st.caption(f"Clients {shown[0]}..{shown[-1]} have no updates in rounds {lo}-{hi}.")
        return
    st.altair_chart(charts.participation_chart(frame), width="stretch")


def _attempts(rounds: list[RoundRecord]) -> None:
    frame = frames.attempts_frame(rounds)
    if frame.empty:
        st.caption("No failed or retried attempts.")
        return
    st.dataframe(frame, hide_index=True, width="stretch", key="attempts")


def _events(store: StateStore, job: JobRecord) -> None:
    kinds_count = store.count_events(job.name)
    if not kinds_count:
        st.info("No events yet.")
        return
    c1, c2, c3, c4 = st.columns([3, 2, 2, 1])
    kinds = c1.multiselect(
        "Kinds",
        sorted(kinds_count),
        key="event_kinds",
        format_func=lambda k: f"{k} ({kinds_count[k]})",
    )
    levels = c2.multiselect("Levels", LEVELS, key="event_levels")
    who = c3.text_input("Client or combiner", key="event_who").strip()
    rnd = c4.number_input("Round", min_value=0, value=0, key="event_round", help="0: all")

    def query(client: str | None = None, combiner: str | None = None) -> list[EventRecord]:
        return store.query_events(
            job.name,
            kinds=kinds,
            levels=levels,
            round=int(rnd) or None,
            client=client,
            combiner=combiner,
            limit=EVENT_PAGE,
        )

    events = query(client=who or None)
    if who and not events:  # the name may be a combiner's
        events = query(combiner=who)
    if not events:
        st.caption("No event matches these filters.")
        return
    st.dataframe(
        frames.events_frame(events),
        hide_index=True,
        width="stretch",
        key="events",
        column_config={"at": st.column_config.DatetimeColumn("at", format="HH:mm:ss")},
    )
    st.caption(f"The newest {len(events)} matching events (of {sum(kinds_count.values())}).")


def _cluster(job: JobRecord) -> None:
    k = ui.kube_connection()
    if not k.connected:
        st.caption(f"Not reading the cluster: {k.where}.")
        return
    try:
        mine = [j for j in kube.list_jobs(k) if j.key == job.name]
    except Exception as exc:
        st.warning(f"Cannot read the FederatedJob object: {exc}")
        return
    if not mine:
        st.caption(f"No FederatedJob object with job key {job.name} in the cluster.")
        return
    obj = mine[0]
    st.markdown(
        f"**FederatedJob {obj.namespace}/{obj.name}**: phase {obj.phase}, combiners ready "
        f"{obj.combiners_ready or 0}/{obj.combiners or 0}"
    )
    if obj.conditions:
        st.dataframe(pd.DataFrame(obj.conditions), hide_index=True, key="conditions")
    try:
        events = kube.job_events(k, obj.namespace, obj.name)
    except Exception as exc:
        st.caption(f"Cannot list its Kubernetes events: {exc}")
        return
    if events:
        st.dataframe(pd.DataFrame([e.__dict__ for e in events]), hide_index=True, key="kube_events")


def _body(name: str) -> None:
    store = ui.state()
    job = store.get_job(name)
    if job is None:
        st.warning(f"Job {name} is gone from {store.uri}.")
        return
    rounds = store.get_rounds(name, participants=False)
    counts = store.count_updates(name)
    _header(job, rounds)
    tabs = st.tabs(
        ["Metrics", "Duration", "Updates", "Participation", "Attempts", "Events", "Kubernetes"]
    )
    with tabs[0]:
        _metrics(rounds)
    with tabs[1]:
        _durations(rounds)
    with tabs[2]:
        _updates(job, rounds, counts)
    with tabs[3]:
        _participation(store, job, rounds)
    with tabs[4]:
        _attempts(rounds)
    with tabs[5]:
        _events(store, job)
    with tabs[6]:
        _cluster(job)
    ui.updated_caption()


def render() -> None:
    store = ui.state()
    job = ui.pick_job(store)
    ui.sidebar_footer(store)
    if job is None:
        st.title("Job detail")
        return
    ui.live(ui.live_every(job), lambda: _body(job.name))


render()
