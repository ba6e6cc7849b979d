"""`fedkube dashboard`: the Streamlit app behind uvicorn, with the routes
Streamlit does not have. I/O module.

Routes besides the app itself: GET /healthz (200 while the state store answers,
for probes) and GET /download/{job}/{round} (`fedkube.dashboard.download`).
Streamlit runs headless, with usage statistics off (these machines and many
clusters have no internet) and the toolbar in viewer mode.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from fedkube.dashboard import download, source
from fedkube.dashboard.config import DashboardConfig
from fedkube.logs import get_logger

APP_SCRIPT: Final = Path(__file__).with_name("app.py")
#: Streamlit settings of a served dashboard
STREAMLIT_CONFIG: Final = {
    "server.headless": True,
    "browser.gatherUsageStats": False,
    "client.toolbarMode": "viewer",
    "server.fileWatcherType": "none",
    "server.runOnSave": False,
    "global.developmentMode": False,
}


async def healthz(request: Request) -> PlainTextResponse:
    try:
        await anyio.to_thread.run_sync(lambda: source.state().list_jobs())
    except Exception as exc:
        return PlainTextResponse(f"state store unavailable: {exc}\n", 503)
    return PlainTextResponse("ok\n")


def serve_dashboard(cfg: DashboardConfig, *, address: str, port: int) -> None:
    """Serve the dashboard until interrupted (SIGINT/SIGTERM)."""
    import streamlit as st

    os.environ.update(cfg.to_env())
    source.config.cache_clear()
    source.state()  # fail now, with the store's own error, not on the first page view
    app = st.App(
        str(APP_SCRIPT), routes=[Route("/healthz", healthz, methods=["GET"]), *download.routes()]
    )
    get_logger("dashboard").info(
        "dashboard listening", url=f"http://{address}:{port}/", state=source.state().uri
    )
    app.run(config={**STREAMLIT_CONFIG, "server.address": address, "server.port": port})
