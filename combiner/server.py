"""Run a combiner process: `fedkube combiner ...` lands here.

With a metrics port it also serves ``GET /metrics`` (Prometheus,
`fedkube.combiner.telemetry`) and ``GET /healthz`` over plain HTTP, on the
host of ``--listen`` (or $FEDKUBE_BIND_HOST).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

import grpc

from fedkube.combiner.service import CombinerService
from fedkube.logs import Logger, get_logger
from fedkube.proto.v1 import fedkube_pb2_grpc as pb_grpc
from fedkube.rpc import SERVER_OPTIONS, ServerTLS, bind
from fedkube.spec import FederatedJob
from fedkube.state import StateStore
from fedkube.store import ObjectStore
from fedkube.telemetry import (
    HEALTH_PATH,
    METRICS_PATH,
    HttpEndpoint,
    health_route,
    metrics_route,
    write_port_file,
)


def metrics_host(listen: str) -> str:
    """Where the metrics endpoint binds: $FEDKUBE_BIND_HOST, else the host of `listen`."""
    return os.environ.get("FEDKUBE_BIND_HOST") or listen.rsplit(":", 1)[0]


def _metrics_endpoint(
    service: CombinerService,
    stop: asyncio.Event,
    host: str,
    port: int,
    port_file: Path | None,
    log: Logger,
) -> HttpEndpoint:
    routes = {
        METRICS_PATH: metrics_route(service.telemetry.registry),
        HEALTH_PATH: health_route(lambda: not stop.is_set()),
    }
    try:
        endpoint = HttpEndpoint(host, port, routes).start()
    except OSError as exc:  # name the metrics port, not only the gRPC address
        raise OSError(f"metrics port {host}:{port}: {exc.strerror or exc}") from None
    if port_file is not None:
        write_port_file(port_file, endpoint.port)
    log.info("metrics endpoint listening", address=f"{host}:{endpoint.port}", path=METRICS_PATH)
    return endpoint


async def serve_combiner(
    *,
    name: str,
    job: FederatedJob,
    store: ObjectStore,
    state: StateStore,
    listen: str,
    reducer_token: str,
    workdir: Path,
    tls: ServerTLS | None = None,
    port_file: Path | None = None,
    stop: asyncio.Event | None = None,
    metrics_port: int | None = None,
    metrics_port_file: Path | None = None,
) -> None:
    """Serve until `stop` is set (or SIGTERM/SIGINT). With `metrics_port` (0: a free
    one, written to `metrics_port_file` before the gRPC port goes to `port_file`)
    serve /metrics and /healthz there too."""
    log = get_logger("combiner", job=job.key, combiner=name)
    workdir.mkdir(parents=True, exist_ok=True)
    service = CombinerService(
        name=name,
        job=job,
        store=store,
        state=state,
        reducer_token=reducer_token,
        workdir=workdir,
    )
    await service.start()  # the job's client credentials, before the first call
    stop = stop or asyncio.Event()
    endpoint = (
        None
        if metrics_port is None
        else _metrics_endpoint(
            service, stop, metrics_host(listen), metrics_port, metrics_port_file, log
        )
    )
    try:
        await _serve_grpc(service, listen, tls, port_file, stop, log)
    finally:
        if endpoint is not None:
            endpoint.close()


async def _serve_grpc(
    service: CombinerService,
    listen: str,
    tls: ServerTLS | None,
    port_file: Path | None,
    stop: asyncio.Event,
    log: Logger,
) -> None:
    server = grpc.aio.server(options=SERVER_OPTIONS)
    pb_grpc.add_CombinerServicer_to_server(service, server)
    pb_grpc.add_CombinerControlServicer_to_server(service, server)
    port = bind(server, listen, tls)
    await server.start()
    host = listen.rsplit(":", 1)[0]
    log.info(
        "combiner listening",
        address=f"{host}:{port}",
        tls=tls is not None,
        store=service.store.uri,
        state=service.state.uri,
    )
    if port_file is not None:
        write_port_file(port_file, port)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("combiner stopping")
    service.shutdown()
    await server.stop(grace=2)
