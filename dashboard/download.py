"""GET /download/{job}/{round}: a committed model file, streamed to the browser
after its sha256 was checked against the recorded lineage. I/O module.

The Models page's download button links here. The bytes never pass through
Streamlit's websocket or its in-memory media store: a local store's file is
hashed, then streamed from disk in chunks; an S3 object is first downloaded to
a temporary file, hashed, streamed and removed. A file
whose sha256 differs from its ModelRecord is refused (409) and not sent.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import anyio.to_thread
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from fedkube.dashboard import source
from fedkube.errors import FedkubeError
from fedkube.logs import get_logger
from fedkube.model import sha256_file
from fedkube.state import ModelRecord

CHUNK: Final = 1 << 20
PATH: Final = "/download/{job}/{round:int}"

log = get_logger("dashboard")


def download_url(job: str, round: int) -> str:
    """The (relative) URL of model `round` of `job`."""
    return f"download/{job}/{round}"


def file_name(rec: ModelRecord) -> str:
    return f"{rec.job}-round-{rec.round}.safetensors"


def _chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk


def _verified_file(rec: ModelRecord, tmp: Path) -> Path:
    """A local file with the model's bytes whose sha256 is the recorded one
    (worker thread). FedkubeError if it is missing or differs."""
    job = source.state().get_job(rec.job)
    if job is None:
        raise FedkubeError(f"no job {rec.job!r}")
    path = source.objects(job).fetch(rec.key, tmp / file_name(rec))
    if not path.exists():
        raise FedkubeError(f"{rec.key} is missing from the object store")
    digest = sha256_file(path)
    if digest != rec.sha256:
        raise FedkubeError(
            f"{rec.key}: sha256 {digest[:12]} does not match the recorded lineage "
            f"({rec.sha256[:12]}); not sent"
        )
    return path


async def download(request: Request) -> Response:
    job = str(request.path_params["job"])
    rnd = int(request.path_params["round"])
    rec = await anyio.to_thread.run_sync(lambda: source.state().get_model(job, rnd))
    if rec is None:
        return PlainTextResponse(f"job {job!r} has no model for round {rnd}\n", 404)
    tmp = Path(tempfile.mkdtemp(prefix="fedkube-download-"))
    cleanup = BackgroundTask(shutil.rmtree, tmp, ignore_errors=True)
    try:
        path = await anyio.to_thread.run_sync(_verified_file, rec, tmp)
    except FedkubeError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        log.warning("model download refused", job=job, round=rnd, error=str(exc))
        return PlainTextResponse(f"{exc}\n", 409)
    log.info("model download", job=job, round=rnd, bytes=rec.size)
    return StreamingResponse(
        _chunks(path),
        media_type="application/octet-stream",
        headers={
            "Content-Disposition": f'attachment; filename="{file_name(rec)}"',
            "Content-Length": str(path.stat().st_size),
            "X-Fedkube-Sha256": rec.sha256,
        },
        background=cleanup,
    )


def routes() -> list[Route]:
    return [Route(PATH, download, methods=["GET"])]
