"""What every dashboard page shares: the store or a clear error, the job
picker, live refresh, formatting. I/O module (Streamlit)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Final

import streamlit as st

from fedkube.dashboard import kube, source
from fedkube.dashboard.config import DashboardConfig
from fedkube.report import duration_text
from fedkube.state import JobRecord, StateStore
from fedkube.vocabulary import Phase

PHASE_COLORS: Final[dict[str, Any]] = {
    Phase.PENDING: "gray",
    Phase.RUNNING: "blue",
    Phase.SUSPENDED: "orange",
    Phase.SUCCEEDED: "green",
    Phase.FAILED: "red",
}
#: how the first run is started, for empty pages
FIRST_RUN: Final = (
    "Run one on this machine with `fedkube run examples/mnist/job.yaml` (then start the "
    "dashboard with the same `--workdir`), or `kubectl apply -f job.yaml` on a cluster "
    "whose operator writes to this state store."
)


def config() -> DashboardConfig:
    try:
        return source.config()
    except ValueError as exc:
        st.error(str(exc))
        st.stop()
        raise  # unreachable: st.stop raises


def state() -> StateStore:
    """The state store, or an error on the page (and the page stops)."""
    try:
        return source.state()
    except Exception as exc:
        st.error(f"Cannot open the state store: {exc}")
        st.stop()
        raise


def phase_badge(phase: str) -> None:
    st.badge(phase, color=PHASE_COLORS.get(phase, "gray"))


def ago(seconds: float) -> str:
    return f"{duration_text(seconds)} ago"


def pick_job(store: StateStore) -> JobRecord | None:
    """The job of the page: the sidebar's picker, kept in the URL (?job=NAME) so a
    page can be shared. None, with an empty state shown, if there are no jobs."""
    jobs = store.list_jobs()
    if not jobs:
        st.info(f"No jobs in {store.uri} yet. {FIRST_RUN}")
        return None
    names = [j.name for j in jobs]
    wanted = st.query_params.get("job")
    index = names.index(wanted) if wanted in names else 0
    name = st.sidebar.selectbox("Job", names, index=index, key="job_picker")
    if st.query_params.get("job") != name:
        st.query_params["job"] = name
    return next(j for j in jobs if j.name == name)


def live_every(job: JobRecord | None = None, *, any_running: bool = False) -> float | None:
    """The fragment refresh interval: the configured one while `job` (or, with
    `any_running`, any job) runs; None (no refresh) otherwise."""
    running = any_running or (job is not None and job.phase == Phase.RUNNING)
    return config().refresh_seconds if running else None


def live(run_every: float | None, body: Callable[[], None]) -> None:
    """Run `body` in a fragment that reruns by itself every `run_every` seconds
    (the rest of the page stays as it is)."""
    st.fragment(body, run_every=run_every)()


def updated_caption() -> None:
    st.caption(f"Updated {time.strftime('%H:%M:%S')}")


@st.cache_resource(show_spinner=False)
def _kube(mode: str, namespace: str) -> kube.Kube:
    return kube.connect(mode, namespace)


def kube_connection() -> kube.Kube:
    cfg = config()
    return _kube(cfg.kube, cfg.namespace)


def sidebar_footer(store: StateStore) -> None:
    k = kube_connection()
    st.sidebar.caption(f"State store: `{store.uri}`")
    if k.connected:
        st.sidebar.caption(f"Kubernetes: FederatedJob objects via {k.where}")
    else:
        st.sidebar.caption(f"Kubernetes: not connected ({k.where})")
