"""fedkube.dashboard: the Streamlit monitoring dashboard (`fedkube dashboard`).

Pure modules (no I/O): `config` (what the CLI hands the app), `frames` (store
records as pandas DataFrames), `charts` (Altair charts of those frames).
I/O modules: `source` (the state and object stores, cached per process),
`kube` (FederatedJob objects through the kubernetes client), `download` (the
HTTP route that streams a verified model file), `server` (the ASGI app and
uvicorn), `ui` (what every page shares), `app.py` (the Streamlit script) and
`pages/` (one script per page).
"""

from fedkube.dashboard.config import DashboardConfig

__all__ = ["DashboardConfig"]
