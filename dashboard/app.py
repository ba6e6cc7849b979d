"""The dashboard's Streamlit script: page setup and navigation. `fedkube
dashboard` serves it (fedkube.dashboard.server); each page is a script in pages/."""

from __future__ import annotations

import streamlit as st

st.set_page_config(page_title="fedkube", page_icon=":material/hub:", layout="wide")

PAGES = [
    st.Page("pages/jobs.py", title="Jobs", icon=":material/list:", url_path="jobs", default=True),
    st.Page(
        "pages/job_detail.py", title="Job detail", icon=":material/monitoring:", url_path="job"
    ),
    st.Page("pages/clients.py", title="Clients", icon=":material/devices:", url_path="clients"),
    st.Page("pages/models.py", title="Models", icon=":material/deployed_code:", url_path="models"),
]
st.navigation(PAGES).run()
