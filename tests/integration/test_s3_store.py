"""S3ObjectStore on a real S3 server (SeaweedFS with authentication on).

What the ObjectStore contract suite cannot say for every backend: presigned
URLs are scoped to one object and expire; auth, missing-bucket, missing-object
and unreachable-endpoint errors are clear (and never show the secret); the
sha256 recorded at upload is verified at download; a 1 GiB model streams
through with bounded memory; a restart of the server costs a retry.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from fedkube.devenv.s3 import S3Server
from fedkube.errors import ObjectNotFound, StoreError
from fedkube.model import read_header
from fedkube.process import free_ports
from fedkube.store import open_object_store
from fedkube.store import s3 as s3_module
from fedkube.store.local import TMP_PREFIX
from fedkube.store.s3 import SHA256_META, S3ObjectStore

pytestmark = pytest.mark.slow

GiB = 1024**3
MiB = 1024**2


def _status(url: str, *, data: bytes | None = None) -> int:
    """HTTP status of a GET (or, with data, a PUT) of `url`."""
    req = urllib.request.Request(url, data=data, method="PUT" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            resp.read()
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        exc.read()
        return exc.code


def _fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as resp:
        data: bytes = resp.read()
        return data


def _with_path(url: str, path: str) -> str:
    p = urlsplit(url)
    return urlunsplit((p.scheme, p.netloc, path, p.query, p.fragment))


def _operations(store: S3ObjectStore, src: Path, dest: Path) -> list[Callable[[], object]]:
    """One call of each kind of request (PUT, GET, HEAD, LIST) against key 'k'."""
    return [
        lambda: store.put_file("k", src),
        lambda: store.get_file("k", dest),
        lambda: store.exists("k"),
        lambda: store.list(),
        lambda: store.size("k"),
    ]


def _full_error(exc: BaseException) -> str:
    """The exception with its whole chain, as a traceback would print it."""
    return "".join(traceback.format_exception(exc))


# ---- presigned URLs


def test_presigned_get_is_scoped_to_one_object(s3_store: S3ObjectStore) -> None:
    s3_store.put_bytes("jobs/j/models/000001.safetensors", b"model one")
    s3_store.put_bytes("jobs/j/models/000002.safetensors", b"model two (secret)")
    url = s3_store.presign_get("jobs/j/models/000001.safetensors", expires_seconds=60)
    assert _fetch(url) == b"model one"
    other = f"/{s3_store.bucket}/jobs/j/models/000002.safetensors"
    assert urlsplit(url).path != other
    assert _status(_with_path(url, other)) == 403
    # nor another bucket's object of the same name
    assert _status(_with_path(url, "/other-bucket/jobs/j/models/000001.safetensors")) == 403


def test_presigned_put_is_scoped_to_one_object(s3_store: S3ObjectStore) -> None:
    s3_store.put_bytes("jobs/j/models/000001.safetensors", b"the global model")
    url = s3_store.presign_put("jobs/j/updates/000001/1/c1.safetensors", expires_seconds=60)
    for target in ("jobs/j/updates/000001/1/c2.safetensors", "jobs/j/models/000001.safetensors"):
        assert _status(_with_path(url, f"/{s3_store.bucket}/{target}"), data=b"evil") == 403
    assert not s3_store.exists("jobs/j/updates/000001/1/c2.safetensors")
    assert s3_store.get_bytes("jobs/j/models/000001.safetensors") == b"the global model"
    assert not s3_store.exists("jobs/j/updates/000001/1/c1.safetensors")
    assert _status(url, data=b"my update") == 200  # the URL itself works
    assert s3_store.get_bytes("jobs/j/updates/000001/1/c1.safetensors") == b"my update"


def test_expired_presigned_urls_are_refused(s3_store: S3ObjectStore) -> None:
    s3_store.put_bytes("m", b"model")
    get_short = s3_store.presign_get("m", expires_seconds=1)
    put_short = s3_store.presign_put("u", expires_seconds=1)
    get_long = s3_store.presign_get("m", expires_seconds=600)
    time.sleep(3)  # past the 1 s expiry (X-Amz-Date has 1 s resolution)
    assert _status(get_short) == 403
    assert _status(put_short, data=b"late update") == 403
    assert not s3_store.exists("u")
    assert _fetch(get_long) == b"model"  # refused for its age, not for anything else


def test_presign_expiry_bounds(s3_store: S3ObjectStore) -> None:
    for bad in (0, -5, 7 * 24 * 3600 + 1):
        with pytest.raises(StoreError, match="expiry"):
            s3_store.presign_get("k", expires_seconds=bad)
        with pytest.raises(StoreError, match="expiry"):
            s3_store.presign_put("k", expires_seconds=bad)


# ---- errors


def test_wrong_credentials_name_endpoint_and_bucket_never_the_secret(
    s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    good = s3_server.store(s3_bucket)
    good.put_bytes("k", b"v")  # the bucket exists: only the credentials are wrong
    f = tmp_path / "f"
    f.write_bytes(b"data")
    secret = "wrong-secret-" + os.urandom(8).hex()
    stores = {
        "wrong secret": s3_server.store(s3_bucket, secret_key=secret, retries=0),
        "unknown access key": S3ObjectStore(
            s3_server.endpoint,
            s3_bucket,
            access_key="nobody" + os.urandom(4).hex(),
            secret_key=secret,
            secure=False,
            retries=0,
        ),
        "wrong secret, no bucket check": s3_server.store(
            s3_bucket, secret_key=secret, create_bucket=False, retries=0
        ),
    }
    for label, store in stores.items():
        assert secret not in store.uri and secret not in repr(store)
        for op in _operations(store, f, tmp_path / "out"):
            with pytest.raises(StoreError) as ei:
                op()
            msg = str(ei.value)
            assert not isinstance(ei.value, ObjectNotFound), (label, msg)
            assert "authentication failed" in msg, (label, msg)
            assert s3_server.endpoint in msg, (label, msg)
            assert s3_bucket in msg, (label, msg)
            assert secret not in _full_error(ei.value), label
    assert not (tmp_path / "out").exists()
    assert good.get_bytes("k") == b"v"  # the refused PUTs changed nothing


def test_missing_bucket_is_a_clear_error(
    s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    store = s3_server.store(s3_bucket, create_bucket=False)
    f = tmp_path / "f"
    f.write_bytes(b"data")
    for op in [*_operations(store, f, tmp_path / "out"), lambda: store.delete("k")]:
        with pytest.raises(StoreError) as ei:
            op()
        msg = str(ei.value)
        assert not isinstance(ei.value, ObjectNotFound), msg
        assert "bucket does not exist" in msg, msg
        assert s3_bucket in msg and s3_server.endpoint in msg, msg
    assert not s3_server.client().bucket_exists(s3_bucket)  # nothing created it
    assert not (tmp_path / "out").exists()
    # Presigning needs no network (create_bucket off): the URL is refused on use.
    assert _status(store.presign_get("k", expires_seconds=60)) == 404


def test_bucket_is_created_on_first_use(s3_server: S3Server, s3_bucket: str) -> None:
    assert not s3_server.client().bucket_exists(s3_bucket)
    store = s3_server.store(s3_bucket)
    assert store.list() == []
    assert s3_server.client().bucket_exists(s3_bucket)
    # a second store on the existing bucket (another process, say) just uses it
    s3_server.store(s3_bucket).put_bytes("k", b"v")
    assert store.get_bytes("k") == b"v"


def test_object_store_uri_opens_the_bucket(
    s3_server: S3Server, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What `--store s3://BUCKET?endpoint=http://H:P` does, credentials from the env."""
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    store = open_object_store(s3_server.uri(s3_bucket))
    assert isinstance(store, S3ObjectStore)
    store.put_bytes("k", b"via uri")
    again = open_object_store(store.uri)  # a store's uri opens the same store
    assert again.uri == store.uri
    assert again.get_bytes("k") == b"via uri"
    assert s3_server.secret_key not in store.uri
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(StoreError, match="AWS_SECRET_ACCESS_KEY"):
        open_object_store(store.uri)


def test_missing_object_names_key_bucket_and_endpoint(
    s3_store: S3ObjectStore, tmp_path: Path
) -> None:
    s3_store.put_bytes("present", b"x")
    for op in (
        lambda: s3_store.get_file("jobs/j/models/000009.safetensors", tmp_path / "o"),
        lambda: s3_store.size("jobs/j/models/000009.safetensors"),
    ):
        with pytest.raises(ObjectNotFound) as ei:
            op()
        msg = str(ei.value)
        assert "jobs/j/models/000009.safetensors" in msg
        assert s3_store.bucket in msg and s3_store.endpoint in msg
    assert not s3_store.exists("jobs/j/models/000009.safetensors")


def test_unreachable_endpoint_fails_after_retries(tmp_path: Path) -> None:
    (port,) = free_ports(1)  # nobody listens there
    store = S3ObjectStore(
        f"127.0.0.1:{port}", "some-bucket", access_key="ak", secret_key="sk-secret", secure=False
    )
    t0 = time.monotonic()
    with pytest.raises(StoreError) as ei:
        store.put_bytes("k", b"v")
    msg = str(ei.value)
    assert f"cannot reach s3 endpoint 127.0.0.1:{port}" in msg
    assert "some-bucket" in msg
    assert "sk-secret" not in _full_error(ei.value)
    # 3 retries with backoff: at least 0.05 + 0.1 + 0.2 s of waiting, but not long
    assert 0.3 < time.monotonic() - t0 < 30


def test_transient_failures_are_retried_exactly_retries_times() -> None:
    """A server that accepts and hangs up at once: each attempt is one connection."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    accepted = 0
    stop = threading.Event()

    def serve() -> None:
        nonlocal accepted
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            accepted += 1
            conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        for retries in (0, 2):
            accepted = 0
            store = S3ObjectStore(
                f"127.0.0.1:{port}",
                "b-retry",
                access_key="a",
                secret_key="s",
                secure=False,
                retries=retries,
            )
            with pytest.raises(StoreError, match=f"127.0.0.1:{port}"):
                store.exists("k")
            assert accepted == retries + 1
    finally:
        stop.set()
        listener.close()
        t.join(timeout=5)


# ---- integrity


def test_sha256_is_recorded_and_verified(
    s3_server: S3Server, s3_store: S3ObjectStore, tmp_path: Path
) -> None:
    data = os.urandom(200_000)
    src = tmp_path / "model.safetensors"
    src.write_bytes(data)
    s3_store.put_file("jobs/j/models/000001.safetensors", src)
    raw = s3_server.client()
    stat = raw.stat_object(s3_store.bucket, "jobs/j/models/000001.safetensors")
    recorded = {k.lower(): v for k, v in stat.metadata.items()}[SHA256_META]
    assert recorded == hashlib.sha256(data).hexdigest()

    # Tamper through a second client, keeping the recorded sha256.
    bad = bytearray(data)
    bad[1000] ^= 0xFF
    raw.put_object(
        s3_store.bucket,
        "jobs/j/models/000001.safetensors",
        io.BytesIO(bytes(bad)),
        len(bad),
        metadata={SHA256_META: recorded},
    )
    out = tmp_path / "dl"
    out.mkdir()
    with pytest.raises(StoreError, match="checksum mismatch") as ei:
        s3_store.get_file("jobs/j/models/000001.safetensors", out / "m.safetensors")
    assert "jobs/j/models/000001.safetensors" in str(ei.value)
    assert list(out.iterdir()) == []  # no destination, no temp file
    (out / "m.safetensors").write_bytes(b"previous")
    with pytest.raises(StoreError, match="checksum mismatch"):
        s3_store.get_file("jobs/j/models/000001.safetensors", out / "m.safetensors")
    assert (out / "m.safetensors").read_bytes() == b"previous"
    assert [p.name for p in out.iterdir() if p.name.startswith(TMP_PREFIX)] == []


# ---- a large model streams

ROUNDTRIP = r"""
import json, os, resource, sys
from fedkube.store.s3 import S3ObjectStore

endpoint, bucket, src, dest, warm = sys.argv[1:6]
store = S3ObjectStore(endpoint, bucket, access_key=os.environ["AWS_ACCESS_KEY_ID"],
                      secret_key=os.environ["AWS_SECRET_ACCESS_KEY"], secure=False)
# Warm up (imports, connection pool, bucket creation) before measuring.
store.put_file("warm", warm)
store.get_file("warm", warm + ".out")
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
store.put_file("jobs/big/models/000001.safetensors", src)
size = store.size("jobs/big/models/000001.safetensors")
store.get_file("jobs/big/models/000001.safetensors", dest)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"before_kib": before, "after_kib": after, "size": size}))
"""


def _write_big_model(path: Path, nbytes: int) -> str:
    """A valid safetensors file with one F32 tensor of `nbytes`, written in 1 MiB
    chunks (distinct per chunk); returns its sha256."""
    header = json.dumps(
        {"w": {"dtype": "F32", "shape": [nbytes // 4], "data_offsets": [0, nbytes]}}
    ).encode()
    header += b" " * (-len(header) % 8)
    h = hashlib.sha256()
    block = bytearray(os.urandom(MiB))
    with open(path, "wb") as f:
        for chunk in (struct.pack("<Q", len(header)), header):
            f.write(chunk)
            h.update(chunk)
        for i in range(nbytes // MiB):
            block[:8] = i.to_bytes(8, "little")
            f.write(block)
            h.update(block)
    return h.hexdigest()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * MiB):
            h.update(chunk)
    return h.hexdigest()


def test_1gib_model_roundtrip_streams_with_bounded_memory(
    s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    src = tmp_path / "big.safetensors"
    digest = _write_big_model(src, GiB)
    assert read_header(src).nbytes == GiB
    warm = tmp_path / "warm.bin"
    warm.write_bytes(os.urandom(64 * 1024))
    dest = tmp_path / "out" / "big.safetensors"
    files = [str(src), str(dest), str(warm)]
    proc = subprocess.run(
        [sys.executable, "-P", "-c", ROUNDTRIP, s3_server.endpoint, s3_bucket, *files],
        env={**os.environ, **s3_server.env()},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["size"] == src.stat().st_size
    growth_mib = (res["after_kib"] - res["before_kib"]) / 1024
    assert growth_mib < 256, f"peak RSS grew by {growth_mib:.0f} MiB moving a 1 GiB model"
    assert dest.stat().st_size == src.stat().st_size
    src.unlink()  # free the disk before reading the copy
    assert _sha256(dest) == digest
    assert read_header(dest).nbytes == GiB


# ---- a restart of the server


@pytest.fixture
def restartable(private_s3_server: S3Server) -> Iterator[S3Server]:
    yield private_s3_server


def test_store_survives_a_server_restart(
    restartable: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = restartable
    transient: list[str] = []
    is_transient = s3_module._is_transient

    def counting(exc: BaseException) -> bool:
        ok = is_transient(exc)
        if ok:
            transient.append(type(exc).__name__)
        return ok

    monkeypatch.setattr(s3_module, "_is_transient", counting)
    store = server.store(server.new_bucket_name("restart"))  # default retries (3)
    store.put_bytes("jobs/j/models/000001.safetensors", b"round 1 model")
    assert store.get_bytes("jobs/j/models/000001.safetensors") == b"round 1 model"

    # Between rounds: SIGKILL and start again on the same ports and data dir.
    # The store's pooled connections are dead now; the next calls cost a retry.
    server.restart()
    assert store.get_bytes("jobs/j/models/000001.safetensors") == b"round 1 model"
    store.put_bytes("jobs/j/models/000002.safetensors", b"round 2 model")
    assert store.list("jobs/j/models/") == [
        "jobs/j/models/000001.safetensors",
        "jobs/j/models/000002.safetensors",
    ]
    url = store.presign_put("jobs/j/updates/000002/1/c1.safetensors", expires_seconds=60)
    assert _status(url, data=b"update") == 200
    assert store.exists("jobs/j/updates/000002/1/c1.safetensors")

    # During a call: the server is down when the upload starts and comes back
    # while the store retries (a store with a retry budget longer than a restart).
    patient = server.store(store.bucket, retries=12)
    patient.put_bytes("warm", b"x")  # pool a connection that the kill will break
    server.kill()
    transient.clear()
    starter = threading.Timer(0.5, server.start)
    starter.start()
    try:
        src = tmp_path / "m3"
        src.write_bytes(b"round 3 model")
        patient.put_file("jobs/j/models/000003.safetensors", src)
    finally:
        starter.join()
    assert transient, "the upload never saw the server down"
    assert store.get_bytes("jobs/j/models/000003.safetensors") == b"round 3 model"
