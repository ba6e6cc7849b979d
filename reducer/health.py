"""A tiny HTTP endpoint for Kubernetes probes, Prometheus and quick looks at a reducer.

GET /healthz -> 200 "ok" while the state store answers (503 otherwise)
GET /status  -> the job's status as JSON (the same data as `fedkube status -o json`)
GET /metrics -> the reducer's Prometheus metrics (`fedkube.reducer.telemetry`)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry

from fedkube.telemetry import (
    HEALTH_PATH,
    METRICS_PATH,
    HttpEndpoint,
    Response,
    Route,
    health_route,
    metrics_route,
)

STATUS_PATH = "/status"


def _status_route(status: Callable[[], Any]) -> Route:
    def route() -> Response:
        try:
            body = status()
        except Exception:
            body = None
        if body is None:
            return 503, b"{}\n", "application/json"
        return 200, json.dumps(body, indent=2, default=str).encode() + b"\n", "application/json"

    return route


class HealthServer(HttpEndpoint):
    """/healthz, /status and (with a registry) /metrics on host:port (0: a free one)."""

    def __init__(
        self,
        host: str,
        port: int,
        healthy: Callable[[], bool],
        status: Callable[[], Any],
        registry: CollectorRegistry | None = None,
    ) -> None:
        routes = {HEALTH_PATH: health_route(healthy), STATUS_PATH: _status_route(status)}
        if registry is not None:
            routes[METRICS_PATH] = metrics_route(registry)
        super().__init__(host, port, routes)

    def start(self) -> HealthServer:
        super().start()
        return self
