"""The Clients page: each client's last contact, online or offline, rounds it
took part in, mean training time, last error and refusals."""

from __future__ import annotations

import time

import streamlit as st

from fedkube.dashboard import frames, ui
from fedkube.dashboard.config import OFFLINE_AFTER_SECONDS
from fedkube.report import duration_text
from fedkube.state import JobRecord


def _body(name: str) -> None:
    store = ui.state()
    summaries = store.client_summaries(name)
    st.title(f"Clients of {name}")
    if not summaries:
        st.info(
            f"No client has connected to {name} yet. Start one with `fedkube client "
            "--combiner HOST:PORT` and a token from `fedkube clients issue` (`fedkube run` "
            "starts simulated clients by itself)."
        )
        return
    now = time.time()
    frame = frames.clients_frame(summaries, now, OFFLINE_AFTER_SECONDS)
    online = int(frame["online"].sum())
    cols = st.columns(4)
    cols[0].metric("Clients", len(frame))
    cols[1].metric("Online", online)
    cols[2].metric("Offline", len(frame) - online)
    cols[3].metric("Refused updates", int(frame["rejected"].sum()))
    c1, c2 = st.columns([1, 2])
    which = c1.segmented_control(
        "Show", ["all", "online", "offline"], default="all", key="client_filter"
    )
    text = c2.text_input("Client id contains", key="client_search").strip()
    if which == "online":
        frame = frame[frame["online"]]
    elif which == "offline":
        frame = frame[~frame["online"]]
    if text:
        frame = frame[frame["client"].str.contains(text, regex=False)]
    shown = frame.assign(last_seen=[ui.ago(s) for s in frame["seen_ago_s"]]).drop(
        columns=["seen_ago_s"]
    )
    st.dataframe(
        shown,
        hide_index=True,
        width="stretch",
        key="clients_table",
        column_config={
            "online": st.column_config.CheckboxColumn("online"),
            "last_seen": st.column_config.TextColumn("last seen"),
            "rounds": st.column_config.NumberColumn("rounds participated"),
            "rejected": st.column_config.NumberColumn("refusals"),
            "mean_train_s": st.column_config.NumberColumn("mean training (s)", format="%.2f"),
            "last_error": st.column_config.TextColumn("last error", width="large"),
        },
    )
    st.caption(
        f"Offline: disconnected, or not seen for {duration_text(OFFLINE_AFTER_SECONDS)}. "
        "Training time runs from the task's push to the client's report (download, "
        "training, upload)."
    )
    ui.updated_caption()


def render() -> None:
    store = ui.state()
    job: JobRecord | None = ui.pick_job(store)
    ui.sidebar_footer(store)
    if job is None:
        st.title("Clients")
        return
    ui.live(ui.live_every(job), lambda: _body(job.name))


render()
