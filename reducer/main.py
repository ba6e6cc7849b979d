"""Run a reducer process: `fedkube reducer ...` lands here.

Runs the job's round loop; with a health port it also serves ``/healthz`` and
``/status`` (for Kubernetes probes), and with ``linger`` it keeps serving after
the job finished, until SIGTERM, so a Deployment's pod is not restarted in a
loop.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

from fedkube.reducer.health import HealthServer
from fedkube.reducer.loop import Reducer, ReducerConfig
from fedkube.report import job_status
from fedkube.state import StateStore


def _state_answers(state: StateStore, name: str) -> bool:
    state.get_job(name)  # raises when the state store is unreachable
    return True


def run_reducer(cfg: ReducerConfig, *, health_port: int | None = None, linger: bool = False) -> str:
    """Run the job; return its final phase. SIGTERM stops the loop (exit 143)."""
    reducer = Reducer(cfg)
    stopped = threading.Event()

    def _term(signum: int, frame: Any) -> None:
        reducer.stop()
        stopped.set()
        raise SystemExit(143)

    signal.signal(signal.SIGTERM, _term)
    health = None
    if health_port is not None:
        health = HealthServer(
            os.environ.get("FEDKUBE_BIND_HOST", "0.0.0.0"),
            health_port,
            healthy=lambda: _state_answers(cfg.state, cfg.job.name),
            status=lambda: job_status(cfg.state, cfg.job.name),
        ).start()
        reducer.log.info("health endpoint listening", port=health.port)
    try:
        phase = reducer.run()
        if linger:
            reducer.log.info("job finished; lingering until terminated", phase=phase)
            stopped.wait()
        return phase
    finally:
        reducer.close()
        if health is not None:
            health.close()
