"""The Jobs page: every job's phase, progress, headline metric, start, duration,
combiners and connected clients; filter by phase. FederatedJob objects too,
when the dashboard can read the cluster."""

from __future__ import annotations

import time

import pandas as pd
import streamlit as st

from fedkube.dashboard import frames, kube, ui
from fedkube.report import duration_text
from fedkube.vocabulary import Phase


def _table() -> None:
    store = ui.state()
    overviews = store.job_overviews()
    if not overviews:
        st.info(f"No jobs in {store.uri} yet. {ui.FIRST_RUN}")
        return
    frame = frames.jobs_frame(overviews, time.time())
    phases = st.pills("Phase", [p.value for p in Phase], selection_mode="multi", key="phase_filter")
    if phases:
        frame = frame[frame["phase"].isin(phases)]
    cols = st.columns(4)
    cols[0].metric("Jobs", len(overviews))
    cols[1].metric("Running", sum(o.job.phase == Phase.RUNNING for o in overviews))
    cols[2].metric("Connected clients", sum(o.connected for o in overviews))
    cols[3].metric("Succeeded", sum(o.job.phase == Phase.SUCCEEDED for o in overviews))
    if frame.empty:
        st.info("No job has the selected phase.")
        return
    shown = frame.assign(
        open=[f"job?job={name}" for name in frame["job"]],
        duration=[duration_text(s) if pd.notna(s) else "" for s in frame["duration_s"]],
    )
    st.dataframe(
        shown[
            [
                "job",
                "phase",
                "progress",
                "rounds",
                "metric",
                "started",
                "duration",
                "combiners",
                "connected",
                "clients",
                "message",
                "open",
            ]
        ],
        hide_index=True,
        width="stretch",
        column_config={
            "progress": st.column_config.ProgressColumn(
                "progress", min_value=0.0, max_value=1.0, format="percent"
            ),
            "started": st.column_config.DatetimeColumn("started", format="YYYY-MM-DD HH:mm:ss"),
            "metric": st.column_config.TextColumn("headline metric"),
            "connected": st.column_config.NumberColumn("connected clients"),
            "open": st.column_config.LinkColumn("detail", display_text="open"),
        },
        key="jobs_table",
    )
    ui.updated_caption()


def _cluster() -> None:
    k = ui.kube_connection()
    st.subheader("FederatedJob objects")
    if not k.connected:
        st.caption(f"Not reading the cluster: {k.where}.")
        return
    try:
        jobs = kube.list_jobs(k)
    except Exception as exc:
        st.warning(f"Cannot list FederatedJob objects ({k.where}): {exc}")
        return
    if not jobs:
        st.caption("No FederatedJob objects. Create one with `kubectl apply -f job.yaml`.")
        return
    st.dataframe(
        pd.DataFrame(
            [
                {
                    "namespace": j.namespace,
                    "name": j.name,
                    "phase": j.phase,
                    "round": j.current_round,
                    "rounds": j.rounds,
                    "combiners ready": f"{j.combiners_ready or 0}/{j.combiners or 0}",
                    "metric": j.headline,
                    "message": j.message,
                }
                for j in jobs
            ]
        ),
        hide_index=True,
        width="stretch",
        key="kube_jobs",
    )


def render() -> None:
    st.title("Jobs")
    store = ui.state()
    ui.sidebar_footer(store)
    running = any(j.phase == Phase.RUNNING for j in store.list_jobs())
    ui.live(ui.live_every(any_running=running), _table)
    _cluster()


render()
