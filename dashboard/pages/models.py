"""The Models page: each committed global model's lineage (round, sha256, size,
parent) and a download that streams the file once its sha256 is checked."""

from __future__ import annotations

import streamlit as st

from fedkube.dashboard import download, frames, ui
from fedkube.state import JobRecord


def _body(name: str) -> None:
    store = ui.state()
    models = store.list_models(name)
    st.title(f"Models of {name}")
    if not models:
        st.info(
            f"{name} has no committed model yet: model r appears when round r commits "
            "(round 0 is the seed)."
        )
        return
    frame = frames.models_frame(models)
    st.dataframe(
        frame,
        hide_index=True,
        width="stretch",
        key="models_table",
        column_config={
            "size_bytes": st.column_config.NumberColumn("size (bytes)", format="%d"),
            "sha256": st.column_config.TextColumn("sha256", width="large"),
        },
    )
    rounds = [int(r) for r in frame["round"]]
    rnd = st.selectbox("Model after round", rounds, key="model_round")
    rec = next(m for m in models if m.round == rnd)
    st.code(f"sha256 {rec.sha256}\nsize   {rec.size} bytes\nkey    {rec.key}", language=None)
    st.link_button(
        f"Download the model after round {rnd}",
        download.download_url(name, rnd),
        icon=":material/download:",
    )
    st.caption(
        "The file is streamed only after its sha256 matched the lineage above; "
        f"or from a shell: `fedkube models pull {name} --round {rnd}`."
    )


def render() -> None:
    store = ui.state()
    job: JobRecord | None = ui.pick_job(store)
    ui.sidebar_footer(store)
    if job is None:
        st.title("Models")
        return
    _body(job.name)


render()
