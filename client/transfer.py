"""How a client moves model bytes: one small interface, two transports.

Today a task names a presigned HTTP(S) URL (S3) or a file path (local store);
a later proxy mode can stream through the combiner behind the same interface.
Bytes never pass through gRPC.
"""

from __future__ import annotations

import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from typing import Protocol

from fedkube.errors import StoreError
from fedkube.proto.v1 import fedkube_pb2 as pb

_CHUNK = 1 << 20


class Transport(Protocol):
    def download(self, ref: pb.Transfer, dest: Path) -> Path:
        """Make the referenced object readable at a local path; return that path
        (may be the object itself when it is already local)."""

    def upload(self, src: Path, ref: pb.Transfer) -> None: ...


class DefaultTransport:
    """File paths are used in place; URLs are streamed with HTTP GET/PUT."""

    def __init__(self, timeout: float = 300.0) -> None:
        self.timeout = timeout

    def download(self, ref: pb.Transfer, dest: Path) -> Path:
        if ref.path:
            p = Path(ref.path)
            if not p.exists():
                raise StoreError(f"model file {p} does not exist")
            return p
        if not ref.url:
            raise StoreError("the task names no model location")
        tmp = dest.with_name(dest.name + ".part")
        try:
            with (
                urllib.request.urlopen(ref.url, timeout=self.timeout) as resp,
                open(tmp, "wb") as f,
            ):
                shutil.copyfileobj(resp, f, _CHUNK)
        except urllib.error.HTTPError as exc:
            raise StoreError(f"model download refused: HTTP {exc.code} {exc.reason}") from None
        except urllib.error.URLError as exc:
            raise StoreError(f"model download failed: {exc.reason}") from None
        os.replace(tmp, dest)
        return dest

    def upload(self, src: Path, ref: pb.Transfer) -> None:
        if ref.path:
            dest = Path(ref.path)
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
            shutil.copyfile(src, tmp)
            os.replace(tmp, dest)
            return
        if not ref.url:
            raise StoreError("the task names no upload location")
        size = src.stat().st_size
        with open(src, "rb") as f:
            req = urllib.request.Request(ref.url, data=f, method="PUT")
            req.add_header("Content-Length", str(size))
            req.add_header("Content-Type", "application/octet-stream")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    resp.read()
            except urllib.error.HTTPError as exc:
                raise StoreError(f"update upload refused: HTTP {exc.code} {exc.reason}") from None
            except urllib.error.URLError as exc:
                raise StoreError(f"update upload failed: {exc.reason}") from None
