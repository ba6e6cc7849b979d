"""How a client moves model bytes: one small interface, two transports.

Today a task names a presigned HTTP(S) URL (S3) or a file path (local store);
a later proxy mode can stream through the combiner behind the same interface.
Bytes never pass through gRPC. A download is always a private, read-only copy
in the client's workdir, even from a local store: user code gets that copy,
never the committed object.
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


#: mode of a downloaded model: read-only, since user code gets it as IN_MODEL
READ_ONLY = 0o444


class Transport(Protocol):
    def download(self, ref: pb.Transfer, dest: Path) -> Path:
        """Put a private, read-only copy of the referenced object at `dest` and
        return `dest`; never the stored object itself (user code reads the copy,
        so nothing it does can change a committed model)."""

    def upload(self, src: Path, ref: pb.Transfer) -> None: ...


def private_copy(src: Path, dest: Path) -> Path:
    """Copy `src` to `dest` (a new inode: not a link), read-only; return `dest`."""
    tmp = dest.with_name(dest.name + ".part")
    tmp.unlink(missing_ok=True)
    try:
        shutil.copyfile(src, tmp)
    except FileNotFoundError:
        raise StoreError(f"model file {src} does not exist") from None
    except OSError as exc:
        raise StoreError(f"cannot copy model file {src} to {dest}: {exc}") from None
    os.chmod(tmp, READ_ONLY)
    os.replace(tmp, dest)
    return dest


class DefaultTransport:
    """File paths (local store) are copied; URLs are streamed with HTTP GET/PUT."""

    def __init__(self, timeout: float = 300.0) -> None:
        self.timeout = timeout

    def download(self, ref: pb.Transfer, dest: Path) -> Path:
        if ref.path:
            return private_copy(Path(ref.path), dest)
        if not ref.url:
            raise StoreError("the task names no model location")
        tmp = dest.with_name(dest.name + ".part")
        tmp.unlink(missing_ok=True)
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
        os.chmod(tmp, READ_ONLY)
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
