"""Run a combiner process: `fedkube combiner ...` lands here."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path

import grpc

from fedkube.combiner.service import CombinerService
from fedkube.logs import get_logger
from fedkube.proto.v1 import fedkube_pb2_grpc as pb_grpc
from fedkube.rpc import SERVER_OPTIONS, ServerTLS, bind
from fedkube.spec import FederatedJob
from fedkube.state import StateStore
from fedkube.store import ObjectStore


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
) -> None:
    log = get_logger("combiner", job=job.name, combiner=name)
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
        store=store.uri,
        state=state.uri,
    )
    if port_file is not None:
        tmp = port_file.with_suffix(".tmp")
        tmp.write_text(str(port))
        tmp.replace(port_file)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("combiner stopping")
    service.shutdown()
    await server.stop(grace=2)
